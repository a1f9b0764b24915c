"""Faults survived with real servers: writers ride out a PostgreSQL fast restart, an immediate restart (crash
recovery) and a pgBouncer restart mid-run; in-flight batches are retried through the deduplicating path, and
every run reconciles: acknowledged == in database, lost = 0, duplicates = 0. A database that stays down past
--outage-deadline stops the run with one line, rows not written counted, within the deadline and a margin.

Each restart strikes a fixed-volume run, paced so that it writes for a few seconds in small batches, once rows are
arriving (observed, not timed); the run ends when every engineer has emitted its events. A run that reconciled
exactly exits 0 however many round trips the restarts broke (retried, shown as such in Locust's failures); a run
the outage deadline stopped exits 4 (STOPPED), one whose worker was killed 3 (INCOMPLETE: tests/test_worker_loss.py).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import signal
import subprocess
import tempfile
import time

import gevent
import pytest

from tests.conftest import load_summary, spans_in

from firehose.run.exit_codes import ExitCode

from firehose.tools.headless import REPO, locust_command, run_bounded
from firehose.run.summary import count_in_database
from services.pgbouncer import PgBouncer

pytestmark = pytest.mark.slow

VOLUME = ("--traces-per-engineer", "20", "--engineer-rate", "100", "-t", "120s")
"""10 engineers x ~380 events offered at 100 events/s each: ~4 s of writing, the fault strikes within its first
second, the rest shows the writers resumed. The time limit is a safety net only."""
SMALL_BATCHES = {
    "CopyEngineer": ("--copy-batch-size", "200"),
    "NaiveEngineer": (),
    "PooledEngineer": ("--pooled-batch-size", "100"),
    "ValveEngineer": (),
}
"""Batches small enough that rows reach the database while the engineers write (one INSERT per event: naive)."""
RUN_TIMEOUT_S = 240
DEADLINE_S = 60
"""Bound on waiting for an observed state."""
OUTAGE_DEADLINE_S = 5
"""--outage-deadline of the runs whose database stays down."""
OUTAGE_MARGIN_S = 30
"""Such a run must end within its deadline and this, counted from the server's stop."""


def _run_with_fault(dsn: str, strategy: str, fault, *extra: str, tmp_path, processes: int = 0) -> dict:
    """Run VOLUME of `strategy`; once spans are arriving, call `fault(before)` (`before`: spans then); return the
    summary. The run must exit 0 with [OK]: the round trips the fault broke were retried, not failures."""
    summary = tmp_path / "summary.json"
    command = locust_command(
        strategy, "-u", "10", "-r", "10", *VOLUME, *SMALL_BATCHES[strategy],
        "--pg-dsn", dsn, "--summary-json", str(summary), *extra, processes=processes,
    )  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        run = gevent.spawn(run_bounded, command, RUN_TIMEOUT_S, output, output)
        deadline = time.monotonic() + DEADLINE_S
        while not spans_in(dsn):
            if run.dead or time.monotonic() > deadline:
                output.seek(0)
                pytest.fail(f"no row arrived before the fault:\n{output.read()[-4000:]}")
            gevent.sleep(0.1)
        before = spans_in(dsn)
        fault(lambda: not run.dead)
        returncode, timed_out = run.get()
        output.seek(0)
        log = output.read()
    assert not timed_out and returncode == ExitCode.OK, log[-4000:]
    assert "engineers have emitted their telemetry: ending the run" in log, log[-4000:]  # not the time limit
    assert any(line.startswith("reconciliation") and line.endswith("[OK]") for line in log.splitlines()), log[-4000:]
    result = load_summary(summary)
    assert result["events"]["in_database"] > before, "the writers did not resume after the fault"
    return result


def _reconciles(summary: dict) -> None:
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] > 0, events


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.parametrize("strategy", ["CopyEngineer", "NaiveEngineer"])
def test_a_postgresql_restart_mid_run_loses_nothing(postgres, dsn, tmp_path, mode, strategy):
    _reconciles(_run_with_fault(dsn, strategy, lambda _alive: postgres.restart(mode), tmp_path=tmp_path))


def test_a_postgresql_immediate_restart_mid_valve_run_loses_nothing_and_empties_the_spool(postgres, dsn, tmp_path):
    """The valve's consumers ride out crash recovery; their pointers settled, every chunk file is gone."""
    spool = tmp_path / "spool"
    options = ("--valve-spool", str(spool), "--valve-batch-size", "200")
    restart = lambda _alive: postgres.restart("immediate")  # noqa: E731
    _reconciles(_run_with_fault(dsn, "ValveEngineer", restart, *options, tmp_path=tmp_path))
    assert not list(spool.iterdir()), "a chunk file outlived its pointer"


