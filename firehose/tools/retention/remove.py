"""Removing the telemetry older than a cutoff, the two ways, and what the database shows of it.

Partitioned layout: each partition wholly older than the cutoff is detached with `ALTER TABLE ... DETACH PARTITION
... CONCURRENTLY` (PostgreSQL 14+: it never holds an ACCESS EXCLUSIVE lock on the parent, so writers go on), then
dropped. A detach interrupted between its two transactions leaves the partition "detach pending"; it is finished
with `ALTER TABLE ... DETACH PARTITION ... FINALIZE` (`finish_interrupted_detaches`) before anything else.
Plain layout: `DELETE ... WHERE <time> < cutoff` of the same rows, one statement per table, then the VACUUM that
turns the dead tuples into free space.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from telemetry.layout import TABLES

TIME_COLUMN = {"spans": "start_time", "metrics": "time", "logs": "time"}
"""Each telemetry table's time column: its partition key in the partitioned layout (schema/partitioned.sql)."""
_PARTITIONS = """
SELECT child.relname,
       (regexp_match(pg_get_expr(child.relpartbound, child.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
       inherits.inhdetachpending
  FROM pg_inherits inherits JOIN pg_class child ON child.oid = inherits.inhrelid
 WHERE inherits.inhparent = %s::regclass
 ORDER BY 2
"""


_TABLE_STATS = """
WITH leaves AS (
    SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf
    UNION ALL  -- a plain table: pg_partition_tree has no row for it
    SELECT %(table)s::regclass WHERE NOT EXISTS (SELECT FROM pg_partition_tree(%(table)s::regclass))
)
SELECT coalesce(sum(pg_total_relation_size(leaves.relid)), 0)::bigint, coalesce(sum(stat.n_live_tup), 0)::bigint,
       coalesce(sum(stat.n_dead_tup), 0)::bigint, (SELECT count(*) FROM pg_partition_tree(%(table)s::regclass)
                                                    WHERE isleaf)
  FROM leaves LEFT JOIN pg_stat_user_tables stat ON stat.relid = leaves.relid
"""


@dataclass(frozen=True)
class Partition:
    """One partition of a telemetry table: its name and the upper bound of its range (exclusive)."""

    table: str
    name: str
    upper: datetime
    detach_pending: bool = False


def partitions(conn: psycopg.Connection, table: str) -> list[Partition]:
    """`table`'s partitions, oldest first (none for a plain table)."""
    return [Partition(table, name, upper, pending) for name, upper, pending in conn.execute(_PARTITIONS, [table])]


def partitions_older_than(conn: psycopg.Connection, cutoff: datetime) -> list[Partition]:
    """The partitions of every telemetry table whose whole range is older than `cutoff`."""
    return [part for table in TABLES for part in partitions(conn, table) if part.upper <= cutoff]


def finish_interrupted_detaches(conn: psycopg.Connection) -> list[Partition]:
    """`DETACH PARTITION ... FINALIZE` of every partition a DETACH ... CONCURRENTLY left pending (cancelled, or its
    connection lost between its two transactions); returns them, standalone tables now."""
    pending = [part for table in TABLES for part in partitions(conn, table) if part.detach_pending]
    for part in pending:
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                sql.Identifier(part.table), sql.Identifier(part.name)
            )
        )
    return pending


def detach_and_drop(conninfo: str, cutoff: datetime) -> dict:
    """Detach (CONCURRENTLY) and drop each partition wholly older than `cutoff`, a pending detach finished first;
    returns the partitions dropped per table, and the seconds spent detaching and dropping (in all, and the
    slowest detach: each waits for every transaction that uses the parent to end, the writers' included)."""
    dropped, detach_s, drop_s, slowest_detach_s = dict.fromkeys(TABLES, 0), 0.0, 0.0, 0.0
    with psycopg.connect(conninfo, autocommit=True) as conn:  # DETACH ... CONCURRENTLY refuses a transaction block
        leftovers = [part for part in finish_interrupted_detaches(conn) if part.upper <= cutoff]
        for part in [*leftovers, *partitions_older_than(conn, cutoff)]:
            start = time.perf_counter()
            if part not in leftovers:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                        sql.Identifier(part.table), sql.Identifier(part.name)
                    )
                )
            detached = time.perf_counter()
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
            dropped[part.table] += 1
            detach_s, drop_s = detach_s + detached - start, drop_s + time.perf_counter() - detached
            slowest_detach_s = max(slowest_detach_s, detached - start)
    return {"partitions": dropped, "detach_s": round(detach_s, 3), "drop_s": round(drop_s, 3),
            "slowest_detach_s": round(slowest_detach_s, 3)}  # fmt: skip


def delete_older(conninfo: str, cutoff: datetime) -> dict[str, int]:
    """`DELETE FROM <table> WHERE <time> < cutoff`, one table at a time (each its own transaction); rows deleted."""
    deleted = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in TABLES:
            cursor = conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                    sql.Identifier(table), sql.Identifier(TIME_COLUMN[table])
                ),
                [cutoff],
            )
            deleted[table] = cursor.rowcount
        conn.execute("SELECT pg_stat_force_next_flush()")  # the dead tuples show at once in pg_stat_user_tables
        conn.execute("SELECT 1")  # (flushed as the backend went idle before this)
    return deleted


def vacuum(conninfo: str) -> None:
    """Plain VACUUM of the telemetry tables: what a DELETE's dead tuples need before their space is reused."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))


def rows_older_than(conninfo: str, cutoff: datetime) -> dict[str, int]:
    """Rows of each telemetry table whose time is before `cutoff` (what a retention to `cutoff` removes)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(
                    sql.Identifier(table), sql.Identifier(TIME_COLUMN[table])
                ),
                [cutoff],
            ).fetchone()[0]
            for table in TABLES
        }


def wal_lsn(conninfo: str) -> str:
    """The server's WAL position now (pg_current_wal_lsn)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_bytes(conninfo: str, since: str, until: str) -> int:
    """WAL bytes between two positions (pg_wal_lsn_diff)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [until, since]).fetchone()[0])


def table_stats(conninfo: str) -> dict[str, dict[str, int]]:
    """Per telemetry table, summed over its partitions: bytes (pg_total_relation_size: heap, TOAST, indexes), live
    and dead tuples (pg_stat_user_tables, as the statistics collector last heard), partitions."""
    stats = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in TABLES:
            bytes_, live, dead, leaves = conn.execute(_TABLE_STATS, {"table": table}).fetchone()
            stats[table] = {"bytes": bytes_, "live_tuples": live, "dead_tuples": dead, "partitions": leaves}
    return stats
