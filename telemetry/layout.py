"""The one row layout: tables, columns in COPY order, their SQL types and nullability, and COPY text.

schema/tables.sql creates these tables; a test compares this layout with the columns the database
reports, so the two cannot drift. The generator composes rows in this order, the validator checks them
against these types and nullability, the fault injector breaks them by column name, and the writers
name these columns in their COPY and INSERT statements.

Rows travel as PostgreSQL COPY text (one `str` per row, tab-separated, `\\N` for NULL, ending in a
newline): COPY sends them as they are, INSERT-based writers turn them back into values (`parse_row`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column: its name, its type as `information_schema.columns.data_type` says it, and whether it
    may be NULL. `shape` narrows a text column to what the generator writes (e.g. 32 hex digits)."""

    name: str
    sql_type: str
    nullable: bool = False
    shape: str | None = None


_BIGINT, _SMALLINT, _FLOAT = "bigint", "smallint", "double precision"
_TEXT, _JSONB, _TIMESTAMPTZ = "text", "jsonb", "timestamp with time zone"

LAYOUT: dict[str, tuple[Column, ...]] = {
    "spans": (
        Column("event_id", _BIGINT),
        Column("trace_id", _TEXT, shape="trace_id"),
        Column("span_id", _TEXT, shape="span_id"),
        Column("parent_span_id", _TEXT, nullable=True, shape="span_id"),
        Column("service_name", _TEXT),
        Column("name", _TEXT),
        Column("kind", _SMALLINT),
        Column("start_time", _TIMESTAMPTZ),
        Column("end_time", _TIMESTAMPTZ),
        Column("duration_ms", _FLOAT),
        Column("status_code", _SMALLINT),
        Column("status_message", _TEXT, nullable=True),
        Column("attributes", _JSONB),
    ),
    "metrics": (
        Column("event_id", _BIGINT),
        Column("name", _TEXT),
        Column("service_name", _TEXT),
        Column("time", _TIMESTAMPTZ),
        Column("value", _FLOAT),
        Column("unit", _TEXT),
        Column("metric_type", _TEXT),
        Column("trace_id", _TEXT, nullable=True, shape="trace_id"),
        Column("span_id", _TEXT, nullable=True, shape="span_id"),
        Column("attributes", _JSONB),
    ),
    "logs": (
        Column("event_id", _BIGINT),
        Column("time", _TIMESTAMPTZ),
        Column("severity_number", _SMALLINT),
        Column("severity_text", _TEXT),
        Column("service_name", _TEXT),
        Column("trace_id", _TEXT, nullable=True, shape="trace_id"),
        Column("span_id", _TEXT, nullable=True, shape="span_id"),
        Column("body", _TEXT),
        Column("attributes", _JSONB),
    ),
}
"""The telemetry tables, each column in COPY order (the order of schema/tables.sql)."""

TABLES: tuple[str, ...] = tuple(LAYOUT)
"""The telemetry tables, in the order rows are written and reported."""

COLUMNS: dict[str, tuple[str, ...]] = {
    table: tuple(column.name for column in columns) for table, columns in LAYOUT.items()
}
TIME_COLUMN: dict[str, str] = {"spans": "start_time", "metrics": "time", "logs": "time"}
"""Each table's time: what the partitioned layout partitions it on (schema/partitioned.sql), part of its primary key."""
NULLABLE: dict[str, frozenset[str]] = {
    table: frozenset(column.name for column in columns if column.nullable) for table, columns in LAYOUT.items()
}

NULL = "\\N"
"""COPY text's NULL."""

_UNESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def copy_statement(table: str, target: str | None = None) -> str:
    """`COPY table (columns) FROM STDIN`, optionally into another table of the same shape."""
    return f"COPY {target or table} ({', '.join(COLUMNS[table])}) FROM STDIN"


def parse_row(line: str) -> list[str | None]:
    """One COPY text row back to its column values (`\\N` is NULL)."""
    return [
        None if field == NULL else (_unescape(field) if "\\" in field else field)
        for field in line.rstrip("\n").split("\t")
    ]


def _unescape(field: str) -> str:
    """COPY text's escapes undone. The generator's JSON only ever has doubled backslashes (~20 a row): those
    by two `str.replace`, at C speed; any other escape by the regular expression (8.5 -> ~3 us a row)."""
    if "\\" not in field.replace("\\\\", ""):
        return field.replace("\\\\", "\\")
    return _UNESCAPE.sub(_unescape_one, field)


def _unescape_one(match: re.Match[str]) -> str:
    return _ESCAPED.get(match.group(1), match.group(1))
