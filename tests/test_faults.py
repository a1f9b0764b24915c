"""Faults survived with real servers: writers ride out a PostgreSQL fast restart, an immediate restart (crash
recovery) and a pgBouncer restart mid-run; in-flight batches are retried through the deduplicating path, and
every run reconciles: acknowledged == in database, lost = 0, duplicates = 0.

Each run is `--continuous` for a fixed time; the fault strikes once rows are arriving (observed, not timed).
Locust's own rule makes a run with failed requests exit 1 (the round trips the restart broke are failures), so
the runs pass `--exit-code-on-error 0` and the reconciliation is what is judged.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import tempfile
import time

import gevent
import psycopg
import pytest

from tests.conftest import load_summary

from firehose.headless import locust_command, run_bounded
from services.pgbouncer import PgBouncer

pytestmark = pytest.mark.slow

RUN_S = 10
"""Each run's length: the fault strikes within its first seconds, the rest shows the writers resumed."""
RUN_TIMEOUT_S = 240
DEADLINE_S = 60
"""Bound on waiting for an observed state."""


def _run_with_fault(dsn: str, strategy: str, fault, *extra: str, tmp_path) -> dict:
    """Run `strategy` for RUN_S seconds; once spans are arriving, call `fault()`; return the summary."""
    summary = tmp_path / "summary.json"
    command = locust_command(
        strategy, "-u", "10", "-r", "10", "-t", f"{RUN_S}s", "--continuous", "--exit-code-on-error", "0",
        "--pg-dsn", dsn, "--summary-json", str(summary), *extra,
    )  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        run = gevent.spawn(run_bounded, command, RUN_TIMEOUT_S, output, output)
        deadline = time.monotonic() + DEADLINE_S
        while not _spans(dsn):
            assert time.monotonic() < deadline and not run.dead, "no row arrived before the fault"
            gevent.sleep(0.1)
        before = _spans(dsn)
        fault()
        returncode, timed_out = run.get()
        output.seek(0)
        log = output.read()
    assert not timed_out and returncode == 0, log[-4000:]
    result = load_summary(summary)
    assert result["events"]["in_database"] > before, "the writers did not resume after the fault"
    return result


def _spans(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    except psycopg.OperationalError:
        return 0  # the server is restarting


def _reconciles(summary: dict) -> None:
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] > 0, events


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.parametrize("strategy", ["CopyEngineer", "NaiveEngineer"])
def test_a_postgresql_restart_mid_run_loses_nothing(postgres, dsn, tmp_path, mode, strategy):
    _reconciles(_run_with_fault(dsn, strategy, lambda: postgres.restart(mode), tmp_path=tmp_path))


def test_a_pgbouncer_restart_mid_run_loses_nothing(postgres, dsn, tmp_path):
    bouncer = PgBouncer(postgres.dsn)
    bouncer.start()

    def restart() -> None:
        bouncer.stop()  # every client connection is cut, mid-transaction for some
        bouncer.start()  # the same port

    try:
        summary = _run_with_fault(dsn, "PooledEngineer", restart, "--pgbouncer-dsn", bouncer.dsn, tmp_path=tmp_path)
    finally:
        bouncer.stop()
    _reconciles(summary)
