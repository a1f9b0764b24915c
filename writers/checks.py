"""Cheap row checks that decide what may join a COPY batch: one malformed row fails a whole COPY.

`Triage` sorts a batch's rows into three lists:
- clean: sent by COPY;
- suspicious: passes every check but is unusual (oversized, control or invisible characters), so it
  goes by INSERT ... ON CONFLICT, outside the big batch, where a surprise costs one small statement;
- malformed: quarantined, with the reason (`"attributes: invalid JSON at char 120 (...)"`).

The checks mirror schema/tables.sql: column count, NOT NULL, integers and floats in range, id
shapes, timestamps with a zone on a real date, attributes a JSON object, no NUL bytes, only the COPY
escapes our generator writes (`\\\\`, `\\t`,
`\\n`, `\\r`). The hot path (`_passes`) costs one encode, a few single-byte searches, one compiled
pattern over the typed columns and one orjson parse: a fraction of what the server spends to COPY the row
(docs/performance-notes.md). Only a row that fails it is examined again, column
by column (`diagnose`), to say why. They are a filter, not a second PostgreSQL: what they
cannot see (an event_id committed by an earlier batch, a constraint added to the schema) the server
refuses and writers.validated isolates.
"""

from __future__ import annotations

import codecs
import datetime
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from telemetry.layout import LAYOUT, NULLABLE, Column

SUSPICIOUS_ROW_BYTES = 64 * 1024
"""Rows above this go by INSERT: the generator's largest is ~3.4 KB, so one 20 times bigger is a
runaway payload, kept out of the COPY batch it would otherwise swell."""

_KIND_OF_TYPE = {"bigint": "event_id", "smallint": "smallint", "double precision": "float8",
                 "timestamp with time zone": "timestamptz", "jsonb": "jsonb", "text": "text"}  # fmt: skip


def _kind(column: Column) -> str:
    """What a column's COPY text must look like: its shape (trace_id, span_id), else its type's."""
    return column.shape or _KIND_OF_TYPE[column.sql_type]


_TIMESTAMP = (
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])[ T](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:0\d|1[0-4])(?::?[0-5]\d)?)"
)  # the shape; `_real_date` then refuses February 30 (which PostgreSQL would, failing the whole COPY)
_PATTERNS = {
    "event_id": r"\d{1,19}",
    "trace_id": r"[0-9a-f]{32}",
    "span_id": r"[0-9a-f]{16}",
    "smallint": r"-?\d{1,5}",
    "float8": r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?",  # no NaN/Infinity: telemetry values are finite
    "timestamptz": _TIMESTAMP,
}
_SHAPES = {kind: re.compile(pattern, re.ASCII) for kind, pattern in _PATTERNS.items()}  # \d: ASCII digits only
_CONTROL = r"\x00-\x1f\x7f"
# Text: anything but tab, backslash and control characters, plus the escapes our generator writes.
# Possessive quantifiers: a row that does not match fails at once, without backtracking.
_TEXT = rf"[^\t\\{_CONTROL}]*+(?:\\[\\tnr][^\t\\{_CONTROL}]*+)*+"
_CONTROLS = re.compile(f"[{_CONTROL}]")
_UNUSUAL = re.compile(r"[\x80-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffd]")
"""C1 controls, zero-width and bidirectional controls, byte-order marks, U+FFFD (an upstream decoding
error): legal, but a sign that something upstream went wrong."""
_ESCAPE = re.compile(r"\\(.?)", re.DOTALL)


def _bigint(value: bytes | str) -> bool:
    return int(value) < 1 << 63


def _smallint(value: bytes | str) -> bool:
    return -(1 << 15) <= int(value) < 1 << 15


def _finite(value: bytes | str) -> bool:
    return math.isfinite(float(value))


def _real_date(value: bytes | str) -> bool:
    """The date of a well-shaped timestamp exists: days up to 28 always do, so most rows skip the calendar."""
    if int(value[8:10]) <= 28:
        return int(value[:4]) > 0
    try:
        datetime.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


_RANGES: dict[str, Callable[[bytes | str], bool]] = {
    "event_id": _bigint,
    "smallint": _smallint,
    "float8": _finite,
    "timestamptz": _real_date,
}
_OUT_OF_RANGE = {
    "event_id": "out of range for bigint",
    "smallint": "out of range for smallint",
    "float8": "out of range for double precision",
    "timestamptz": "is not a real date",
}
_DESCRIPTIONS = {
    "event_id": "a non-negative bigint",
    "trace_id": "32 lowercase hex digits",
    "span_id": "16 lowercase hex digits",
    "smallint": "a smallint",
    "float8": "a finite number",
    "timestamptz": "a timestamp with time zone",
}


