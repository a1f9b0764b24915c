"""COPY strategy: a per-process buffer shared by all engineers, flushed in batches by a few connections.

Rows are appended to one buffer per table; every `batch_size` rows become a batch that one of
`pool_size` flusher greenlets streams with COPY and commits. At most `backlog` batches wait: past
that, `write` blocks its engineer until a flusher catches up (back-pressure, bounded memory). The
buffering is `writers.buffered.BufferedWriter`'s; this module only says how a batch is sent.
"""

from __future__ import annotations

import psycopg

from telemetry.layout import COLUMNS, copy_statement
from writers.buffered import BufferedWriter

BATCH_SIZE = 5_000
"""Rows per COPY, the seed's value: ~15 MB, a third of a second of server work here."""
POOL_SIZE = 2
"""Flushing connections: as many as the server has cores to parse and compress rows; more backends than cores only
take turns (`make bench` levers, docs/performance-notes.md). Raise it (`--copy-pool-size`) for a bigger server."""


class CopyWriter(BufferedWriter):
    """Batches rows per table and COPYs them; acknowledges a batch once its transaction commits."""

    verb = "COPY"
    option_prefix = "copy"
    options_title = "COPY strategy"
    default_batch_size = BATCH_SIZE
    default_pool_size = POOL_SIZE
    batch_help = "Rows per COPY batch."

    def send(self, table: str, lines: list[str]) -> None:
        """COPY one batch in its own transaction, retrying lost connections through a deduping path."""
        data = copy_data(lines)

        def attempt(conn: psycopg.Connection, retry: bool) -> None:
            if retry:
                copy_deduplicated(conn, table, data)
            else:
                copy_rows(conn, copy_statement(table), data)

        self.deliver_rows(table, lines, len(data), attempt)


def copy_data(lines: list[str]) -> bytes:
    """COPY text lines as the bytes COPY sends. surrogatepass: a lone surrogate reaches the server as the invalid
    bytes it is, and the server refuses the batch (counted as failed) instead of the encoder killing the flusher
    with the batch uncounted."""
    return "".join(lines).encode("utf-8", "surrogatepass")


def copy_rows(conn: psycopg.Connection, statement: str, data: bytes) -> None:
    """Stream COPY text `data` with `statement` (see telemetry.layout.copy_statement) in conn's transaction."""
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(data)


def copy_deduplicated(conn: psycopg.Connection, table: str, data: bytes) -> int:
    """COPY into a temporary table, then keep only event_ids the table does not have yet; the rows inserted."""
    staging = f"firehose_retry_{table}"
    columns = ", ".join(COLUMNS[table])
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
    copy_rows(conn, copy_statement(table, staging), data)
    inserted = conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT DO NOTHING")
    return inserted.rowcount
