"""The analysts' queries (queries/*.sql) and the parameters they are bound with.

Each file is written for psql: a parameter is psql's quoted variable `:'name'`, so
`psql -v name=value -f queries/x.sql` runs it as it is. `Query.to_psycopg` turns each `:'name'` into the
placeholder `%(name)s`, and the values are bound by the driver, never formatted into the SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

QUERIES_DIR = Path(__file__).resolve().parent.parent / "queries"
DEFAULT_WINDOW_S = 3600
"""An analyst looks at the last hour before the newest data, like the reference's queries."""
DEFAULT_METRIC_NAME = "llm.tokens.output"
"""The metric metric_rollups charts when the caller names none (one of telemetry.pools.METRIC_KINDS)."""
LATEST_ERROR_TRACE = """
SELECT trace_id FROM spans
WHERE status_code = 2 AND start_time > %(window_start)s AND start_time <= %(window_end)s
ORDER BY start_time DESC, event_id DESC
LIMIT 1
"""
"""The trace an analyst looks up: the most recent error span's in the window (one row of the recent-errors index)."""

_VARIABLE = re.compile(r":'([A-Za-z_][A-Za-z0-9_]*)'")


@dataclass(frozen=True)
class Query:
    """One query file: its name (the file's stem, Locust's request name), its psql text and its parameters."""

    name: str
    sql: str
    parameters: tuple[str, ...]

    @classmethod
    def from_file(cls, path: Path) -> Query:
        sql = path.read_text()
        return cls(path.stem, sql, tuple(dict.fromkeys(_VARIABLE.findall(_code(sql)))))

    def to_psycopg(self) -> str:
        """The SQL with `%(name)s` placeholders (and literal `%` doubled, as psycopg requires)."""
        return _VARIABLE.sub(r"%(\1)s", _code(self.sql).replace("%", "%%"))


def _code(sql: str) -> str:
    """The SQL without its `--` comment lines: the header's psql example is not part of the statement."""
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def load_queries(folder: Path = QUERIES_DIR) -> dict[str, Query]:
    """Every query of the folder, by name, in name order."""
    return {path.stem: Query.from_file(path) for path in sorted(folder.glob("*.sql"))}


def window_parameters(
    query: Query, window_end: datetime, window_s: float = DEFAULT_WINDOW_S, **values: object
) -> dict[str, object]:
    """The values to bind to `query`: the window (window_end - window_s, window_end], plus those of `values`.

    `window_end` is the newest data's time (given by the caller: the run's anchor, or the loaded dataset's),
    not `now()`, so a dataset loaded earlier is still queried where its rows are. `values` supplies the other
    parameters (`trace_id`, `metric_name`); a parameter the query needs and nobody gave is an error.
    """
    available = {"window_start": window_end - timedelta(seconds=window_s), "window_end": window_end, **values}
    if missing := [name for name in query.parameters if name not in available]:
        raise ValueError(f"query {query.name} needs parameters {', '.join(missing)}")
    return {name: available[name] for name in query.parameters}


def from_epoch_us(epoch_us: int) -> datetime:
    """A UTC datetime from microseconds since the epoch (the run's `anchor_us`)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)


def latest_error_trace(
    conn: psycopg.Connection, window_end: datetime, window_s: float = DEFAULT_WINDOW_S
) -> str | None:
    """The trace id of the window's most recent error span, or None when the window holds no error."""
    row = conn.execute(
        LATEST_ERROR_TRACE, {"window_start": window_end - timedelta(seconds=window_s), "window_end": window_end}
    ).fetchone()
    return None if row is None else row[0]
