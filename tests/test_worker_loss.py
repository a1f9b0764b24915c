"""Every worker accounted for: a worker killed -9 mid-run is named in the summary, the run ends by itself, is
INCOMPLETE with exit code 1, and the survivors' rows reconcile among themselves.

A real master and two real `locust --worker` processes (separate subprocesses, so one can be killed by pid).
The victim worker is given its own DSN (a worker's own --pg-dsn wins over the master's) naming a unique
application_name, so the test finds its writer key in `firehose_writer_keys`. It is killed once the
database holds rows of that key and the master has logged that it writes under it (its figures arrived),
both observed, never timed.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from firehose.tools.headless import LOCUSTFILE, locust_command
from services.ports import free_port
from telemetry.layout import TABLES
from tests.conftest import REPO, load_summary

pytestmark = pytest.mark.slow

CONTINUOUS = ("--continuous", "-t", "20s", "--traces-per-engineer", "20")
"""A timed run: the kill strikes within its first seconds."""
FIXED_VOLUME = ("-t", "240s", "--traces-per-engineer", "100", "--engineer-rate", "200", "--copy-batch-size", "200")
"""A fixed-volume run whose engineers take ~10 s each (1,900 events at 200/s), so the victim dies with
unfinished engineers; small batches, so its rows reach the database while they write. The time limit is a
safety net only: the test checks the run ended by its end check."""
RUN_TIMEOUT_S = 240
"""Bound on the whole run: a fixed-volume one waits ~64 s for Locust to drop the dead worker and hand its
users to the survivor, then ~10 s for them; a timed one 20 s, ~4 s to find the worker missing, the drain."""
DEADLINE_S = 60
"""Bound on waiting for an observed state."""


def _locust(*args: str, log) -> subprocess.Popen:
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


_ROWS_OF_KEY = (
    "SELECT count(*) FROM {table} WHERE event_id >= %(key)s::bigint << 32 AND event_id < (%(key)s::bigint + 1) << 32"
)


def _rows_of_key(dsn: str, writer_key: int) -> int:
    with psycopg.connect(dsn) as conn:
        return sum(
            conn.execute(_ROWS_OF_KEY.format(table=table), {"key": writer_key}).fetchone()[0] for table in TABLES
        )


def _group_alive(group: int) -> bool:
    """Whether any process of process group `group` is still running (a forked worker may outlive its master)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(condition, what: str, *processes: subprocess.Popen):
    deadline = time.monotonic() + DEADLINE_S
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not seen within {DEADLINE_S} s: {what}"
        assert all(process.poll() is None for process in processes), f"a process ended before: {what}"
        time.sleep(0.1)
    return found


def run_and_kill_a_worker(dsn: str, strategy: str, tmp_path, *extra: str) -> dict:
    """A master and two workers run `strategy` (4 users) with Locust options `extra`; one worker is killed -9
    once it writes. Returns the exit code, the master's output, the summary, the victim's key and its rows."""
    port, summary_path, log_path = free_port(), tmp_path / "summary.json", tmp_path / "master.log"
    victim_name = f"victim-{uuid.uuid4().hex[:12]}"
    processes = []
    with log_path.open("w") as log, (tmp_path / "workers.log").open("w") as worker_log:
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
            key = _wait_for(lambda: _victim_key(dsn, victim_name), "the victim's writer key", *processes)
            _wait_for(lambda: _rows_of_key(dsn, key) > 0, "rows of the victim's key in the database", *processes)
            announced = f"writes under writer key {key}\n"
            _wait_for(lambda: announced in log_path.read_text(), "the master's line on the victim", *processes)
            os.kill(victim.pid, signal.SIGKILL)
            returncode = master.wait(RUN_TIMEOUT_S)
            survivor.wait(DEADLINE_S)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    output = log_path.read_text()
    return {
        "returncode": returncode,
        "output": output,
        "summary": load_summary(summary_path),
        "victim_key": key,
        "victim_rows": _rows_of_key(dsn, key),
    }


def _named_and_the_survivor_reconciles(run: dict) -> None:
    summary, output = run["summary"], run["output"]
    assert run["returncode"] == 1, output[-4000:]
    assert summary["run"]["verdict"] == "INCOMPLETE"
    assert "[INCOMPLETE]" in output and "UNACCOUNTED firehose worker " in output, output[-4000:]
    (dead,) = summary["unaccounted"]
    assert dead["writer_key"] == run["victim_key"] and dead["worker"].startswith("firehose worker ")
    # Not waited for until --drain-timeout: the master knew it was missing (or already dropped).
    assert dead["state"] in ("missing", "gone"), dead
    assert dead["received"] > 0 and dead["in_database"] == run["victim_rows"] > 0, dead
    assert dead["lost_with_it_at_least"] == max(dead["received"] - dead["in_database"], 0)
    # The survivor reconciles on its own: what it generated is in the database under its key, once.
    (survivor,) = summary["processes"]
    assert survivor["writer_key"] != run["victim_key"]
    assert survivor["lost"] == 0 and survivor["generated"] == survivor["in_database"] > 0, survivor
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] == survivor["generated"]


