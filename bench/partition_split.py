"""What a row whose time has no partition costs its batch, and what counting duplicates on every table costs the
reconciliation: the measurement behind docs/partitioning.md's figures, as ratios within one run.

    .venv/bin/python bench/partition_split.py [--rows 5000] [--repeat 7] [--count-rows 500000]

On a server of its own (the embedded PostgreSQL, a scratch data directory, the seed's settings):
1. A CopyWriter's `send` of one batch of `--rows` log rows on the partitioned layout, clean against with 1 and with
   100 rows outside every partition (refused COPY, the partition check, the COPY of the rest): median of
   `--repeat`, each on emptied tables.
2. The reconciliation's count (`firehose.run.summary.count_in_database`) over `--count-rows` rows of each table,
   against the count it replaced (rows per writer key, and repeated (trace_id, span_id) on spans only).
Prints a Markdown table.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from locust.event import Events
from psycopg.conninfo import make_conninfo

from firehose.run.summary import count_in_database
from services.ports import free_port
from services.postgres import EmbeddedPostgres, apply_schema, create_partitions
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import COLUMNS, TABLES, TIME_COLUMN
from telemetry.pools import Pools
from writers.copy import CopyWriter

ANCHOR = datetime(2026, 3, 10, 12, tzinfo=UTC)
OUTSIDE = "2001-01-01 00:00:00+00"
WRITER_KEY = 5
SHIFT = 2**20
"""Event ids the sample's copies are moved by: past the sample's own (a few 10,000s), within the key's 2**32."""
OLD_COUNT = """
SELECT k.writer_key, count(t.event_id) FROM firehose_writer_keys AS k
LEFT JOIN {table} AS t ON t.event_id >= k.writer_key << 32 AND t.event_id < (k.writer_key + 1) << 32
WHERE k.run_id = %s GROUP BY k.writer_key
"""
OLD_DUPLICATES = """
SELECT count(*) - count(DISTINCT (t.trace_id, t.span_id)) FROM spans AS t
JOIN firehose_writer_keys AS k ON t.event_id >= k.writer_key << 32 AND t.event_id < (k.writer_key + 1) << 32
WHERE k.run_id = %s
"""


def rows_of(pools: Pools, table: str, count: int) -> list[str]:
    """`count` generated rows of `table`, their times in the hour before ANCHOR."""
    telemetry = EngineerTelemetry(pools, seed=1, anchor_us=int(ANCHOR.timestamp() * 1e6), traces=10**9)
    ids, rows = EventIds(WRITER_KEY), []
    while len(rows) < count:
        rows += getattr(telemetry.trace(ids), table)
    return rows[:count]


def outside(lines: list[str], table: str, every: int) -> list[str]:
    """`lines` with the time of every `every`-th row moved out of every partition."""
    position = COLUMNS[table].index(TIME_COLUMN[table])
    moved = []
    for number, line in enumerate(lines):
        if number % every == every // 2:
            values = line[:-1].split("\t")
            values[position] = OUTSIDE
            line = "\t".join(values) + "\n"
        moved.append(line)
    return moved


def time_sends(dsn: str, lines: list[str], repeat: int) -> float:
    """Median seconds of one CopyWriter `send` of `lines` (logs), each on an emptied table."""
    writer = CopyWriter(dsn, Events(), pool_size=1)
    seconds = []
    for _ in range(repeat):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE logs")
        start = time.perf_counter()
        writer.send("logs", lines)
        seconds.append(time.perf_counter() - start)
    writer.close()
    return statistics.median(seconds)


def time_counts(dsn: str, pools: Pools, rows: int) -> tuple[float, float]:
    """Seconds of the reconciliation's count over `rows` rows of each table: the new one, the one it replaced."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_id = conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (0, 'bench') RETURNING run_id").fetchone()
        conn.execute("INSERT INTO firehose_writer_keys (writer_key, run_id) VALUES (%s, %s)", [WRITER_KEY, run_id[0]])
        for table in TABLES:
            sample = rows_of(pools, table, 5_000)
            with conn.cursor().copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
                copy.write("".join(sample))
            others = ", ".join(COLUMNS[table][1:])  # the sample again under further event ids of the same key
            conn.execute(
                f"INSERT INTO {table} SELECT event_id + n * %s, {others} FROM {table}, generate_series(1, %s) AS n",
                [SHIFT, rows // 5_000 - 1],
            )
        conn.execute("VACUUM ANALYZE")
        count_in_database(dsn, run_id[0])  # warm the cache for both
        start = time.perf_counter()
        count_in_database(dsn, run_id[0])
        new = time.perf_counter() - start
        start = time.perf_counter()
        for table in TABLES:
            conn.execute(OLD_COUNT.format(table=table), run_id).fetchall()
        conn.execute(OLD_DUPLICATES, run_id).fetchone()
        return new, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000, help="Rows of the COPY batch (the COPY strategy's).")
    parser.add_argument("--repeat", type=int, default=7, help="Sends timed per case (the median is shown).")
    parser.add_argument("--count-rows", type=int, default=500_000, help="Rows per table the count runs over.")
    args = parser.parse_args()
    pools = Pools.build(0)
    with tempfile.TemporaryDirectory(prefix="firehose-partition-split-") as scratch:
        server = EmbeddedPostgres(Path(scratch) / "data", port=free_port())
        server.start()
        try:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE partitioned")
            partitioned = make_conninfo(server.dsn, dbname="partitioned")
            apply_schema(partitioned, "partitioned")
            create_partitions(partitioned, ANCHOR - timedelta(days=1), ANCHOR + timedelta(days=1), 86_400)
            lines = rows_of(pools, "logs", args.rows)
            clean = time_sends(partitioned, lines, args.repeat)
            one = time_sends(partitioned, outside(lines, "logs", args.rows), args.repeat)
            hundred = time_sends(partitioned, outside(lines, "logs", args.rows // 100), args.repeat)
            new, old = time_counts(server.dsn, pools, args.count_rows)
        finally:
            server.stop()
    print("| case | seconds | ratio |\n|---|---|---|")
    print(f"| a clean batch of {args.rows:,} log rows | {clean:.3f} | 1.00 |")
    print(f"| the same, 1 row outside every partition | {one:.3f} | {one / clean:.2f} |")
    print(f"| the same, 100 rows outside every partition | {hundred:.3f} | {hundred / clean:.2f} |")
    print(f"| reconciliation count, {args.count_rows:,} rows a table: before (spans' pairs) | {old:.3f} | 1.00 |")
    print(f"| reconciliation count: repeated event ids on all three tables | {new:.3f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