def test_a_copy_run_across_two_processes_survives_two_restarts_and_exits_0(postgres, dsn, tmp_path):
    """A fast restart once rows arrive, an immediate one (crash recovery) once rows arrive again after it: both
    workers retry through both, the run reconciles exactly and exits 0, the retries shown in the summary."""

    def two_restarts(alive) -> None:
        postgres.restart("fast")
        after_first = spans_in(dsn)
        deadline = time.monotonic() + DEADLINE_S
        while spans_in(dsn) <= after_first:  # the writers resumed: the second restart strikes a running run again
            assert alive() and time.monotonic() < deadline, "no row arrived after the first restart"
            gevent.sleep(0.1)
        postgres.restart("immediate")

    longer = ("--traces-per-engineer", "40")  # ~8 s of writing: room for two restarts and the resumes between
    summary = _run_with_fault(dsn, "CopyEngineer", two_restarts, *longer, tmp_path=tmp_path, processes=2)
    _reconciles(summary)
    assert len(summary["processes"]) == 2 and summary["unaccounted"] == [], summary["processes"]
    assert summary["writes"]["by_class"]["CopyEngineer"]["retries"] > 0, summary["writes"]["by_class"]


def test_a_pgbouncer_restart_mid_run_loses_nothing(postgres, dsn, tmp_path):
    bouncer = PgBouncer(postgres.dsn)
    bouncer.start()

    def restart(_alive) -> None:
        bouncer.stop()  # every client connection is cut, mid-transaction for some
        bouncer.start()  # the same port

    try:
        summary = _run_with_fault(dsn, "PooledEngineer", restart, "--pgbouncer-dsn", bouncer.dsn, tmp_path=tmp_path)
    finally:
        bouncer.stop()
    _reconciles(summary)


@pytest.mark.parametrize(
    ("strategy", "processes"),
    [("CopyEngineer", 0), ("NaiveEngineer", 0), ("StreamEngineer", 0), ("CopyEngineer", 2)],
    ids=["CopyEngineer", "NaiveEngineer", "StreamEngineer", "CopyEngineer-processes-2"],
)
def test_a_database_down_past_the_deadline_stops_the_run(own_postgres, tmp_path, strategy, processes):
    """A --continuous run of ten minutes ends within deadline + margin of the database's stop, with one line; with
    workers too (the master then knows the run's writer keys from the workers, not from the database)."""
    server = own_postgres()
    dsn = server.dsn
    summary_path = tmp_path / "summary.json"
    command = locust_command(
        strategy, "-u", "10", "-r", "10", "-t", "10m", "--continuous",
        "--outage-deadline", str(OUTAGE_DEADLINE_S), "--pg-dsn", dsn, "--summary-json", str(summary_path),
        processes=processes,
    )  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not spans_in(dsn):
                assert time.monotonic() < deadline and process.poll() is None, "no row arrived before the outage"
                gevent.sleep(0.1)
            server.stop()  # and it stays down until the run has ended
            try:
                returncode = process.wait(OUTAGE_DEADLINE_S + OUTAGE_MARGIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run outlived its outage deadline by {OUTAGE_MARGIN_S} s")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        output.seek(0)
        log = output.read()
    assert returncode == ExitCode.STOPPED, log[-4000:]
    stops = [line for line in log.splitlines() if "firehose stops the run:" in line]
    assert len(stops) == 1, log[-4000:]
    assert f"the database has been unreachable for {OUTAGE_DEADLINE_S} s (" in stops[0], stops
    assert "Traceback" not in log, log[-4000:]
    summary = load_summary(summary_path)
    events, (written,) = summary["events"], summary["writes"]["by_class"].values()
    assert "unreachable" in summary["run"]["stopped_by"] and not events["in_database_counted"]
    not_written = events["generated"] - events["acknowledged"] - events["quarantined"]
    assert events["lost"] == not_written > 0, events
    if strategy != "StreamEngineer":  # the stream's rows not written stay in the stream, not counted as failed
        assert events["failed"] == not_written, events
    assert written["retries"] > 0 and written["blocked_s"] >= OUTAGE_DEADLINE_S, written
    # What the writers saw committed is in the database, and nothing more: counted once it is back.
    server.start()
    by_key, duplicates = count_in_database(dsn, summary["run"]["run_id"])
    in_database = sum(sum(tables.values()) for tables in by_key.values())
    assert in_database == events["acknowledged"] and duplicates == 0, (by_key, events)
