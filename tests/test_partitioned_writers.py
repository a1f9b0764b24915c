"""Every strategy's writer on the partitioned layout (schema/partitioned.sql), against a real PostgreSQL, pgBouncer
and Redis: a row whose time has no partition is split out of its batch and counted as failed (quarantined with the
reason on the validated path) while the batch's other rows commit; a retried batch stores nothing twice; the
reconciliation's duplicate count sees a row stored twice (the same event id at another time) on every table; and
the duplicate-id fault, carrying its donor's time, is refused by the primary key on both layouts."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from locust.event import Events

from firehose.run.summary import count_in_database
from services.pgbouncer import PgBouncer
from services.postgres import create_partitions
from services.redis_server import LocalRedis
from telemetry.faults import corrupt_row
from telemetry.generator import EngineerTelemetry, EventIds, TraceRows
from telemetry.layout import COLUMNS, TABLES, TIME_COLUMN, copy_statement
from writers.batched import BatchedWriter
from writers.copy import CopyWriter, copy_data, copy_deduplicated, copy_rows
from writers.naive import NaiveWriter
from writers.delivery import open_pool
from writers.partitions import outside_reason, rows_outside_partitions
from writers.pooled import PooledWriter
from writers.stream import StreamWriter
from writers.validated import ValidatedCopyWriter
from writers.valve import ValveWriter
from tests.conftest import load_summary, run_locust

pytestmark = pytest.mark.slow

ANCHOR = datetime(2026, 3, 10, 12, tzinfo=UTC)
"""The rows' times end here (the generator's window: the hour before); the tests make the partitions around it."""
OUTSIDE = "2001-01-01 00:00:00+00"
"""A time no partition takes: no test makes partitions in 2001."""
TRACES = 3
"""Traces written per test: ~60 rows, each table's in one batch of every batching strategy."""
WRITER_KEY = 41

WRITERS = {
    "copy": lambda dsn, services: CopyWriter(dsn, Events(), pool_size=1),
    "batched": lambda dsn, services: BatchedWriter(dsn, Events(), pool_size=1),
    "naive": lambda dsn, services: NaiveWriter(dsn, Events(), pool_size=1),
    "pooled": lambda dsn, services: PooledWriter(services.bouncer(dsn), Events(), pool_size=1),
    "stream": lambda dsn, services: StreamWriter(dsn, Events(), redis_url=services.redis(), run_id=1, consumers=1),
    "valve": lambda dsn, services: ValveWriter(
        dsn, Events(), redis_url=services.redis(), run_id=1, spool=services.spool, max_spool=2**30, consumers=1
    ),
    "validated": lambda dsn, services: ValidatedCopyWriter(dsn, Events(), run_id=1, pool_size=1),
}


class Services:
    """pgBouncer and Redis, started on first use by the strategies that write through them, stopped after the
    module."""

    def __init__(self, spool) -> None:
        self.spool = spool
        self._bouncers: dict[str, PgBouncer] = {}
        self._redis: LocalRedis | None = None

    def bouncer(self, dsn: str) -> str:
        if dsn not in self._bouncers:
            self._bouncers[dsn] = PgBouncer(dsn, pool_size=1)
            self._bouncers[dsn].start()
        return self._bouncers[dsn].dsn

    def redis(self) -> str:
        if self._redis is None:
            self._redis = LocalRedis()
            self._redis.start()
        client = redis.Redis.from_url(self._redis.url)
        client.flushall()
        client.close()
        return self._redis.url

    def stop(self) -> None:
        for bouncer in self._bouncers.values():
            bouncer.stop()
        if self._redis is not None:
            self._redis.stop()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    started = Services(tmp_path_factory.mktemp("spool"))
    yield started
    started.stop()


@pytest.fixture
def partitioned(partitioned_dsn):
    """The partitioned database with partitions for the day around ANCHOR (and none in 2001)."""
    create_partitions(partitioned_dsn, ANCHOR - timedelta(days=1), ANCHOR + timedelta(days=1), 86_400)
    return partitioned_dsn


def _traces(pools) -> list[TraceRows]:
    anchor_us = int(ANCHOR.timestamp() * 1_000_000)
    telemetry = EngineerTelemetry(pools, seed=3, anchor_us=anchor_us, traces=TRACES)
    return list(telemetry.traces(EventIds(WRITER_KEY)))


def _time_of(table: str, line: str) -> str:
    return line[:-1].split("\t")[COLUMNS[table].index(TIME_COLUMN[table])]


def _with_time(table: str, line: str, time: str) -> str:
    values = line[:-1].split("\t")
    values[COLUMNS[table].index(TIME_COLUMN[table])] = time
    return "\t".join(values) + "\n"


def _event_id(line: str | bytes) -> int:
    return int(line.split("\t" if isinstance(line, str) else b"\t", 1)[0])


