"""What a crash costs, per strategy: a worker killed -9 while it writes, and what the summary says died with it.

A real master and two real `locust --worker` processes (separate processes, so one can be killed by pid) run a
strategy for a fixed time. The victim worker gets its own DSN (a worker's own --pg-dsn wins over the master's)
naming a unique application_name, so its writer key is found in `firehose_writer_keys`. It is killed once the
database holds rows of that key and the master has logged that it writes under it, both observed, never timed.

`firehose bench --crash-cost` measures every strategy and renders the table the docs cite; the suite calls
`run_and_kill_a_worker` to check the defects (a dead worker named, the survivor reconciling).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from firehose.strategies import available_strategies
from firehose.tools.headless import LOCUSTFILE, REPO
from services.ports import free_port
from telemetry.layout import TABLES

CONTINUOUS = ("--continuous", "-t", "20s", "--traces-per-engineer", "20")
"""A timed run: the kill strikes within its first seconds."""
RUN_TIMEOUT_S = 240
"""Bound on the whole run once the victim is killed: Locust may take ~64 s to drop a dead worker and hand its users
to the survivor, then the survivor's own drain."""
DEADLINE_S = 60
"""Bound on waiting for an observed state."""
POLL_S = 0.1
"""How often an observed state is looked for."""
_ROWS_OF_KEY = (
    "SELECT count(*) FROM {table} WHERE event_id >= %(key)s::bigint << 32 AND event_id < (%(key)s::bigint + 1) << 32"
)

Found = TypeVar("Found")


@dataclass
class KilledWorkerRun:
    """A run whose victim worker was killed -9: the master's exit code and output, its summary (None when it wrote
    none), the victim's writer key and its rows in the database at the end."""

    returncode: int
    output: str
    summary: dict | None
    victim_key: int
    victim_rows: int


def run_and_kill_a_worker(dsn: str, strategy: str, scratch: Path, *extra: str) -> KilledWorkerRun:
    """A master and two workers run `strategy` (4 users) with Locust options `extra`; one worker is killed -9
    once it writes. Logs and the summary go to `scratch`."""
    port, summary_path, log_path = free_port(), scratch / "summary.json", scratch / "master.log"
    victim_name = f"victim-{uuid.uuid4().hex[:12]}"
    processes: list[subprocess.Popen] = []
    with log_path.open("w") as log, (scratch / "workers.log").open("w") as worker_log:
        try:
            master = _locust(
                strategy, "--master", "--headless", "--only-summary", "--expect-workers", "2",
                "--master-bind-port", str(port), "-u", "4", "-r", "4", "--pg-dsn", dsn,
                "--summary-json", str(summary_path), *extra, log=log,
            )  # fmt: skip
            processes.append(master)
            victim_dsn = make_conninfo(dsn, application_name=victim_name)
            victim = _locust("--worker", "--master-port", str(port), "--pg-dsn", victim_dsn, log=worker_log)
            survivor = _locust("--worker", "--master-port", str(port), log=worker_log)
            processes += [victim, survivor]
            key = wait_for(lambda: _victim_key(dsn, victim_name), "the victim's writer key", *processes)
            wait_for(lambda: rows_of_key(dsn, key) > 0, "rows of the victim's key in the database", *processes)
            announced = f"writes under writer key {key}\n"
            wait_for(lambda: announced in log_path.read_text(), "the master's line on the victim", *processes)
            os.kill(victim.pid, signal.SIGKILL)
            returncode = master.wait(RUN_TIMEOUT_S)
            survivor.wait(DEADLINE_S)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return KilledWorkerRun(returncode, log_path.read_text(), summary, key, rows_of_key(dsn, key))


def wait_for(condition: Callable[[], Found], what: str, *processes: subprocess.Popen) -> Found:
    """`condition()`'s first true value, looked for every POLL_S until DEADLINE_S; an error if one of `processes`
    ends before."""
    deadline = time.monotonic() + DEADLINE_S
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {DEADLINE_S} s: {what}")
        if any(process.poll() is not None for process in processes):
            raise RuntimeError(f"a process ended before: {what}")
        time.sleep(POLL_S)
    return found


def rows_of_key(dsn: str, writer_key: int) -> int:
    """Rows in the telemetry tables written under `writer_key`."""
    with psycopg.connect(dsn) as conn:
        return sum(
            conn.execute(_ROWS_OF_KEY.format(table=table), {"key": writer_key}).fetchone()[0] for table in TABLES
        )


def measure(dsn: str, strategies: list[str] | None = None, progress: Callable[[str], None] = print) -> dict:
    """Each strategy's crash (default: every strategy): what the dead worker had received and acknowledged at its
    last report, its rows in the database at the end, and the lower bound of what was lost with it."""
    costs = {}
    for strategy in strategies or list(available_strategies()):
        progress(f"crash cost: {strategy}")
        with tempfile.TemporaryDirectory(prefix="firehose-crash-") as scratch:
            run = run_and_kill_a_worker(dsn, strategy, Path(scratch), *CONTINUOUS)
        if run.summary is None or len(run.summary["unaccounted"]) != 1:
            costs[strategy] = {"failed": f"exit code {run.returncode}: {run.output[-300:]}"}
            continue
        (dead,) = run.summary["unaccounted"]
        costs[strategy] = {
            field: dead[field] for field in ("received", "acknowledged", "in_database", "lost_with_it_at_least")
        }
    return costs


def markdown_lines(costs: dict) -> list[str]:
    """The table of `measure`'s results."""
    lines = [
        f"What a crash costs (kill -9 of one of two workers while it writes, 4 users, `{' '.join(CONTINUOUS)}`):",
        "",
        "| strategy | received | acknowledged | in database | lost with it, at least |",
        "|---|---|---|---|---|",
    ]
    for strategy, cost in costs.items():
        if "failed" in cost:
            lines.append(f"| {strategy} | failed: {cost['failed']} | | | |")
        else:
            lines.append(
                f"| {strategy} | {cost['received']:,} | {cost['acknowledged']:,} | {cost['in_database']:,} "
                f"| {cost['lost_with_it_at_least']:,} |"
            )
    return lines


def _locust(*args: str, log: IO) -> subprocess.Popen:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]
    return subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def _victim_key(dsn: str, application_name: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT writer_key FROM firehose_writer_keys WHERE application_name = %s", [application_name]
        ).fetchone()
        return row[0] if row else None
