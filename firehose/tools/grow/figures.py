"""What `firehose grow` reads from the server at each mark: the telemetry tables' size, rows inserted, WAL,
checkpoints, the buffer cache's hits and the bytes read from the operating system; and the difference of two.

Every figure is a cumulative counter or a size read in one look (`Counters.read`), so a phase's figures are the
difference of the looks that bound it (`Counters.since`). The tables are counted leaf by leaf
(`pg_partition_tree`: a plain table is its own one leaf), so one query serves both layouts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg

from telemetry.layout import TABLES

LEAVES = " UNION ALL ".join(
    f"SELECT oid AS relid FROM pg_class WHERE oid = '{table}'::regclass AND relkind = 'r'"
    f" UNION ALL SELECT relid FROM pg_partition_tree('{table}') WHERE isleaf"
    for table in TABLES
)
"""Every table that holds telemetry rows: the three plain tables, or their partitions."""
SIZES = f"""
SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint, coalesce(sum(pg_indexes_size(relid)), 0)::bigint,
       count(*) FILTER (WHERE pg_partition_root(relid) IS NOT NULL AND pg_relation_size(relid) > 0)::int
FROM ({LEAVES}) AS leaves
"""
"""Bytes of the tables (their TOAST included) and of their indexes, and how many partitions hold rows (their own
pages: an empty partition's TOAST table has an index page)."""
ROWS = f"SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables WHERE relid IN ({LEAVES})"
"""Rows inserted into the telemetry tables since the server's statistics began (a backend reports within ~1 s)."""
NEWEST = "SELECT max(start_time), (array_agg(trace_id ORDER BY event_id DESC))[1] FROM ({newest}) AS newest"
NEWEST_SPANS = "SELECT start_time, trace_id, event_id FROM spans ORDER BY event_id DESC LIMIT 1000"
"""The newest spans by event id (numbered as composed: a backward scan of the primary key, cheap in both layouts)."""
SHORTEST_PHASE_S = 0.5
"""A phase shorter than this has no rate: rows arrive by whole COPY batches, and a backend reports its inserts
within ~1 s (a mark passed by the first commits of a small --step)."""


def lsn_bytes(lsn: str) -> int:
    """A WAL position `X/Y` as bytes since the start of the WAL."""
    high, _, low = lsn.partition("/")
    return int(high, 16) << 32 | int(low, 16)


@dataclass(frozen=True)
class Counters:
    """One look at the server: sizes now and cumulative counters."""

    at: float
    """Monotonic seconds."""
    table_bytes: int
    index_bytes: int
    partitions: int
    rows: int
    wal_bytes: int
    checkpoints_timed: int
    checkpoints_requested: int
    blocks_hit: int
    blocks_read: int
    read_bytes: int
    """Bytes the server read from the operating system (page cache or disk): pg_stat_io, every backend type."""

    @property
    def size_bytes(self) -> int:
        """Tables and their indexes: what `--to` and `--step` measure."""
        return self.table_bytes + self.index_bytes

    @classmethod
    def read(cls, conn: psycopg.Connection) -> Counters:
        """Sizes and counters now (one look; `conn` in autocommit, so each statement sees the latest figures)."""
        conn.execute("SELECT pg_stat_clear_snapshot()")
        table_bytes, index_bytes, partitions = conn.execute(SIZES).fetchone()
        return cls(
            at=time.monotonic(),
            table_bytes=table_bytes,
            index_bytes=index_bytes,
            partitions=partitions,
            rows=conn.execute(ROWS).fetchone()[0],
            wal_bytes=lsn_bytes(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])),
            **dict(zip(("checkpoints_timed", "checkpoints_requested"), _checkpoints(conn), strict=True)),
            **dict(zip(("blocks_hit", "blocks_read"), _blocks(conn), strict=True)),
            read_bytes=_read_bytes(conn),
        )

    def since(self, before: Counters) -> dict:
        """The phase from `before` to this look: its length, rows and rows/s, WAL, checkpoints, hit ratio, reads."""
        seconds = self.at - before.at
        rows = self.rows - before.rows
        hit, read = self.blocks_hit - before.blocks_hit, self.blocks_read - before.blocks_read
        return {
            "seconds": round(seconds, 1),
            "rows": rows,
            "rows_per_s": round(rows / seconds, 1) if seconds >= SHORTEST_PHASE_S else None,
            "wal_bytes": self.wal_bytes - before.wal_bytes,
            "checkpoints_timed": self.checkpoints_timed - before.checkpoints_timed,
            "checkpoints_requested": self.checkpoints_requested - before.checkpoints_requested,
            "hit_ratio": round(hit / (hit + read), 4) if hit + read else None,
            "read_bytes": self.read_bytes - before.read_bytes,
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "size_bytes": self.size_bytes}


def newest_data(conn: psycopg.Connection) -> tuple[datetime | None, str | None]:
    """The newest span's time and the newest trace's id (None, None while spans is empty)."""
    return conn.execute(NEWEST.format(newest=NEWEST_SPANS)).fetchone()


def shared_buffers_bytes(conn: psycopg.Connection) -> int:
    """The server's shared_buffers in bytes."""
    setting, unit = conn.execute(
        "SELECT setting::bigint, unit FROM pg_settings WHERE name = 'shared_buffers'"
    ).fetchone()
    return setting * (8192 if unit == "8kB" else 1)


def _checkpoints(conn: psycopg.Connection) -> tuple[int, int]:
    """Checkpoints (timed, requested) since the statistics began: pg_stat_checkpointer from PostgreSQL 17."""
    if conn.info.server_version >= 170000:
        return conn.execute("SELECT num_timed, num_requested FROM pg_stat_checkpointer").fetchone()
    return conn.execute("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter").fetchone()


def _blocks(conn: psycopg.Connection) -> tuple[int, int]:
    return conn.execute(
        "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()


def _read_bytes(conn: psycopg.Connection) -> int:
    """pg_stat_io's reads in bytes (PostgreSQL 18 counts bytes; 16 and 17 count reads of op_bytes; 0 before 16)."""
    version = conn.info.server_version
    if version >= 180000:
        return conn.execute("SELECT coalesce(sum(read_bytes), 0)::bigint FROM pg_stat_io").fetchone()[0]
    if version >= 160000:
        return conn.execute("SELECT coalesce(sum(reads * op_bytes), 0)::bigint FROM pg_stat_io").fetchone()[0]
    return 0