def test_a_worker_killed_mid_run_is_named_and_the_survivors_reconcile(dsn, tmp_path):
    run = run_and_kill_a_worker(dsn, "CopyEngineer", tmp_path, *CONTINUOUS, "--drain-timeout", "120")
    _named_and_the_survivor_reconciles(run)


def test_a_fixed_volume_run_ends_by_itself_after_a_worker_is_killed(dsn, tmp_path):
    run = run_and_kill_a_worker(dsn, "CopyEngineer", tmp_path, *FIXED_VOLUME)
    _named_and_the_survivor_reconciles(run)
    assert "engineers have emitted their telemetry: ending the run" in run["output"], run["output"][-4000:]
    # The dead worker's users came back on the survivor as new engineers: more than its own two.
    assert run["summary"]["open_model"]["engineers"] > 2, run["summary"]["open_model"]


STRATEGIES = (
    "NaiveEngineer", "BatchedEngineer", "CopyEngineer", "PooledEngineer", "StreamEngineer", "ValidatedCopyEngineer",
)  # fmt: skip


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_what_a_crash_costs(dsn, tmp_path, strategy):
    """kill -9 of a writing worker, per strategy: the summary says what died with it (the README's table).

    Run with `-s` to see each strategy's row: rows received and acknowledged at its last report, its rows in
    the database at the end, and the lower bound of what was lost with it.
    """
    run = run_and_kill_a_worker(dsn, strategy, tmp_path, *CONTINUOUS)
    summary = run["summary"]
    assert run["returncode"] == 1 and summary["run"]["verdict"] == "INCOMPLETE", run["output"][-4000:]
    (dead,) = summary["unaccounted"]
    assert dead["writer_key"] == run["victim_key"] and dead["in_database"] == run["victim_rows"], dead
    assert dead["state"] in ("missing", "gone") and dead["received"] > 0, dead
    (survivor,) = summary["processes"]
    assert survivor["lost"] == 0 and summary["events"]["lost"] == 0 and summary["events"]["duplicates"] == 0
    print(
        f"\n| {strategy} | {dead['received']:,} | {dead['acknowledged']:,} | {dead['in_database']:,} "
        f"| {dead['lost_with_it_at_least']:,} |"
    )


def test_a_worker_past_the_drain_timeout_is_named_not_waited_for(dsn, tmp_path):
    """A live worker whose last batches cannot commit (the tables locked) misses --drain-timeout: named, INCOMPLETE."""
    summary_path, log_path = tmp_path / "summary.json", tmp_path / "master.log"
    command = locust_command(
        "CopyEngineer", "-u", "2", "-r", "2", "-t", "6s", "--continuous", "--drain-timeout", "3",
        "--pg-dsn", dsn, "--summary-json", str(summary_path), processes=1,
    )  # fmt: skip
    with log_path.open("w") as log, psycopg.connect(dsn) as locker:
        master = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            _wait_for(lambda: "writes under writer key" in log_path.read_text(), "the worker writing", master)
            locker.execute("LOCK TABLE spans, metrics, logs IN ACCESS EXCLUSIVE MODE")  # held until the rollback
            timed_out = "within --drain-timeout (3 s)"
            _wait_for(lambda: timed_out in log_path.read_text(), "the master giving up on the worker", master)
            locker.rollback()  # the master counts the rows (and the worker commits, too late for the summary)
            returncode = master.wait(RUN_TIMEOUT_S)
            _wait_for(lambda: not _group_alive(master.pid), "the forked worker gone after its late commit")
        finally:
            if _group_alive(master.pid):
                os.killpg(master.pid, signal.SIGKILL)
            master.wait()
    summary = load_summary(summary_path)
    assert returncode == 1 and summary["run"]["verdict"] == "INCOMPLETE", log_path.read_text()[-4000:]
    (late,) = summary["unaccounted"]
    assert late["worker"] == "firehose worker 0" and late["state"] == "live", late
    assert late["reason"] == "no final report within --drain-timeout (3 s)", late
    assert summary["processes"] == [], summary["processes"]
