"""The partitioned layout's DDL (schema/partitioned.sql) on a real PostgreSQL: partitions made ahead, aligned and
idempotent, the primary key holding the time (an event id stored once per time), a row outside every partition
refused alone (SQLSTATE 23514), and a database in one layout refused for the other, naming the fix."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.postgres import LayoutMismatch, apply_schema, create_partitions
from tests.conftest import load_summary, run_locust
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


def test_partitions_of_another_width_are_kept_and_only_their_gaps_filled(partitioned_dsn):
    """A run with another --partition-interval than an earlier one's: hourly partitions next to a day's partition
    make no overlap error; a day asked over hourly partitions gets its gaps; every hour of the range then has one
    partition, and a row at any time in it is stored."""
    day = datetime(2026, 7, 1, tzinfo=UTC)
    create_partitions(partitioned_dsn, day, day + timedelta(hours=1), 86_400)  # July 1st, one day wide
    made = create_partitions(partitioned_dsn, day + timedelta(hours=22), day + timedelta(hours=26), 3_600)
    assert sorted(made) == sorted(f"{t}_p20260702_{hh}00" for t in TABLES for hh in ("00", "01"))
    create_partitions(partitioned_dsn, day + timedelta(days=2, hours=5), day + timedelta(days=2, hours=6), 3_600)
    made = create_partitions(partitioned_dsn, day + 2 * DAY, day + 3 * DAY, 86_400)  # July 3rd, around its 05:00
    assert sorted(made) == sorted(f"{t}_p20260703_{hhmm}" for t in TABLES for hhmm in ("0000", "0600"))
    with psycopg.connect(partitioned_dsn) as conn:
        assert dict(_partitions(conn, "spans"))["spans_p20260703_0000"] == (
            "FOR VALUES FROM ('2026-07-03 00:00:00+00') TO ('2026-07-03 05:00:00+00')"
        )
        insert = "INSERT INTO logs VALUES (%s, %s, 9, 'INFO', 'svc', NULL, NULL, 'b', '{}')"
        hours = [day + timedelta(hours=h, minutes=30) for h in (*range(0, 26), *range(48, 72))]
        for event_id, time in enumerate(hours):
            conn.execute(insert, [event_id, time])
        assert conn.execute("SELECT count(*) FROM logs WHERE time >= %s", [day]).fetchone()[0] == len(hours)


def test_a_database_in_one_layout_is_refused_for_the_other(partitioned_dsn, dsn):
    with pytest.raises(LayoutMismatch, match=r"partitioned, not plain: run with --layout partitioned.*reset"):
        apply_schema(partitioned_dsn, "plain")
    with pytest.raises(LayoutMismatch, match=r"plain, not partitioned"):
        apply_schema(dsn, "partitioned")
    apply_schema(partitioned_dsn, "partitioned")
    apply_schema(dsn, "plain")


def test_live_timestamps_move_forward_through_partitions_made_ahead(partitioned_dsn, tmp_path):
    """--timestamps live at --time-scale 3600 (a second stands for an hour) on hourly partitions: the rows carry
    their write time, so a run of a few seconds spans several partitions, every one made before a row needed it
    (lost 0, failed 0), and the summary names the layout."""
    path, before = tmp_path / "summary.json", datetime.now(UTC)
    result = run_locust(
        "CopyEngineer", "-u", "2", "-r", "2", "--traces-per-engineer", "40", "--engineer-rate", "200",
        "--layout", "partitioned", "--partition-interval", "1h", "--timestamps", "live", "--time-scale", "3600",
        "--pg-dsn", partitioned_dsn, "--summary-json", str(path),
    )  # fmt: skip
    summary = load_summary(path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["run"]["layout"] == "partitioned" and summary["context"]["timestamps"] == "live"
    events = summary["events"]
    assert events["lost"] == 0 and events["failed"] == 0 and events["in_database"] == events["generated"] > 0
    with psycopg.connect(partitioned_dsn) as conn:
        first, last, hours = conn.execute(
            "SELECT min(start_time), max(start_time), count(DISTINCT date_trunc('hour', start_time)) FROM spans"
        ).fetchone()
    assert hours >= 3, f"{first} .. {last}: time did not move forward through the hourly partitions"
    assert first >= before - timedelta(seconds=5), "live rows start at the run's start, not in --history before it"


def test_a_run_in_the_other_layout_is_refused_naming_the_fix(partitioned_dsn):
    result = run_locust("CopyEngineer", "-u", "1", "-r", "1", "--traces-per-engineer", "1", "--pg-dsn", partitioned_dsn,
                        "--layout", "plain")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "tables are partitioned, not plain: run with --layout partitioned" in result.stderr