@dataclass(frozen=True)
class Problem:
    """Why a row cannot join a COPY batch: malformed (quarantined), or only suspicious (sent by INSERT)."""

    reason: str
    suspicious: bool = False


@dataclass(frozen=True)
class _Layout:
    """One table's columns, and every column but the last (attributes) as one compiled pattern."""

    table: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    head: re.Pattern[bytes]
    ranges: tuple[tuple[int, Callable[[bytes | str], bool]], ...]  # (pattern group, in-range test)

    @classmethod
    def of(cls, table: str) -> _Layout:
        columns = tuple(column.name for column in LAYOUT[table])
        if columns[-1] != "attributes":
            raise ValueError(f"{table}: the checks expect attributes as the last column")
        kinds = tuple(_kind(column) for column in LAYOUT[table])
        parts: list[str] = []
        ranges: list[tuple[int, Callable[[bytes | str], bool]]] = []
        for column, kind in zip(columns[:-1], kinds[:-1], strict=True):
            if kind == "text":
                shape = _TEXT
            elif kind in _RANGES:  # captured, to test its range after the match
                shape = f"({_PATTERNS[kind]})"
                ranges.append((len(ranges) + 1, _RANGES[kind]))
            else:
                shape = _PATTERNS[kind]
            parts.append(rf"(?:\\N|{shape})" if column in NULLABLE[table] else shape)
        return cls(table, columns, kinds, re.compile("\t".join(parts).encode()), tuple(ranges))


_LAYOUTS = {table: _Layout.of(table) for table in LAYOUT}


def _attributes_text(raw: bytes | memoryview) -> bytes:
    """The attributes column COPY-unescaped (ValueError on a dangling escape).

    codecs.escape_decode (undocumented, but the C decoder behind b"..." literals since Python 2)
    decodes backslash, tab, newline and carriage-return escapes, and \\b, \\x41 or octal ones, as COPY
    does, three times faster than bytes.replace here. An unknown escape (\\q) stays as it is, which
    leaves the JSON invalid: such a row is quarantined, where COPY would have read a plain q.
    """
    return codecs.escape_decode(raw)[0]


def _passes(layout: _Layout, line: str, data: bytes) -> bool:
    """The hot path: True only for a row certainly clean. False sends the row to `diagnose`.

    NUL bytes, raw newlines and carriage returns need no search of their own before the last tab:
    the typed-column pattern admits none. After it, orjson refuses NUL, but takes newlines and
    carriage returns as JSON whitespace where COPY would end the row, hence the two searches.
    """
    if len(data) > SUSPICIOUS_ROW_BYTES or not data.endswith(b"\n"):
        return False
    tab = data.rfind(b"\t")
    match = layout.head.fullmatch(data, 0, tab) if tab > 0 else None
    if match is None or data.find(b"\r", tab) != -1 or data.find(b"\n", tab) != len(data) - 1:
        return False
    for group, in_range in layout.ranges:
        value = match.group(group)
        if value is not None and not in_range(value):
            return False
    attributes: bytes | memoryview = memoryview(data)[tab + 1 : -1]  # no copy: orjson reads buffers
    try:
        if data.find(b"\\", tab) != -1:  # only JSON escapes put a backslash there (logs' stack traces have dozens)
            attributes = _attributes_text(attributes)
            if b"\\u0000" in attributes:
                return False
        if type(orjson.loads(attributes)) is not dict:
            return False
    except (ValueError, orjson.JSONDecodeError):
        return False
    return data.isascii() or _UNUSUAL.search(line) is None


