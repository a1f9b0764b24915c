"""What a crash costs, per strategy: a worker killed -9 while it writes, and what the summary says died with it.

A real master and two real `locust --worker` processes (separate processes, so one can be killed by pid) run a
strategy for a fixed time. The victim worker gets its own DSN (a worker's own --pg-dsn wins over the master's)
naming a unique application_name, so its writer key is found in `firehose_writer_keys`. It is killed once the
database holds rows of that key and the master has logged that it writes under it, both observed, never timed.

`firehose bench --crash-cost` measures every strategy and renders the table the docs cite; the suite calls
`run_and_kill_a_worker` to check the defects (a dead worker named, the survivor reconciling), and with `replace` a
worker started after the kill, which joins the running test and writes under a writer key of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import make_conninfo

from firehose.run.exit_codes import describe
from firehose.strategies import available_strategies, strategy_named
from firehose.tools.locust_processes import DEADLINE_S, rows_of_key, start_locust, wait_for, writer_key_of
from services.ports import free_port
from writers.valve import ValveWriter, flush_spool

CONTINUOUS = ("--continuous", "-t", "20s", "--traces-per-engineer", "20")
"""A timed run: the kill strikes within its first seconds."""
RUN_TIMEOUT_S = 240
"""Bound on the whole run once the victim is killed: Locust may take ~64 s (--worker-gone-after) to drop a dead
worker and hand its users to the survivor, then the survivor's own drain."""

JOINING_MASTER_ENV = {"LOCUST_WAIT_FOR_WORKERS_REPORT_AFTER_RAMP_UP": "1"}
"""Locust's default, for a master a worker joins mid-run: Locust 2.47 handles the joiner's `client_ready` by
re-dispatching users in its message loop, which then waits this long for every worker's user count, receiving
nothing meanwhile, heartbeats included. A longer wait (the suite sets 30 s for the end of fixed-volume runs) marks
every worker missing and stops the run; with a dead worker still counted, the wait always runs to its end."""


@dataclass
class KilledWorkerRun:
    """A run whose victim worker was killed -9: the master's exit code and output, its summary (None when it wrote
    none), the victim's writer key and its rows in the database at the end; with a replacement, its writer key."""

    returncode: int
    output: str
    summary: dict | None
    victim_key: int
    victim_rows: int
    replacement_key: int | None = None


def run_and_kill_a_worker(
    dsn: str, strategy: str, scratch: Path, *extra: str, replace: bool = False
) -> KilledWorkerRun:
    """A master and two workers run `strategy` (4 users) with Locust options `extra`; one worker is killed -9
    once it writes; with `replace`, a third worker is started then, and once it writes the master is interrupted
    (SIGINT, a user's Ctrl-C: the run drains and reconciles, however long `extra`'s -t). Logs and the summary go
    to `scratch`."""
    port, summary_path, log_path = free_port(), scratch / "summary.json", scratch / "master.log"
    victim_name = f"victim-{uuid.uuid4().hex[:12]}"
    replacement_key = None
    processes: list[subprocess.Popen] = []
    with log_path.open("w") as log, (scratch / "workers.log").open("w") as worker_log:
        try:
            master = start_locust(
                strategy, "--master", "--headless", "--only-summary", "--expect-workers", "2",
                "--master-bind-port", str(port), "-u", "4", "-r", "4", "--pg-dsn", dsn,
                "--summary-json", str(summary_path), *extra, log=log,
                env={**os.environ, **JOINING_MASTER_ENV} if replace else None,
            )  # fmt: skip
            processes.append(master)
            victim_dsn = make_conninfo(dsn, application_name=victim_name)
            victim = start_locust("--worker", "--master-port", str(port), "--pg-dsn", victim_dsn, log=worker_log)
            survivor = start_locust("--worker", "--master-port", str(port), log=worker_log)
            processes += [victim, survivor]
            key = wait_for(lambda: writer_key_of(dsn, victim_name), "the victim's writer key", *processes)
            wait_for(lambda: rows_of_key(dsn, key) > 0, "rows of the victim's key in the database", *processes)
            announced = f"writes under writer key {key}\n"
            wait_for(lambda: announced in log_path.read_text(), "the master's line on the victim", *processes)
            os.kill(victim.pid, signal.SIGKILL)
            if replace:  # joins the running test: it must get the run's start message and write under its own key
                name = f"replacement-{uuid.uuid4().hex[:12]}"
                replacement_dsn = make_conninfo(dsn, application_name=name)
                joining = ("--worker", "--master-port", str(port), "--pg-dsn", replacement_dsn)
                replacement = start_locust(*joining, log=worker_log)
                processes.append(replacement)
                live = [master, survivor, replacement]
                replacement_key = wait_for(lambda: writer_key_of(dsn, name), "the replacement's writer key", *live)
                wait_for(lambda: rows_of_key(dsn, replacement_key) > 0, "rows of the replacement's key", *live)
                os.kill(master.pid, signal.SIGINT)
            returncode = master.wait(RUN_TIMEOUT_S)
            survivor.wait(DEADLINE_S)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return KilledWorkerRun(returncode, log_path.read_text(), summary, key, rows_of_key(dsn, key), replacement_key)


def measure(dsn: str, strategies: list[str] | None = None, progress: Callable[[str], None] = print) -> dict:
    """Each strategy's crash (default: every strategy): what the dead worker had received and acknowledged at its
    last report, its rows in the database at the end, and the lower bound of what was lost with it. A valve's
    spool (in the run's scratch directory, on the same disk) is flushed after the run, as its user would, and its
    rows counted after that."""
    costs = {}
    for strategy in strategies or list(available_strategies()):
        progress(f"crash cost: {strategy}")
        with tempfile.TemporaryDirectory(prefix="firehose-crash-") as scratch:
            spool = Path(scratch) / "spool"
            spooled = issubclass(strategy_named(strategy).writer, ValveWriter)
            extra = ("--valve-spool", str(spool)) if spooled else ()
            run = run_and_kill_a_worker(dsn, strategy, Path(scratch), *CONTINUOUS, *extra)
            flushed = flush_spool(dsn, spool) if spooled else None
        if run.summary is None or len(run.summary["unaccounted"]) != 1:
            costs[strategy] = {"failed": f"exit code {describe(run.returncode)}: {run.output[-300:]}"}
            continue
        (dead,) = run.summary["unaccounted"]
        costs[strategy] = {
            field: dead[field] for field in ("received", "acknowledged", "in_database", "lost_with_it_at_least")
        }
        if flushed is not None:
            in_database = rows_of_key(dsn, run.victim_key)
            costs[strategy].update(
                in_database=in_database,
                lost_with_it_at_least=max(dead["received"] - in_database, 0),
                flushed_rows=flushed.rows,
            )
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
            flushed = (
                f" (after `firehose valve flush`: {cost['flushed_rows']:,} rows)" if "flushed_rows" in cost else ""
            )
            lines.append(
                f"| {strategy} | {cost['received']:,} | {cost['acknowledged']:,} | {cost['in_database']:,}{flushed} "
                f"| {cost['lost_with_it_at_least']:,} |"
            )
    return lines