def _stored(dsn: str, table: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {event_id for (event_id,) in conn.execute(f"SELECT event_id FROM {table}")}


@pytest.mark.parametrize("strategy", WRITERS)
def test_a_row_outside_every_partition_fails_alone_and_its_batch_commits(partitioned, services, pools, strategy):
    traces = _traces(pools)
    outside = {}  # per table: the one row moved out of every partition (the second trace's second row)
    for table in TABLES:
        lines = getattr(traces[1], table)
        lines[1] = _with_time(table, lines[1], OUTSIDE)
        outside[table] = _event_id(lines[1])
    writer = WRITERS[strategy](partitioned, services)
    for rows in traces:
        writer.write(rows)
    writer.close()

    for table in TABLES:
        written = {_event_id(line) for rows in traces for line in getattr(rows, table)}
        assert _stored(partitioned, table) == written - {outside[table]}, table
        assert writer.tally.acknowledged[table] == len(written) - 1, table
    if strategy == "validated":  # its rule: every row in its table or in the quarantine, with the reason
        assert writer.tally.quarantined == dict.fromkeys(TABLES, 1) and not writer.tally.failed
        with psycopg.connect(partitioned) as conn:
            kept = conn.execute("SELECT table_name, reason, row_data FROM quarantine").fetchall()
        assert sorted((table, reason, _event_id(bytes(row))) for table, reason, row in kept) == sorted(
            (table, outside_reason(table), outside[table]) for table in TABLES
        )
    else:
        assert writer.tally.failed == dict.fromkeys(TABLES, 1) and not writer.tally.quarantined


def test_only_the_partitioned_layout_splits_a_check_violation(dsn, partitioned, pools):
    """A CHECK constraint raises the same SQLSTATE: on a table that is not partitioned no row is split out."""
    lines = [_with_time("logs", line, OUTSIDE) for line in _traces(pools)[0].logs]
    refusal = psycopg.errors.CheckViolation("refused")
    for conninfo, outside in ((dsn, []), (partitioned, list(range(len(lines))))):
        writer = CopyWriter(conninfo, Events(), pool_size=1)
        with open_pool(conninfo, 1, "check") as pool:
            assert rows_outside_partitions(writer, pool, "logs", lines, refusal) == outside
            assert rows_outside_partitions(writer, pool, "logs", lines, psycopg.errors.UniqueViolation()) == []
        writer.close()


def test_a_retried_batch_stores_nothing_twice_and_a_forced_duplicate_is_counted(partitioned, pools):
    traces = _traces(pools)
    with psycopg.connect(partitioned) as conn:
        run_id = conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (0, 'test') RETURNING run_id").fetchone()
        conn.execute("INSERT INTO firehose_writer_keys (writer_key, run_id) VALUES (%s, %s)", [WRITER_KEY, run_id[0]])
        for table in TABLES:
            data = copy_data([line for rows in traces for line in getattr(rows, table)])
            copy_rows(conn, copy_statement(table), data)
            assert copy_deduplicated(conn, table, data) == 0  # the retry of a batch that had committed
    counts, duplicates = count_in_database(partitioned, run_id[0])
    stored = {table: sum(len(getattr(rows, table)) for rows in traces) for table in TABLES}
    assert counts == {WRITER_KEY: stored} and duplicates == 0
    with psycopg.connect(partitioned) as conn:
        for table in TABLES:  # the first row again, an hour later (another time: the primary key lets it in)
            line = getattr(traces[0], table)[0]
            later = conn.execute("SELECT (%s::timestamptz + interval '1 hour')::text", [_time_of(table, line)])
            copy_rows(conn, copy_statement(table), copy_data([_with_time(table, line, later.fetchone()[0])]))
    assert count_in_database(partitioned, run_id[0])[1] == len(TABLES)


@pytest.mark.parametrize("layout", ["plain", "partitioned"])
def test_the_duplicate_id_fault_is_refused_by_the_primary_key(request, pools, layout):
    dsn = request.getfixturevalue("dsn" if layout == "plain" else "partitioned")
    traces = _traces(pools)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            donor, other = getattr(traces[0], table)[0], getattr(traces[1], table)[0]
            copy_rows(conn, copy_statement(table), copy_data([donor]))
            duplicate = corrupt_row(table, other, "duplicate_id", donor=donor)
            with pytest.raises(psycopg.errors.UniqueViolation):
                copy_rows(conn, copy_statement(table), copy_data([duplicate]))


ENGINEERS = (
    "CopyEngineer", "BatchedEngineer", "NaiveEngineer", "PooledEngineer", "StreamEngineer", "ValveEngineer",
    "ValidatedCopyEngineer",
)  # fmt: skip
"""Every writing class, one user each, in one run per layout."""


@pytest.mark.parametrize("layout", ["plain", "partitioned"])
def test_every_strategy_at_once_reconciles_on_each_layout(request, tmp_path, layout):
    dsn = request.getfixturevalue("dsn" if layout == "plain" else "partitioned_dsn")
    summary = tmp_path / "summary.json"
    result = run_locust(
        *ENGINEERS, "-u", str(len(ENGINEERS)), "-r", str(len(ENGINEERS)), "-t", "60s", "--traces-per-engineer", "3",
        "--layout", layout, "--pg-dsn", dsn, "--valve-spool", str(tmp_path / "spool"), "--summary-json", str(summary),
        # The validated class corrupts a share of its rows, duplicate ids among them, in batches small enough that a
        # duplicate meets its donor's committed row: the primary key must refuse it (it carries the donor's time).
        "--malformed-share", "0.5", "--validated-batch-size", "5", "--seed", "1", "--exit-code-on-error", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = load_summary(summary)
    assert summary["run"]["layout"] == layout
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["quarantined"] > 0 and events["generated"] > len(ENGINEERS) * 3 * 15, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] - events["quarantined"], events
