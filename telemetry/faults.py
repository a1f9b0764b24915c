"""Deliberately malformed rows, to exercise the validated COPY path and its quarantine.

`Faults(share, seed).corrupt(rows)` replaces about `share` of a trace's rows with a broken variant
of themselves, of one of these kinds:
- bad_json: attributes lose their closing brace;
- nul_byte: a NUL byte inside a text column (PostgreSQL text cannot hold one);
- null_required: service_name is NULL (NOT NULL);
- impossible_date: a timestamp on February 30 (well shaped, but no such day);
- duplicate_id: the row takes the event_id and the time of the engineer's first row of its table
  (the time too: the partitioned layout's primary key is (event_id, time)). Within one batch the
  checks refuse it; once that first row's batch has committed, only the server's primary key can,
  so long runs exercise the writer's isolation of rows the server refuses.

The number of rows never changes and every event_id stays in its writer's range, so a run still
reconciles: each row is in the database or in the quarantine. Which rows break, and how, is drawn
from the seed and the trace id (not from event ids, which depend on how engineers interleave), so a
seed replays it.
"""

from __future__ import annotations

import random

from telemetry.generator import TraceRows
from telemetry.layout import COLUMNS, NULL, TABLES, TIME_COLUMN

KINDS = ("bad_json", "nul_byte", "null_required", "impossible_date", "duplicate_id")
_TEXT_COLUMN = {"spans": "name", "metrics": "name", "logs": "body"}


class Faults:
    """Corrupts a share of the rows one engineer hands to it, deterministically from `seed`."""

    def __init__(self, share: float, seed: int) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"malformed share {share} is not between 0 and 1")
        self.share = share
        self.seed = seed
        self._first_rows: dict[str, str] = {}  # per table: the row whose event_id duplicates take

    def corrupt(self, rows: TraceRows) -> TraceRows:
        """The trace's rows with about `share` of them broken (the same rows when share is 0)."""
        if not self.share or not rows.spans:
            return rows
        trace_id = rows.spans[0].split("\t", 2)[1]
        rng = random.Random(f"{self.seed}:{trace_id}")
        corrupted = TraceRows()
        for table in TABLES:
            lines = list(getattr(rows, table))
            first = self._first_rows.setdefault(table, lines[0])
            for index in range(len(lines)):
                if rng.random() < self.share:
                    kind = KINDS[rng.randrange(len(KINDS))]
                    if kind == "duplicate_id" and lines[index] is first:
                        kind = "impossible_date"  # the one row a duplicate cannot copy
                    lines[index] = corrupt_row(table, lines[index], kind, donor=first)
            setattr(corrupted, table, lines)
        return corrupted


def corrupt_row(table: str, line: str, kind: str, donor: str | None = None) -> str:
    """`line` (a COPY text row of `table`) broken as `kind` says; duplicate_id takes `donor`'s event_id and time."""
    values = line[:-1].split("\t")
    columns = COLUMNS[table]
    if kind == "bad_json":
        values[-1] = values[-1][:-1]
    elif kind == "nul_byte":
        index = columns.index(_TEXT_COLUMN[table])
        middle = len(values[index]) // 2
        values[index] = values[index][:middle] + "\x00" + values[index][middle:]
    elif kind == "null_required":
        values[columns.index("service_name")] = NULL
    elif kind == "impossible_date":
        index = columns.index(TIME_COLUMN[table])
        values[index] = f"{values[index][:4]}-02-30{values[index][10:]}"
    elif kind == "duplicate_id":
        if donor is None:
            raise ValueError("duplicate_id needs a donor row, to take its event_id")
        donor_values = donor[:-1].split("\t")
        time = columns.index(TIME_COLUMN[table])
        values[0], values[time] = donor_values[0], donor_values[time]
    else:
        raise ValueError(f"unknown fault {kind!r}: one of {', '.join(KINDS)}")
    return "\t".join(values) + "\n"
