"""The partitioned layout's DDL (schema/partitioned.sql) on a real PostgreSQL: partitions made ahead, aligned and
idempotent, the primary key holding the time (an event id stored once per time), a row outside every partition
refused alone (SQLSTATE 23514), and a database in one layout refused for the other, naming the fix."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.postgres import LayoutMismatch, apply_schema, create_partitions
from telemetry.layout import TABLES

pytestmark = pytest.mark.slow

DAY = timedelta(days=1)
NOON = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _partitions(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY 1",
        [table],
    ).fetchall()


def test_partitions_are_made_ahead_aligned_once_and_refuse_a_row_outside_them(partitioned_dsn):
    made = create_partitions(partitioned_dsn, NOON - DAY, NOON + timedelta(hours=1), 86_400)
    assert sorted(made) == sorted(f"{t}_p{day}_0000" for t in TABLES for day in ("20260531", "20260601"))
    assert create_partitions(partitioned_dsn, NOON - DAY, NOON, 86_400) == []  # idempotent
    with psycopg.connect(partitioned_dsn) as conn:
        bound = dict(_partitions(conn, "logs"))["logs_p20260601_0000"]  # other tests' partitions stay in the session
        assert bound == "FOR VALUES FROM ('2026-06-01 00:00:00+00') TO ('2026-06-02 00:00:00+00')"
        insert = "INSERT INTO logs VALUES (%s, %s, 9, 'INFO', 'svc', NULL, NULL, 'b', '{}') ON CONFLICT DO NOTHING"
        conn.execute(insert, [1, NOON])
        conn.execute(insert, [1, NOON])  # the same event at the same time: stored once
        assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.CheckViolation) as refused:  # no DEFAULT partition takes it
            conn.execute(insert, [2, NOON + 2 * DAY])
        assert refused.value.sqlstate == "23514"


def test_a_database_in_one_layout_is_refused_for_the_other(partitioned_dsn, dsn):
    with pytest.raises(LayoutMismatch, match=r"partitioned, not plain: run with --layout partitioned.*reset"):
        apply_schema(partitioned_dsn, "plain")
    with pytest.raises(LayoutMismatch, match=r"plain, not partitioned"):
        apply_schema(dsn, "partitioned")
    apply_schema(partitioned_dsn, "partitioned")
    apply_schema(dsn, "plain")
