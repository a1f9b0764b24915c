"""The one delivery loop's error classes, each against a real PostgreSQL (writers/delivery.py).

- transient: a connection dropped in the middle of a COPY is retried through the deduplicating path;
- rows: a row the server refuses, on the validated path, is quarantined with the server's error;
- setup: a role without INSERT on one table stops a real Locust run with one clear line; nothing is
  quarantined as "malformed".
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import tempfile
import time

import gevent
import psycopg
import pytest
from locust.event import Events
from psycopg import sql
from psycopg.conninfo import make_conninfo

from telemetry.generator import EngineerTelemetry, EventIds, TraceRows
from telemetry.layout import TABLES
from firehose.tools.headless import locust_command, run_bounded
from writers.copy import CopyWriter
from writers.delivery import ErrorClass, RowsRefused, classify
from writers.validated import ValidatedCopyWriter

pytestmark = pytest.mark.slow

DEADLINE_S = 60
"""Bound on every wait of these tests for an observed state."""
RUN_TIMEOUT_S = 180
"""Bound on a Locust run of these tests."""


def _recording(events):
    requests = []
    events.request.add_listener(lambda **kw: requests.append(kw))
    return requests


def _counts(dsn) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def test_errors_are_classified_by_what_the_server_said(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused_row:
            conn.execute("SELECT 'not a number'::int")
        with pytest.raises(psycopg.Error) as missing_table:
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        with pytest.raises(psycopg.Error) as lost:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert classify(refused_row.value) is ErrorClass.ROWS
    assert classify(missing_table.value) is ErrorClass.SETUP
    assert classify(lost.value) is ErrorClass.TRANSIENT
    assert classify(RowsRefused("already stored")) is ErrorClass.ROWS


def test_a_connection_dropped_mid_copy_is_retried_without_loss_or_double(dsn, pools):
    """Engineers write until a COPY has been caught running and its backend terminated, twice."""
    events = Events()
    requests = _recording(events)
    name = "firehose-test-mid-copy"
    writer = CopyWriter(dsn, events, batch_size=2_000, pool_size=1, connect_kwargs={"application_name": name})
    killed: list[int] = []

    def kill_running_copies() -> None:
        running = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' AND query LIKE 'COPY%%'"
        )
        deadline = time.monotonic() + DEADLINE_S
        with psycopg.connect(dsn, autocommit=True) as admin:
            while len(killed) < 2 and time.monotonic() < deadline:
                row = admin.execute(running, [name]).fetchone()
                # A backend already told to end may still be listed for a moment: only new ones count.
                if row is not None and row[0] not in killed:
                    admin.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                    killed.append(row[0])
                gevent.sleep(0)

    written = {table: 0 for table in TABLES}
    killer = gevent.spawn(kill_running_copies)
    ids, seed = EventIds(31), 0
    while not killer.dead:  # write until the killer is done: it cannot miss the COPYs it waits for
        for rows in EngineerTelemetry(pools, seed, traces=20).traces(ids):
            writer.write(rows)
            for table, lines in rows.by_table():
                written[table] += len(lines)
        seed += 1
    writer.close()
    assert len(killed) == 2, "no running COPY was caught in time: the test proved nothing"
    assert sum(r["exception"] is not None for r in requests) >= 2
    assert not writer.tally.failed
    assert _counts(dsn) == written == dict(writer.tally.acknowledged)


def test_a_row_the_server_refuses_is_quarantined_with_its_error(dsn, pools):
    """A constraint the client's checks know nothing of: only the server can refuse the row."""
    trace = next(EngineerTelemetry(pools, 1, traces=1).traces(EventIds(32)))
    culprit = trace.logs[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        refuse = sql.SQL("ALTER TABLE logs ADD CONSTRAINT firehose_test_refuse CHECK (event_id <> {})")
        conn.execute(refuse.format(sql.Literal(int(culprit.split("\t")[0]))))
    try:
        writer = ValidatedCopyWriter(dsn, Events(), run_id=9, pool_size=1)
        writer.write(TraceRows(spans=trace.spans, metrics=trace.metrics, logs=trace.logs))
        writer.close()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE logs DROP CONSTRAINT firehose_test_refuse")
    with psycopg.connect(dsn) as conn:
        quarantined = conn.execute("SELECT table_name, reason, row_data FROM quarantine").fetchall()
    assert [(table, bytes(data)) for table, _, data in quarantined] == [("logs", culprit.encode())]
    assert 'violates check constraint "firehose_test_refuse"' in quarantined[0][1]
    assert quarantined[0][1].endswith("[SQLSTATE 23514]")
    assert _counts(dsn) == {"spans": len(trace.spans), "metrics": len(trace.metrics), "logs": len(trace.logs) - 1}
    assert not writer.tally.failed and writer.fatal is None


@pytest.fixture
def writer_role(dsn):
    """A non-superuser (a superuser skips permission checks) with every privilege a run needs."""
    role = "firehose_test_writer"
    grants = f"""
        CREATE ROLE {role} LOGIN;
        GRANT SELECT, INSERT ON spans, metrics, logs, quarantine, firehose_runs, firehose_writer_keys TO {role};
        GRANT SELECT, INSERT ON firehose_run_summaries TO {role};
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
        GRANT TEMP ON DATABASE firehose TO {role};
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():  # an interrupted run's
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        conn.execute(grants)
    yield role
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize("engineer", ["CopyEngineer", "ValidatedCopyEngineer"])
def test_a_privilege_revoked_mid_run_stops_it_with_one_clear_line(dsn, writer_role, engineer):
    """The role may write when the run starts (the preflight checks pass); once metrics rows are arriving,
    INSERT on metrics is revoked: the next metrics batch is an error of the setup, and the run stops."""
    command = locust_command(
        engineer, "-u", "4", "-r", "4", "-t", "120s", "--continuous", "--pg-dsn", make_conninfo(dsn, user=writer_role)
    )
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        run = gevent.spawn(run_bounded, command, RUN_TIMEOUT_S, stdout, stderr)
        with psycopg.connect(dsn, autocommit=True) as admin:
            deadline = time.monotonic() + DEADLINE_S
            while not admin.execute("SELECT EXISTS (SELECT FROM metrics)").fetchone()[0] and not run.dead:
                assert time.monotonic() < deadline, "no metrics row arrived"
                gevent.sleep(0.05)
            admin.execute(f"REVOKE INSERT ON metrics FROM {writer_role}")
            written = admin.execute("SELECT count(*) FROM metrics").fetchone()[0]
        returncode, timed_out = run.get()
        stdout.seek(0), stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    line = (
        "COPY into metrics refused: permission denied for table metrics [SQLSTATE 42501]: "
        "the role needs the INSERT privilege on metrics"
    )
    assert not timed_out and returncode != 0
    assert err.count(f"firehose stops the run: {line}") == 1, err[-3000:]
    assert f"stopped by an error of the setup: {line}" in out
    assert "Traceback" not in err
    assert "limit reached" not in err  # stopped by the error, not by -t
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] >= written > 0
