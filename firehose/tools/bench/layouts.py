"""COPY into partitioned tables against plain ones: what routing each row to its time's partition costs a writer.

The same rows (the bench's engineers, their last hour before a fixed time), composed beforehand, are written by
the COPY writer (writers.copy, as a CopyEngineer's process has it: its batch size and flushing connections) into a
database in each layout on the same server, back to back in every repetition (each layout first in turn), each
time into emptied tables after a checkpoint. The bench's own database is one of the two (its layout, `--layout`);
the other is a database of the bench's own beside it, `firehose_bench_<layout>`, created when missing (the role
needs CREATEDB) and emptied after.
Every row is counted in the database afterwards: a row refused (a time outside every partition) fails the part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import psycopg
from locust.event import Events
from psycopg import sql
from psycopg.conninfo import make_conninfo

from firehose.tools.bench.figures import BENCH_SEED, END_TO_END, Figure
from firehose.tools.bench.generator import ANCHOR_US
from firehose.tools.database import empty_tables
from services.postgres import LAYOUTS, apply_schema, create_partitions
from telemetry.generator import TRACE_SECONDS, WINDOW_S, EngineerTelemetry, EventIds, TraceRows, engineer_seed
from telemetry.layout import TABLES
from telemetry.pools import Pools
from users.queries import from_epoch_us
from writers.copy import CopyWriter

OTHER_DATABASE = "firehose_bench_{layout}"
"""The database of the layout the bench's own is not in, on the same server."""


def measure(
    dsn: str,
    layout: str,
    interval_s: int,
    pools: Pools,
    engineers: int,
    traces: int,
    repetitions: int,
    progress: Callable[[str], None] = print,
) -> dict:
    """Rows/s of the same COPY into each layout (the median of `repetitions`, interleaved), and the ratio."""
    other = next(name for name in LAYOUTS if name != layout)
    targets = {layout: dsn, other: other_database(dsn, other)}
    newest = from_epoch_us(ANCHOR_US)
    made = create_partitions(
        targets["partitioned"], newest - timedelta(seconds=WINDOW_S), newest + timedelta(seconds=TRACE_SECONDS),
        interval_s,
    )  # fmt: skip
    rows = compose(pools, engineers, traces)
    written = sum(map(len, rows))
    figures = {name: Figure() for name in LAYOUTS}
    try:
        for repetition in range(repetitions):
            for name in LAYOUTS if repetition % 2 == 0 else LAYOUTS[::-1]:  # interleaved, each first in turn
                figures[name].values.append(timed_copy(targets[name], rows, written))
                progress(f"COPY into {name} tables: {figures[name].values[-1]:,.0f} rows/s")
        with psycopg.connect(targets["partitioned"]) as conn:
            partitions = conn.execute(
                "SELECT count(*) FROM pg_partition_tree('spans') WHERE isleaf AND pg_relation_size(relid) > 0"
            ).fetchone()[0]
    finally:
        empty_tables(targets[other])
    return {
        "rows": written,
        "partition_interval_s": interval_s,
        "partitions_written": partitions,
        "partitions_made": len(made),
        "rows_per_s": {name: figure.as_dict() for name, figure in figures.items()},
        "ratio": figures["partitioned"].median / figures["plain"].median,
    }


def other_database(dsn: str, layout: str) -> str:
    """The DSN of the bench's database in `layout` on the server of `dsn`, created (with its schema) if missing."""
    name = OTHER_DATABASE.format(layout=layout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = make_conninfo(dsn, dbname=name)
    apply_schema(target, layout)
    return target


def compose(pools: Pools, engineers: int, traces: int) -> list[TraceRows]:
    """The bench's engineers' rows of the hour before ANCHOR_US, composed before any clock starts."""
    ids = EventIds(1)
    return [
        trace
        for ordinal in range(1, engineers + 1)
        for trace in EngineerTelemetry(
            pools, engineer_seed(BENCH_SEED, 0, ordinal), anchor_us=ANCHOR_US, traces=traces
        ).traces(ids)
    ]


def timed_copy(dsn: str, rows: list[TraceRows], written: int) -> float:
    """Empty the tables, COPY `rows` with the COPY writer, count them back; rows/s."""
    empty_tables(dsn)
    writer = CopyWriter(dsn, Events())  # its pool opens here, before the clock starts
    started = time.perf_counter()
    for trace in rows:
        writer.write(trace)
    writer.close()
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn) as conn:
        counted = sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)
    if counted != written:
        raise RuntimeError(f"COPY into {dsn}'s tables stored {counted:,} of {written:,} rows")
    return written / elapsed


def table_rows(layouts: dict) -> list[str]:
    """The headline table's row: partitioned over plain."""
    return [f"| **COPY into partitioned / plain tables** (same rows) | **{layouts['ratio']:.2f}** |"]


def markdown_lines(layouts: dict) -> list[str]:
    """The section: both layouts' rows/s and the ratio."""
    rates = layouts["rows_per_s"]
    return [
        f"COPY into each layout ({layouts['rows']:,} rows of the last hour, the COPY writer as {END_TO_END}'s "
        f"process has it; partitions of {layouts['partition_interval_s'] / 3600:g} h, "
        f"{layouts['partitions_written']} of them written per table; same server, back to back):",
        "",
        "| layout | rows/s |",
        "|---|--:|",
        f"| plain | {Figure(rates['plain']['values']).text()} |",
        f"| partitioned | {Figure(rates['partitioned']['values']).text()} |",
        f"| **partitioned / plain** | **{layouts['ratio']:.2f}** |",
    ]
