"""What a run started goes when the process that started it dies, however it dies (kill -9 included).

pgBouncer and redis-server die with their parent (`die_with_parent`: the kernel signals them), but the embedded
PostgreSQL's postmaster is started through `pg_ctl`, whose child it is not, and no signal removes a directory. So
the process that starts services also starts one small watchdog (`python -m services.watchdog`, in a session of its
own so a Ctrl-C at the terminal leaves it alone) and tells it, one JSON line each on its stdin, what to stop and
remove. When that stdin ends without the closing line (the starting process is gone: its end of the pipe closed with
it), the watchdog does it all, last registered first: each process gets its signals in turn (`STOP_GRACE_S` each),
then SIGKILL; each directory is removed. A clean stop forgets each thing as it stops it and closes with "done".
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_GRACE_S = 3.0
"""How long a process may take to stop on one signal before it gets the next: the embedded server's fast shutdown
writes a checkpoint first (its immediate shutdown does not), and the whole cleanup must be done in under 10 s."""
POLL_S = 0.05
_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process receives when its parent dies."""
DONE = "done"


def die_with_parent() -> None:
    """In a child before exec (`preexec_fn`): receive SIGTERM when the process that started it dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Watchdog:
    """The watchdog of this process: `watch` a process or a directory, `forget` it once stopped here, `close`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._next_key = 0

    def watch_process(self, pid: int, name: str, signals: tuple[int, ...] = (signal.SIGTERM,)) -> int:
        """Stop `pid` (if it still runs `name`) when this process dies: each of `signals` in turn, each given
        `STOP_GRACE_S`, then SIGKILL. Returns the key to forget it by."""
        return self._send({"pid": pid, "name": name, "signals": [int(number) for number in signals]})

    def watch_directory(self, path: Path) -> int:
        """Remove `path` when this process dies; returns the key to forget it by."""
        return self._send({"path": str(path)})

    def forget(self, key: int) -> None:
        if self._process is not None:
            self._line({"forget": key})

    def close(self) -> None:
        """Everything was stopped here: the watchdog exits and does nothing. Idempotent."""
        if self._process is not None:
            self._line({DONE: True})
            self._process.stdin.close()
            self._process.wait()
            self._process = None

    def _send(self, thing: dict) -> int:
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "services.watchdog", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent, start_new_session=True, text=True,
            )  # fmt: skip
        self._next_key += 1
        self._line({"key": self._next_key, **thing})
        return self._next_key

    def _line(self, message: dict) -> None:
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()


def _runs(pid: int, name: str) -> bool:
    """`pid` is alive (not a zombie) and runs `name` (a pid reused by another program is left alone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and name in command


def _stop(pid: int, name: str, signals: list[int]) -> None:
    for number in [*signals, signal.SIGKILL]:
        if not _runs(pid, name):
            return
        os.kill(pid, number)
        deadline = time.monotonic() + STOP_GRACE_S
        while _runs(pid, name) and time.monotonic() < deadline:
            time.sleep(POLL_S)


def main() -> None:
    """Read what to watch until stdin ends; unless told "done", stop and remove it all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: dict[int, dict] = {}
    for line in sys.stdin:
        message = json.loads(line)
        if DONE in message:
            return
        if "forget" in message:
            watched.pop(message["forget"], None)
        else:
            watched[message["key"]] = message
    for thing in reversed(list(watched.values())):
        try:
            if "pid" in thing:
                _stop(thing["pid"], thing["name"], thing["signals"])
            else:
                shutil.rmtree(thing["path"], ignore_errors=True)
        except OSError:
            continue  # gone meanwhile; the rest still goes


if __name__ == "__main__":
    main()
