"""Run our locustfile headless in a subprocess and return its summary: the unit of sweeps and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "locustfile.py"


@dataclass
class HeadlessRun:
    """A finished headless run: its summary (None when it wrote none), exit code and output tail."""

    summary: dict | None
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.summary is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_headless(
    user_class: str,
    users: int,
    *,
    pg_dsn: str,
    run_time: str = "10m",
    processes: int = 0,
    extra: list[str] | tuple[str, ...] = (),
    timeout: float = 900,
) -> HeadlessRun:
    """`locust -f locustfile.py USER_CLASS --headless -u USERS -r USERS ...`, bounded by `timeout` seconds.

    The run has a process group of its own, killed whole (forked workers too) if it outlives `timeout`.
    """
    with tempfile.TemporaryDirectory(prefix="firehose-run-") as scratch:
        summary_path = Path(scratch) / "summary.json"
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), user_class, "--headless", "--only-summary",
            "-u", str(users), "-r", str(users), "-t", run_time, "--pg-dsn", pg_dsn,
            "--summary-json", str(summary_path), *extra,
        ]  # fmt: skip
        if processes:
            port = str(free_port())
            command += ["--processes", str(processes), "--master-bind-port", port, "--master-port", port]
        with subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True,
        ) as process:  # fmt: skip
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                output += f"\nkilled after {timeout} s"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        return HeadlessRun(summary, process.returncode, output[-4000:])
