"""The INSERT writers (naive, batched, through pgBouncer) against a real PostgreSQL and a real pgBouncer.

Every row handed over is acknowledged and stored with the content COPY would have stored; each
round trip is a Locust request event with the verb INSERT; retries after lost connections neither
fail nor duplicate; and through transaction pooling, prepared statements stay off.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import time

import gevent
import psycopg
import pytest
from locust.event import Events

from services.pgbouncer import PgBouncer
from telemetry.generator import EngineerTelemetry, EventIds
from writers.batched import BatchedWriter, insert_statement
from writers.copy import copy_rows
from writers.naive import NaiveWriter
from writers.pooled import PooledWriter
from telemetry.layout import TABLES, copy_statement

pytestmark = pytest.mark.slow

TRACES = 15
"""Traces per engineer: ~285 rows each, enough for several batches of the sizes below."""


@pytest.fixture(scope="module")
def bouncer(postgres):
    """A pgBouncer with 2 server connections: the writers' 4 client connections must share them."""
    server = PgBouncer(postgres.dsn, pool_size=2)
    server.start()
    yield server
    server.stop()


WRITERS = {
    "naive": lambda dsn, bouncer, events: NaiveWriter(dsn, events, pool_size=5),
    "batched": lambda dsn, bouncer, events: BatchedWriter(dsn, events, batch_size=100, pool_size=3),
    "pooled": lambda dsn, bouncer, events: PooledWriter(bouncer.dsn, events, batch_size=100, pool_size=4),
}


def _telemetry(pools, engineers, writer_key):
    ids = EventIds(writer_key)
    return [rows for seed in range(engineers) for rows in EngineerTelemetry(pools, seed, traces=TRACES).traces(ids)]


def _write(writer, traces, close=True):
    """Write `traces` from 3 concurrent engineers, then close the writer (or only flush it); return the lines
    written per table."""
    written = {table: [] for table in TABLES}
    for rows in traces:
        for table in TABLES:
            written[table] += getattr(rows, table)
    engineers = [gevent.spawn(lambda share: [writer.write(rows) for rows in share], traces[i::3]) for i in range(3)]
    gevent.joinall(engineers, raise_error=True)
    writer.close() if close else writer.flush()
    return written


def _recording(events):
    requests = []
    events.request.add_listener(lambda **kw: requests.append(kw))
    return requests


