"""Batched INSERT strategy: the COPY writer's buffering, each batch sent as one multi-row INSERT.

One `INSERT INTO t (columns) SELECT ... FROM unnest($1::text[], ...) ON CONFLICT (event_id) DO NOTHING` per
batch of `batch_size` rows, in a transaction of its own, from a pool of `pool_size` connections. The rows are
COPY text from the generator, split back into values (`telemetry.layout.parse_row`); each column of the batch
travels as one `text[]` parameter (`writers.text_arrays`), and the server casts each value to its column's type,
as it did a text parameter.

13 array parameters rather than a `VALUES` list of 6,500 (500 rows x 13 columns): the statement is the same for
every batch, small to parse and plan even where nothing can be prepared (pgBouncer), and no batch size meets
the protocol's 65,535-parameter limit. Measured here, same rows, exclusive machine: one connection sending 40
batches of 500 spans, the server's CPU per row 101-103 -> 96-103 us prepared, 120-122 -> 92-113 us unprepared,
our client's 17-24 -> 15-17 us; the writers in-process (50 engineers, 57k rows), server CPU per row 133 -> 118-122
us (batched) and 133-137 -> 121-125 us (pooled), rows/s 11.3-11.9k -> 12.4k and 11.0-11.8k -> 11.7-12.0k.
"""

from __future__ import annotations

import psycopg

from telemetry.layout import LAYOUT, parse_row
from writers.buffered import BufferedWriter
from writers.text_arrays import TEXT_ARRAYS, TextArray

BATCH_SIZE = 500
"""Rows per INSERT, the seed's value."""
POOL_SIZE = 20
"""Flushing connections, the seed's value. Measured here (2 cores, shared): 4, 8 and 20 gave the same
7-8.5k rows/s, the server's cores being the wall; more connections only queue there."""


class BatchedWriter(BufferedWriter):
    """Batches rows per table and sends each batch as one multi-row INSERT, committed on its own.

    Every INSERT says `ON CONFLICT (event_id) DO NOTHING`, not only retries: measured here, with and
    without it gave 6.7-8.7k and 7.4-8.6k rows/s (run-to-run noise is larger than the difference), and
    one statement text keeps psycopg's automatic prepared statement for first tries and retries alike.
    """

    verb = "INSERT"
    option_prefix = "batched"
    options_title = "batched INSERT strategy"
    default_batch_size = BATCH_SIZE
    default_pool_size = POOL_SIZE
    batch_help = "Rows per INSERT statement."
    prepare: bool | None = True
    """Prepare each statement on its first use on a connection, as a C client's `-M prepared` does: psycopg's
    default waits for 5 uses."""
    connection_settings = {"options": "-c plan_cache_mode=force_generic_plan", "context": TEXT_ARRAYS}
    """Bind `TextArray`s; plan the prepared statement once: its plan is the same for every batch, and by default
    the server plans it afresh for its first 5 executions. (Measured with the former 6,500-parameter VALUES
    statement, where planning was much of the work: the server's CPU per row 84 -> 75 us with `prepare`.)"""

    def send(self, table: str, lines: list[str]) -> None:
        """INSERT one batch in its own transaction; retries cannot duplicate (ON CONFLICT DO NOTHING)."""
        columns = [TextArray(column) for column in zip(*map(parse_row, lines), strict=True)]
        size = len("".join(lines).encode())  # the COPY text's size, so MB/s compare across strategies

        def attempt(conn: psycopg.Connection, _retry: bool) -> None:
            with psycopg.RawCursor(conn) as cursor:
                cursor.execute(INSERT[table], columns, prepare=self.prepare)

        self.deliver_rows(table, len(lines), size, attempt)


INSERT = {
    table: f"INSERT INTO {table} ({', '.join(column.name for column in columns)}) "
    f"SELECT {', '.join(f'{column.name}::{column.sql_type}' for column in columns)} "
    f"FROM unnest({', '.join(f'${number}::text[]' for number in range(1, len(columns) + 1))}) "
    f"AS batch ({', '.join(column.name for column in columns)}) "
    "ON CONFLICT (event_id) DO NOTHING"
    for table, columns in LAYOUT.items()
}
"""Per table, the one statement of every batch, whatever its size: each column one array parameter."""
