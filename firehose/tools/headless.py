"""Run our locustfile headless in a subprocess, bounded in time: the unit of sweeps, benchmarks and tests."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from services.ports import free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "locustfile.py"
RUN_OVERHEAD_S = 180
"""Time a tool's run (a sweep cell, a chaos phase) may take beyond its duration: Locust's start and value pools
(~5 s here), then the drain of buffered batches and the reconciliation count. Generous, because a run that outlives
it is killed and marked."""


@dataclass
class HeadlessRun:
    """A finished headless run: its summary (None when it wrote none), exit code and output tail."""

    summary: dict | None
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.summary is not None


def passed_to_locust(locust_args: list[str]) -> list[str]:
    """A tool's trailing arguments for Locust, without the `--` that separates them from the tool's own."""
    return locust_args[1:] if locust_args[:1] == ["--"] else locust_args


def parsed_option(flag: str, parse: Callable[[str], T], text: str) -> T:
    """`parse(text)` of a tool's option, a ValueError naming the flag (the tool refuses with it, exit code 2)."""
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def results_dir(out: str | None, tool: str) -> Path:
    """Where a tool writes its results: `out`, else results/<tool>-<timestamp>."""
    return Path(out or Path("results") / f"{tool}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def locust_command(*args: str, processes: int = 0) -> list[str]:
    """`locust -f locustfile.py --headless --only-summary ARGS`, with a master port of its own when distributed."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", *args]
    if processes:
        port = str(free_port())  # both: forked workers connect to --master-port (environment notes)
        command += ["--processes", str(processes), "--master-bind-port", port, "--master-port", port]
    return command


def run_bounded(command: list[str], timeout: float, stdout: IO | int, stderr: IO | int) -> tuple[int, bool]:
    """Run `command` in a process group of its own; kill the whole group (forked workers too) if it outlives
    `timeout` seconds or we are interrupted. Returns (exit code, timed out)."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        return process.wait(timeout), False
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return process.returncode, True
    except BaseException:  # Ctrl-C: the run's own session would not get it, and would outlive us
        _kill_group(process)
        raise


def run_headless(
    user_class: str | list[str],
    users: int,
    *,
    pg_dsn: str,
    run_time: str = "10m",
    processes: int = 0,
    extra: list[str] | tuple[str, ...] = (),
    timeout: float = 900,
) -> HeadlessRun:
    """`locust ... USER_CLASS... -u USERS -r USERS -t RUN_TIME --pg-dsn PG_DSN EXTRA` and its summary."""
    classes = [user_class] if isinstance(user_class, str) else user_class
    with tempfile.TemporaryDirectory(prefix="firehose-run-") as scratch:
        summary_path, log_path = Path(scratch) / "summary.json", Path(scratch) / "output.log"
        command = locust_command(
            *classes, "-u", str(users), "-r", str(users), "-t", run_time, "--pg-dsn", pg_dsn,
            "--summary-json", str(summary_path), *extra, processes=processes,
        )  # fmt: skip
        with log_path.open("w") as log:
            returncode, timed_out = run_bounded(command, timeout, log, subprocess.STDOUT)
        output = log_path.read_text(errors="replace")[-4000:] + (f"\nkilled after {timeout} s" if timed_out else "")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() and not timed_out else None
        return HeadlessRun(summary, returncode, output)


def _kill_group(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):  # the whole group may have exited already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