def diagnose(table: str, line: str) -> Problem:
    """Say why a row that failed the hot path cannot join a COPY batch. Clarity first: this runs rarely."""
    layout = _LAYOUTS[table]
    try:
        size = len(line.encode())
    except UnicodeEncodeError as error:
        return Problem(f"not valid UTF-8: lone surrogate at char {error.start}")
    if not line.endswith("\n"):
        return Problem("row does not end with a newline")
    values = line[:-1].split("\t")
    if len(values) != len(layout.columns):
        return Problem(f"expected {len(layout.columns)} columns, got {len(values)}")
    for column, kind, value in zip(layout.columns, layout.kinds, values, strict=True):
        if reason := _column_problem(layout, column, kind, value):
            return Problem(reason)
    if size > SUSPICIOUS_ROW_BYTES:
        return Problem(f"row of {size:,} bytes, over {SUSPICIOUS_ROW_BYTES:,}", suspicious=True)
    for column, kind, value in zip(layout.columns, layout.kinds, values, strict=True):
        odd = _UNUSUAL.search(value) or (_CONTROLS.search(value) if kind == "text" else None)
        if odd:
            return Problem(f"{column}: unusual character U+{ord(odd.group()):04X}", suspicious=True)
    # Unreachable while the hot path and this function agree; should they ever not, the row goes
    # by INSERT, where the server decides, rather than risk a whole COPY batch.
    return Problem("did not pass the fast checks", suspicious=True)


def _column_problem(layout: _Layout, column: str, kind: str, value: str) -> str | None:
    """What is wrong with one column's COPY text, or None."""
    if "\x00" in value:
        return f"NUL byte in column {column}"
    if "\n" in value or "\r" in value:
        return f"{column}: raw newline or carriage return (COPY text needs \\n, \\r)"
    if value == "\\N":
        return None if column in NULLABLE[layout.table] else f"{column}: NULL in a NOT NULL column"
    if kind == "jsonb":
        return _json_problem(value)
    if kind == "text":
        for escape in _ESCAPE.finditer(value):
            if escape.group(1) not in ("\\", "t", "n", "r"):
                return f"{column}: unsupported COPY escape {escape.group()}"
        return None
    if not _SHAPES[kind].fullmatch(value):
        return f"{column}: not {_DESCRIPTIONS[kind]}: {_show(value)}"
    if kind in _RANGES and not _RANGES[kind](value):
        return f"{column}: {_show(value)} {_OUT_OF_RANGE[kind]}"
    return None


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _json_problem(value: str) -> str | None:
    try:
        text = _attributes_text(value.encode())
    except ValueError as error:
        return f"attributes: bad COPY escape ({error})"
    if b"\\u0000" in text:
        return "attributes: JSON \\u0000 escape (jsonb cannot store NUL)"
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return f"attributes: invalid JSON at char {error.pos} ({error.msg})"
    return None if type(parsed) is dict else f"attributes: JSON {_JSON_TYPES[type(parsed)]}, not an object"


def _show(value: str) -> str:
    """A value for a reason: quoted and escaped (never a raw NUL), at most 40 characters."""
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


def check_row(table: str, line: str) -> Problem | None:
    """None for a row that may join a COPY batch, else its Problem."""
    try:
        data = line.encode()
    except UnicodeEncodeError:
        return diagnose(table, line)
    return None if _passes(_LAYOUTS[table], line, data) else diagnose(table, line)


class Triage:
    """One batch's rows of `table` sorted for sending; `add` may be called slice by slice.

    Rows keep their order in each list, encoded as COPY sends them (`malformed` ones exactly as
    received, for the quarantine's row_data). A row whose event_id an earlier row of the batch
    already has is malformed: the first one wins, as the server would decide.
    """

    def __init__(self, table: str) -> None:
        self.table = table
        self.clean: list[bytes] = []
        self.suspicious: list[tuple[bytes, str]] = []
        self.malformed: list[tuple[bytes, str]] = []
        self._layout = _LAYOUTS[table]
        self._event_ids: set[bytes] = set()

    def add(self, lines: Iterable[str]) -> None:
        layout, event_ids = self._layout, self._event_ids
        for line in lines:
            try:
                data = line.encode()
            except UnicodeEncodeError:
                self.malformed.append((line.encode("utf-8", "surrogatepass"), diagnose(self.table, line).reason))
                continue
            problem = None if _passes(layout, line, data) else diagnose(self.table, line)
            if problem is not None and not problem.suspicious:
                self.malformed.append((data, problem.reason))
                continue
            event_id = data[: data.find(b"\t")]
            if event_id in event_ids:
                self.malformed.append((data, f"event_id {event_id.decode()} appears twice in the batch"))
                continue
            event_ids.add(event_id)
            if problem is None:
                self.clean.append(data)
            else:
                self.suspicious.append((data, problem.reason))
