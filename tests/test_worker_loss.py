"""Every worker accounted for: a worker killed -9 mid-run is named in the summary, the run ends by itself, is
INCOMPLETE with its exit code (3), and the survivors' rows reconcile among themselves. A worker started after the
kill joins the running test: it gets the run-start message, writes under a writer key of its own and reconciles.

A real master and two real `locust --worker` processes (separate subprocesses, so one can be killed by pid), run
by firehose.tools.bench.crash_cost (whose table of every strategy's crash `firehose bench --crash-cost` makes):
the victim is killed once the database holds rows of its writer key and the master has logged that it writes
under it, both observed, never timed.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import signal
import subprocess

import psycopg
import pytest

from firehose.run.exit_codes import ExitCode
from firehose.tools.bench.crash_cost import CONTINUOUS, KilledWorkerRun, run_and_kill_a_worker
from firehose.tools.locust_processes import rows_of_key, wait_for
from firehose.tools.headless import locust_command
from tests.conftest import REPO, load_summary, validate_summary
from writers.spool import chunk_files, partial_files
from writers.valve import flush_spool

pytestmark = pytest.mark.slow

PACED = ("--engineer-rate", "200", "--copy-batch-size", "200")
"""A timed COPY run's engineers offer 200 events/s each in batches of 200 rows: its rows reach the database while
they write, and the accounting is checked without the run spending its 20 s writing as fast as it can."""
FIXED_VOLUME = ("-t", "240s", "--traces-per-engineer", "100", "--worker-gone-after", "5", *PACED)
"""A fixed-volume run whose engineers take ~10 s each (1,900 events at 200/s), so the victim dies with
unfinished engineers; small batches, so its rows reach the database while they write; the dead worker dropped
5 s after it goes missing (not Locust's 60). The time limit is a safety net only: the test checks the run ended
by its end check."""
RUN_TIMEOUT_S = 240
"""Bound on the whole run: a fixed-volume one waits ~9 s for Locust to drop the dead worker and hand its users to
the survivor, then ~10 s for them; a timed one 20 s, ~4 s to find the worker missing, the drain."""


def _group_alive(group: int) -> bool:
    """Whether any process of process group `group` is still running (a forked worker may outlive its master)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _killed(dsn: str, strategy: str, tmp_path, *extra: str, replace: bool = False) -> KilledWorkerRun:
    """A run of `strategy` whose victim worker was killed (and replaced, with `replace`), its summary checked
    against the schema."""
    run = run_and_kill_a_worker(dsn, strategy, tmp_path, *extra, replace=replace)
    assert run.summary is not None, run.output[-4000:]
    validate_summary(run.summary)
    return run


def _named_and_the_survivors_reconcile(run: KilledWorkerRun) -> None:
    summary, output = run.summary, run.output
    assert run.returncode == ExitCode.INCOMPLETE, output[-4000:]
    assert summary["run"]["verdict"] == "INCOMPLETE"
    assert "[INCOMPLETE]" in output and "UNACCOUNTED firehose worker " in output, output[-4000:]
    (dead,) = summary["unaccounted"]
    assert dead["writer_key"] == run.victim_key and dead["worker"].startswith("firehose worker ")
    # Not waited for until --drain-timeout: the master knew it was missing (or already dropped).
    assert dead["state"] in ("missing", "gone"), dead
    assert dead["received"] > 0 and dead["in_database"] == run.victim_rows > 0, dead
    assert dead["lost_with_it_at_least"] == max(dead["received"] - dead["in_database"], 0)
    # Each survivor reconciles on its own: what it generated is in the database under its key, once.
    survivors = summary["processes"]
    assert len(survivors) == (2 if run.replacement_key is not None else 1), survivors
    for survivor in survivors:
        assert survivor["writer_key"] != run.victim_key
        assert survivor["lost"] == 0 and survivor["generated"] == survivor["in_database"] > 0, survivor
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    generated = sum(survivor["generated"] for survivor in survivors)
    assert events["acknowledged"] == events["in_database"] == events["generated"] == generated


def test_a_worker_killed_mid_run_is_named_and_the_survivors_reconcile_with_a_replacement(dsn, tmp_path):
    """The replacement starts after the kill, well into the run (observed): the master sends it the run-start
    message when it connects, and it writes under its own writer key, reconciled with the survivor. Once it writes
    the run is ended by Ctrl-C (however long its start took on a busy machine; -t is a safety net)."""
    until_interrupted = ("-t", "120s")
    run = _killed(
        dsn, "CopyEngineer", tmp_path, *CONTINUOUS, *until_interrupted, *PACED, "--drain-timeout", "120", replace=True
    )
    _named_and_the_survivors_reconcile(run)
    assert "a worker joined the running test (" in run.output, run.output[-4000:]
    (replacement,) = [process for process in run.summary["processes"] if process["writer_key"] == run.replacement_key]
    assert replacement["generated"] > 0, replacement


def test_a_fixed_volume_run_ends_by_itself_after_a_worker_is_killed(dsn, tmp_path):
    run = _killed(dsn, "CopyEngineer", tmp_path, *FIXED_VOLUME)
    _named_and_the_survivors_reconcile(run)
    assert "engineers have emitted their telemetry: ending the run" in run.output, run.output[-4000:]
    # Dropped by Locust (--worker-gone-after), which handed its users to the survivor as new engineers: more than
    # the survivor's own two.
    assert run.summary["unaccounted"][0]["state"] == "gone", run.summary["unaccounted"]
    assert run.summary["open_model"]["engineers"] > 2, run.summary["open_model"]


def test_a_stream_workers_crash_is_named_with_its_rows_and_nothing_else_is_lost(dsn, tmp_path):
    """The stream path's crash bound: its rows pass through Redis, consumed by any process (what every strategy's
    crash costs is measured by `firehose bench --crash-cost`, not judged here)."""
    run = _killed(dsn, "StreamEngineer", tmp_path, *CONTINUOUS, "-t", "8s", *PACED, "--stream-claim-idle", "2")
    summary = run.summary
    assert run.returncode == ExitCode.INCOMPLETE and summary["run"]["verdict"] == "INCOMPLETE", run.output[-4000:]
    (dead,) = summary["unaccounted"]
    assert dead["writer_key"] == run.victim_key and dead["in_database"] == run.victim_rows, dead
    assert dead["state"] in ("missing", "gone") and dead["received"] > 0, dead
    assert dead["lost_with_it_at_least"] == max(dead["received"] - dead["in_database"], 0)
    (survivor,) = summary["processes"]
    assert survivor["lost"] == 0 and summary["events"]["lost"] == 0 and summary["events"]["duplicates"] == 0


def test_a_valve_workers_crash_costs_nothing_once_its_spool_is_flushed(dsn, tmp_path):
    """The valve's crash bound: what the victim returned to its engineers is in chunk files on this disk; the
    survivor stores what it pointed to (claimed), `flush_spool` the rest, each row once, and no chunk is left."""
    spool = tmp_path / "spool"
    valve = ("--valve-spool", str(spool), "--valve-claim-idle", "2")
    run = _killed(dsn, "ValveEngineer", tmp_path, *CONTINUOUS, "-t", "8s", *valve)
    summary = run.summary
    assert run.returncode == ExitCode.INCOMPLETE and summary["run"]["verdict"] == "INCOMPLETE", run.output[-4000:]
    (dead,) = summary["unaccounted"]
    (survivor,) = summary["processes"]
    assert survivor["lost"] == 0 and summary["events"]["duplicates"] == 0, summary["events"]
    flush_spool(dsn, spool)
    assert rows_of_key(dsn, run.victim_key) >= dead["received"] > 0, dead
    assert not chunk_files(spool) and not partial_files(spool)


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
            wait_for(lambda: "writes under writer key" in log_path.read_text(), "the worker writing", master)
            locker.execute("LOCK TABLE spans, metrics, logs IN ACCESS EXCLUSIVE MODE")  # held until the rollback
            timed_out = "within --drain-timeout (3 s)"
            wait_for(lambda: timed_out in log_path.read_text(), "the master giving up on the worker", master)
            locker.rollback()  # the master counts the rows (and the worker commits, too late for the summary)
            returncode = master.wait(RUN_TIMEOUT_S)
            wait_for(lambda: not _group_alive(master.pid), "the forked worker gone after its late commit")
        finally:
            if _group_alive(master.pid):
                os.killpg(master.pid, signal.SIGKILL)
            master.wait()
    summary = load_summary(summary_path)
    assert returncode == ExitCode.INCOMPLETE and summary["run"]["verdict"] == "INCOMPLETE", log_path.read_text()[-4000:]
    (late,) = summary["unaccounted"]
    assert late["worker"] == "firehose worker 0" and late["state"] == "live", late
    assert late["reason"] == "no final report within --drain-timeout (3 s)", late
    assert summary["processes"] == [], summary["processes"]