@pytest.mark.parametrize("strategy", WRITERS)
def test_rows_in_equal_rows_acknowledged(dsn, bouncer, pools, strategy):
    events = Events()
    requests = _recording(events)
    writer = WRITERS[strategy](dsn, bouncer, events)
    written = _write(writer, _telemetry(pools, engineers=3, writer_key=21))
    with psycopg.connect(dsn) as conn:
        for table, lines in written.items():
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == len(lines) == writer.tally.acknowledged[table] == writer.tally.received[table]
    assert not writer.tally.failed
    assert {r["request_type"] for r in requests} == {"INSERT"}
    assert {r["name"] for r in requests} == set(TABLES)
    assert all(r["exception"] is None for r in requests)
    assert sum(r["response_length"] for r in requests) == sum(len("".join(v).encode()) for v in written.values())
    rows = sum(len(lines) for lines in written.values())
    if strategy == "naive":
        assert len(requests) == rows  # one INSERT per event
    else:
        assert len(requests) == sum(-(-len(lines) // 100) for lines in written.values())  # batches of 100


@pytest.mark.parametrize("strategy", WRITERS)
def test_stored_rows_equal_what_copy_stores(dsn, bouncer, pools, strategy):
    """Text parameters cast by the server give exactly the typed values COPY gives (jsonb, timestamps, NULLs)."""
    writer = WRITERS[strategy](dsn, bouncer, Events())
    written = _write(writer, _telemetry(pools, engineers=1, writer_key=22))
    with psycopg.connect(dsn) as conn:
        for table, lines in written.items():
            staging = f"expected_{table}"
            conn.execute(f"CREATE TEMP TABLE {staging} (LIKE {table})")
            copy_rows(conn, copy_statement(table, staging), "".join(lines).encode())
            for left, right in ((table, staging), (staging, table)):
                differing = conn.execute(f"SELECT count(*) FROM (TABLE {left} EXCEPT ALL TABLE {right}) AS d")
                assert differing.fetchone()[0] == 0, (table, left)


def test_a_resent_batch_is_not_duplicated(dsn, bouncer, pools):
    """What a retry after a lost connection does when the first attempt had committed: no error, no copy."""
    writer = BatchedWriter(dsn, Events(), batch_size=100, pool_size=1)
    rows = [line for trace in _telemetry(pools, engineers=1, writer_key=23) for line in trace.spans]
    writer.send("spans", rows)
    writer.send("spans", rows)
    writer.close()
    assert not writer.tally.failed
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == len(rows)
    assert "ON CONFLICT DO NOTHING" in insert_statement("spans", 3)


@pytest.mark.parametrize("strategy", ["naive", "batched"])
def test_lost_connections_are_retried_without_loss(dsn, bouncer, pools, strategy):
    """Between rounds of writing, all the writer's server connections are terminated at once (as a restart
    would), twice: the next round meets dead connections, retries through the deduplicating path, and
    must neither lose nor double a row, nor draw one dead pooled connection after another."""
    events = Events()
    requests = _recording(events)
    name = f"firehose-test-{strategy}"
    options = {"connect_kwargs": {"application_name": name}}
    writer = (
        NaiveWriter(dsn, events, pool_size=5, **options)
        if strategy == "naive"
        else BatchedWriter(dsn, events, batch_size=20, pool_size=3, **options)
    )
    traces = _telemetry(pools, engineers=2, writer_key=25)
    rounds = [traces[:10], traces[10:20], traces[20:]]
    written = {table: [] for table in TABLES}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for number, batch in enumerate(rounds):
            if number:  # the writer's pooled connections are idle now: end them all, and wait until they are gone
                _terminate(admin, name)
            for table, lines in _write(writer, batch, close=False).items():
                written[table] += lines
    writer.close()
    assert any(r["exception"] is not None for r in requests), "no connection was lost: the test proved nothing"
    assert not writer.tally.failed, [repr(r["exception"]) for r in requests if r["exception"]]
    with psycopg.connect(dsn) as conn:
        for table, lines in written.items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == len(lines)
            assert writer.tally.acknowledged[table] == len(lines)


def _terminate(admin: psycopg.Connection, application_name: str) -> None:
    """Terminate every backend of `application_name` and return once none is left (observed, not slept on)."""
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert admin.execute(count, [application_name]).fetchone()[0] > 0, "the writer has no connection to end"
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [application_name]
    )
    deadline = time.monotonic() + 30
    while admin.execute(count, [application_name]).fetchone()[0]:  # autocommit: each count sees a fresh snapshot
        assert time.monotonic() < deadline, "terminated backends still listed after 30 s"


def test_automatic_prepared_statements_break_through_transaction_pooling(postgres):
    """Why PooledWriter turns them off: two clients sharing one server connection collide (control)."""
    single = PgBouncer(postgres.dsn, pool_size=1)
    single.start()
    try:
        with psycopg.connect(single.dsn) as first, psycopg.connect(single.dsn) as second:
            with pytest.raises(psycopg.Error) as caught:
                for _ in range(10):  # psycopg prepares a query after its 5th execution
                    for conn in (first, second):
                        conn.execute("SELECT %s::int", [1])
                        conn.commit()
            assert caught.value.sqlstate in ("42P05", "26000")  # duplicate / missing prepared statement
    finally:
        single.stop()


def test_pooled_writer_shares_one_server_connection_without_errors(dsn, postgres, pools):
    """Four client connections through a one-connection pgBouncer: no prepared-statement error."""
    single = PgBouncer(postgres.dsn, pool_size=1)
    single.start()
    try:
        events = Events()
        requests = _recording(events)
        writer = PooledWriter(single.dsn, events, batch_size=20, pool_size=4)
        written = _write(writer, _telemetry(pools, engineers=2, writer_key=26))
    finally:
        single.stop()
    assert len(requests) > 5 * 4 and all(r["exception"] is None for r in requests)
    assert not writer.tally.failed
    assert sum(writer.tally.acknowledged.values()) == sum(len(lines) for lines in written.values())


def test_pgbouncer_with_a_password_dsn(postgres):
    """A DSN with a password: clients must give it (SCRAM); the trust-auth server still accepts pgBouncer."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS firehose_secret")
        conn.execute("CREATE ROLE firehose_secret LOGIN PASSWORD 'se cret\"'")
    bouncer = PgBouncer(f"{postgres.dsn} user=firehose_secret password='se cret\"'")
    bouncer.start()
    try:
        with psycopg.connect(bouncer.dsn, prepare_threshold=None) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "firehose_secret"
        wrong = bouncer.dsn.replace("se cret", "wrong")
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(wrong, prepare_threshold=None)
    finally:
        bouncer.stop()
    with pytest.raises(psycopg.OperationalError):  # stopped: nothing listens there any more
        psycopg.connect(bouncer.dsn, connect_timeout=2)
