"""What the tools do to the target database between runs."""

from __future__ import annotations

import argparse
import logging
import re
from datetime import datetime

import psycopg
from psycopg import sql

from services.postgres import LAYOUTS, add_embedded_arguments, apply_schema, create_partitions, redact
from telemetry.durations import parse_duration
from telemetry.layout import TABLES

logger = logging.getLogger("firehose")

TABLES_TO_EMPTY = (*TABLES, "quarantine")
FIREHOSE_TABLES = frozenset(
    {*TABLES_TO_EMPTY, "firehose_runs", "firehose_writer_keys", "firehose_run_summaries", "firehose_datasets"}
)
"""The tables firehose creates: a database holding any other is someone else's, and is not emptied unasked."""
DEFAULT_PARTITION_INTERVAL = "1d"
"""As a run's --partition-interval: one partition a day."""


def empty_tables(dsn: str) -> None:
    """Give the next run empty tables, and a checkpoint so it does not pay for the previous run's writes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES_TO_EMPTY))))
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            logger.info("no privilege to CHECKPOINT between runs: a run may pay for the previous one's writes")


_PARTITION = re.compile(r"(spans|metrics|logs)_p\d{8}_\d{4}")
"""A partition of a telemetry table, as firehose_create_partitions names it."""


def foreign_tables(conn: psycopg.Connection) -> list[str]:
    """Tables of the database that firehose did not create (outside the system schemas): the telemetry tables'
    partitions (schema/partitioned.sql names them <table>_pYYYYMMDD_HHMI), attached or detached, are firehose's.
    Other sessions' temporary tables are not the database's (e.g. a running writer's retry staging tables)."""
    rows = conn.execute(
        "SELECT schemaname || '.' || tablename, tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg\\_temp\\_%'"
    ).fetchall()
    return sorted(
        qualified for qualified, table in rows if table not in FIREHOSE_TABLES and not _PARTITION.fullmatch(table)
    )


def refusal_to_empty(dsn: str, tool: str, yes: bool) -> str | None:
    """The one line a tool that empties tables refuses with, when the database holds tables that are not
    firehose's and the user did not say --yes; None when it may go ahead."""
    if yes:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        others = foreign_tables(conn)
    if not others:
        return None
    return (
        f"firehose {tool}: {redact(dsn)} holds tables that are not firehose's ({', '.join(others)}): "
        "refusing to empty tables or drop indexes there without --yes"
    )


def add_empty_arguments(parser: argparse.ArgumentParser) -> None:
    """`--yes`: the option of every tool that empties tables (see `refusal_to_empty`)."""
    parser.add_argument(
        "--yes", action="store_true", help="Empty the tables even if the database holds tables that are not firehose's."
    )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The database a tool empties and loads: --pg-dsn, else PG*, else the embedded server (--embedded-port,
    --embedded-data-dir)."""
    add_empty_arguments(parser)
    parser.add_argument(
        "--pg-dsn", default=None, help="Target PostgreSQL (default: the PG* variables, else the embedded server)."
    )
    add_embedded_arguments(parser)


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """`--layout` and `--partition-interval`, as a run takes them: the layout of the tables a tool loads and its
    Locust runs write (see `layout_arguments`)."""
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="plain",
        help="The telemetry tables: plain, or range-partitioned on time (docs/partitioning.md) (default: plain).",
    )
    parser.add_argument(
        "--partition-interval",
        default=DEFAULT_PARTITION_INTERVAL,
        help="With --layout partitioned: the time each partition holds, e.g. 1d, 1h (default: %(default)s).",
    )


def layout_arguments(args: argparse.Namespace) -> list[str]:
    """A tool's --layout and --partition-interval for its Locust runs (none on the plain layout, the runs' default)."""
    if args.layout == "plain":
        return []
    return ["--layout", args.layout, "--partition-interval", args.partition_interval]


def prepare_layout(dsn: str, layout: str, interval: str, start: datetime, end: datetime) -> list[str]:
    """The telemetry tables in a tool's --layout (LayoutMismatch when the database has the other one) and, on the
    partitioned layout, the partitions of --partition-interval `interval` for [start, end) that were missing,
    created (returned)."""
    apply_schema(dsn, layout)
    if layout == "plain":
        return []
    return create_partitions(dsn, start, end, parse_duration(interval))
