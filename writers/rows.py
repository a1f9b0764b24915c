"""Row layout shared by the writers: column lists in COPY order, and COPY text back to values.

The generator emits COPY text rows (see telemetry/generator.py). COPY sends them as they are;
INSERT-based writers turn them back into values with `parse_row`, which costs them a split and
an unescape per row, cheap next to an INSERT round trip.
"""

from __future__ import annotations

import re

COLUMNS: dict[str, tuple[str, ...]] = {
    "spans": (
        "event_id", "trace_id", "span_id", "parent_span_id", "service_name", "name", "kind",
        "start_time", "end_time", "duration_ms", "status_code", "status_message", "attributes",
    ),
    "metrics": (
        "event_id", "name", "service_name", "time", "value", "unit", "metric_type", "trace_id", "span_id",
        "attributes",
    ),
    "logs": (
        "event_id", "time", "severity_number", "severity_text", "service_name", "trace_id", "span_id", "body",
        "attributes",
    ),
}  # fmt: skip

_UNESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def copy_statement(table: str, target: str | None = None) -> str:
    """`COPY table (columns) FROM STDIN`, optionally into another table of the same shape."""
    return f"COPY {target or table} ({', '.join(COLUMNS[table])}) FROM STDIN"


def parse_row(line: str) -> list[str | None]:
    """One COPY text row back to its column values (`\\N` is NULL)."""
    return [
        None if field == "\\N" else (_UNESCAPE.sub(_unescape_one, field) if "\\" in field else field)
        for field in line.rstrip("\n").split("\t")
    ]


def _unescape_one(match: re.Match[str]) -> str:
    return _ESCAPED.get(match.group(1), match.group(1))
