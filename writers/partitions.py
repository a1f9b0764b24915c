"""Rows whose time no partition takes, split out of a batch the server refused, so that only they fail.

On the partitioned layout (schema/partitioned.sql, no DEFAULT partition) a row whose time has no partition is
refused with SQLSTATE 23514 ("no partition of relation ... found for row"), and with it its whole COPY or INSERT.
Every writer then asks the server, in one round trip, which rows of the batch no partition takes
(`rows_outside_partitions`): each row's time is tested against the partition constraint of every leaf partition
(`pg_get_partition_constraintdef`), so bounds of any shape work, whoever made the partitions. The writer counts
those rows as failed (the validated path quarantines them with the reason) and sends the others again: a batch
never fails whole for a few rows out of range.

A CHECK constraint raises the same SQLSTATE: then no row is outside, and the refusal stands for the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from telemetry.layout import COLUMNS, NULL, TIME_COLUMN
from writers.delivery import Connections, Outcome, SetupError

if TYPE_CHECKING:
    from writers.base import Writer

logger = logging.getLogger("firehose")

CHECK_VERB = "SELECT"
"""The check's request type in Locust's statistics (its name: the table)."""
REASON = 'no partition of relation "{table}" takes its {column} [SQLSTATE 23514]'
"""Why a row was split out (the validated path's quarantine reason)."""

_PARTITIONED = "SELECT relkind = 'p' FROM pg_class WHERE oid = %s::regclass"
_LEAF_CONSTRAINTS = (
    "SELECT pg_get_partition_constraintdef(relid) FROM pg_partition_tree(%s::regclass) WHERE isleaf ORDER BY relid"
)


def rows_outside_partitions(
    writer: Writer, pool: Connections, table: str, rows: Sequence[str | bytes], error: Exception | None
) -> list[int]:
    """The positions in `rows` (COPY text rows of `table`) of those whose time no partition of `table` takes, after
    the server refused them with `error`; [] when the refusal is not SQLSTATE 23514, the table is not partitioned,
    or every row has its partition (a CHECK constraint refused them: the refusal stands)."""
    if not isinstance(error, psycopg.errors.CheckViolation):  # SQLSTATE 23514
        return []
    times = [_time_of(table, row) for row in rows]
    outside: list[int] = []

    def check(conn: psycopg.Connection, _retry: bool) -> None:
        outside[:] = _outside(conn, table, times)

    # Through the delivery loop: a lost connection is retried, and a time the server cannot even read (a row the
    # COPY would also have refused) leaves the refusal standing, as does a check the server will not run.
    try:
        delivery = writer.deliver(pool, CHECK_VERB, table, 0, check)
    except SetupError as failure:
        logger.warning("the partitions of %s could not be checked (%s): its batch fails whole", table, failure)
        return []
    if delivery.outcome is not Outcome.COMMITTED:
        return []
    if outside:
        logger.warning(
            "%d of %d %s rows have a %s no partition takes: split out of their batch (make partitions ahead)",
            len(outside), len(rows), table, TIME_COLUMN[table],
        )  # fmt: skip
    return outside


def outside_reason(table: str) -> str:
    """Why a row of `table` was split out, as the quarantine records it."""
    return REASON.format(table=table, column=TIME_COLUMN[table])


def _outside(conn: psycopg.Connection, table: str, times: list[str | None]) -> list[int]:
    """The positions of `times` that no leaf partition of `table` takes ([] for a table that is not partitioned)."""
    if not conn.execute(_PARTITIONED, [table]).fetchone()[0]:
        return []
    constraints = [constraint for (constraint,) in conn.execute(_LEAF_CONSTRAINTS, [table]) if constraint]
    # Each constraint names the partition column unqualified: the row's time bears the column's name.
    taken = sql.SQL(" OR ").join(sql.SQL(f"({constraint})") for constraint in constraints) or sql.SQL("false")
    query = sql.SQL(
        "SELECT n - 1 FROM unnest(%s::text[]) WITH ORDINALITY AS given(value, n),"
        " LATERAL (SELECT value::timestamptz AS {column}) AS candidate"
        " WHERE NOT coalesce({taken}, false) ORDER BY n"
    ).format(column=sql.Identifier(TIME_COLUMN[table]), taken=taken)
    return [position for (position,) in conn.execute(query, [times])]


def _time_of(table: str, row: str | bytes) -> str | None:
    """The row's time as COPY text (None for NULL, which no range partition takes either)."""
    text = row.decode("utf-8", "replace") if isinstance(row, bytes) else row
    value = text.rstrip("\n").split("\t")[COLUMNS[table].index(TIME_COLUMN[table])]
    return None if value == NULL else value
