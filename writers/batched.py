"""Batched INSERT strategy: the COPY writer's buffering, each batch sent as one multi-row INSERT.

`INSERT INTO t (columns) VALUES (...), (...)` with `batch_size` rows of parameters per statement, in
a transaction of its own, from a pool of `pool_size` connections. The rows are COPY text from the
generator, split back into values (`telemetry.layout.parse_row`) and sent as text parameters that the
server casts to each column's type.

The statement is written with PostgreSQL's own `$n` placeholders and run by a `psycopg.RawCursor`:
psycopg caches its `%s` parsing only for statements under 4 KB and 50 parameters, and parsing 6,500
placeholders per batch would cap the Locust process's one core. The measurements behind these choices, and
an alternative statement that was tried and not kept, are in docs/performance-notes.md.
"""

from __future__ import annotations

from functools import lru_cache

import psycopg
from locust.event import Events

from telemetry.layout import COLUMNS, parse_row
from writers.base import OnFatal
from writers.buffered import BufferedWriter
from writers.delivery import RetryPolicy

BATCH_SIZE = 500
"""Rows per INSERT, the seed's value: 6,500 parameters for spans, a tenth of the protocol's limit."""
POOL_SIZE = 20
"""Flushing connections, the seed's value: past a few, the server's cores are the wall and more connections only
queue there (docs/performance-notes.md)."""
MAX_PARAMETERS = 65_535
"""The wire protocol counts a statement's parameters in 16 bits."""


class BatchedWriter(BufferedWriter):
    """Batches rows per table and sends each batch as one multi-row INSERT, committed on its own.

    Every INSERT says `ON CONFLICT DO NOTHING`, not only retries: it costs less than the run-to-run
    noise (docs/performance-notes.md), and one statement text keeps psycopg's automatic prepared statement for
    first tries and retries alike.
    """

    verb = "INSERT"
    option_prefix = "batched"
    options_title = "batched INSERT strategy"
    default_batch_size = BATCH_SIZE
    default_pool_size = POOL_SIZE
    batch_help = "Rows per INSERT statement."
    prepare: bool | None = True
    """Prepare each statement on its first use on a connection, as a C client's `-M prepared` does: psycopg's
    default waits for 5 uses, and a connection sends each table's 500-row statement only ~10 times a run."""
    connection_settings = {"options": "-c plan_cache_mode=force_generic_plan"}
    """Plan the prepared statement once: by default the server plans it afresh for its first 5 executions, and
    planning a VALUES list of 6,500 parameters is much of its work (with `prepare`: docs/performance-notes.md)."""

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        batch_size: int | None = None,
        pool_size: int | None = None,
        connect_kwargs: dict | None = None,
        on_fatal: OnFatal | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        widest = max(len(columns) for columns in COLUMNS.values())
        rows = batch_size or self.default_batch_size
        if rows * widest > MAX_PARAMETERS:
            raise ValueError(
                f"a batch of {rows} rows needs {rows * widest} parameters, more than PostgreSQL's "
                f"{MAX_PARAMETERS}: use at most {MAX_PARAMETERS // widest} rows per INSERT"
            )
        super().__init__(
            conninfo,
            events,
            batch_size=rows,
            pool_size=pool_size,
            connect_kwargs=connect_kwargs,
            on_fatal=on_fatal,
            retry_policy=retry_policy,
        )

    def send(self, table: str, lines: list[str]) -> None:
        """INSERT one batch in its own transaction; retries cannot duplicate (ON CONFLICT DO NOTHING)."""
        statement = insert_statement(table, len(lines))
        values = [value for line in lines for value in parse_row(line)]
        size = len("".join(lines).encode())  # the COPY text's size, so MB/s compare across strategies

        def attempt(conn: psycopg.Connection, _retry: bool) -> None:
            with psycopg.RawCursor(conn) as cursor:
                cursor.execute(statement, values, prepare=self.prepare)

        self.deliver_rows(table, lines, size, attempt)


@lru_cache(maxsize=64)
def insert_statement(table: str, rows: int) -> str:
    """`INSERT INTO table (columns) VALUES ($1, ...), ... ON CONFLICT DO NOTHING` for `rows` rows."""
    columns = COLUMNS[table]
    width = len(columns)
    values = ", ".join(
        "(" + ", ".join(f"${row * width + column}" for column in range(1, width + 1)) + ")" for row in range(rows)
    )
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} ON CONFLICT DO NOTHING"
