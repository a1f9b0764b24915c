"""COPY strategy: a per-process buffer shared by all engineers, flushed in batches by a few connections.

Rows are appended to one buffer per table; every `batch_size` rows become a batch that one of
`pool_size` flusher greenlets streams with COPY and commits. At most `backlog` batches wait: past
that, `write` blocks its engineer until a flusher catches up (back-pressure, bounded memory).
"""

from __future__ import annotations

import argparse

import gevent
import psycopg
from gevent.event import Event
from gevent.queue import JoinableQueue
from locust.event import Events
from psycopg_pool import ConnectionPool

from telemetry.generator import TraceRows
from writers.base import TABLES, Writer
from writers.rows import COLUMNS, copy_statement

BATCH_SIZE = 5_000
"""Rows per COPY, the seed's value: ~15 MB, a third of a second of server work here."""
POOL_SIZE = 4
"""Flushing connections. Two saturate the two cores of the reference machine (27k rows/s, vs 13.7k for
one); two more keep a batch ready while the others commit."""
RETRIES = 3
"""Attempts per batch after a lost connection; retries dedupe on event_id, so a COPY that committed
before the connection dropped is not written twice."""

_STOP = None


class CopyWriter(Writer):
    """Batches rows per table and COPYs them; acknowledges a batch once its transaction commits."""

    verb = "COPY"

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        batch_size: int = BATCH_SIZE,
        pool_size: int = POOL_SIZE,
        connect_kwargs: dict | None = None,
    ) -> None:
        super().__init__(events)
        self.batch_size = batch_size
        self.backlog = 2 * pool_size
        self._buffers: dict[str, list[str]] = {table: [] for table in TABLES}
        self._batches: JoinableQueue = JoinableQueue()
        self._room = Event()
        self._pool = ConnectionPool(
            conninfo, min_size=pool_size, max_size=pool_size, kwargs=connect_kwargs, name="copy", open=False
        )
        self._pool.open(wait=True, timeout=30)
        self._flushers = [gevent.spawn(self._flush_forever) for _ in range(pool_size)]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("COPY strategy")
        group.add_argument("--copy-batch-size", type=int, default=BATCH_SIZE, help="Rows per COPY batch.")
        group.add_argument("--copy-pool-size", type=int, default=POOL_SIZE, help="Connections flushing batches.")

    @classmethod
    def from_options(cls, conninfo: str, options: argparse.Namespace, events: Events) -> CopyWriter:
        return cls(conninfo, events, batch_size=options.copy_batch_size, pool_size=options.copy_pool_size)

    def write(self, rows: TraceRows) -> None:
        self.tally.receive(rows)
        for table, lines in (("spans", rows.spans), ("metrics", rows.metrics), ("logs", rows.logs)):
            buffer = self._buffers[table]
            buffer += lines
            if len(buffer) >= self.batch_size:
                self._batches.put((table, buffer[: self.batch_size]))
                self._buffers[table] = buffer[self.batch_size :]
        # The rows are handed over above without yielding; only now may this engineer wait.
        while self._batches.qsize() >= self.backlog:
            self._room.clear()
            self._room.wait()

    def flush(self) -> None:
        for table in TABLES:
            if self._buffers[table]:
                self._batches.put((table, self._buffers[table]))
                self._buffers[table] = []
        self._batches.join()

    def close(self) -> None:
        self.flush()
        for _ in self._flushers:
            self._batches.put(_STOP)
        gevent.joinall(self._flushers)
        self._pool.close()

    def _flush_forever(self) -> None:
        while (batch := self._batches.get()) is not _STOP:
            self._room.set()
            try:
                self.send(*batch)
            finally:
                self._batches.task_done()
        self._batches.task_done()

    def send(self, table: str, lines: list[str]) -> None:
        """COPY one batch in its own transaction, retrying lost connections through a deduping path."""
        data = "".join(lines).encode()
        for attempt in range(RETRIES):
            try:
                with self.round_trip(self.verb, table, len(lines), len(data)), self._pool.connection() as conn:
                    if attempt == 0:
                        copy_rows(conn, copy_statement(table), data)
                    else:
                        copy_deduplicated(conn, table, data)
                return
            except psycopg.OperationalError:
                gevent.sleep(0.5 * 2**attempt)
            except psycopg.Error:
                break  # the data itself was refused: retrying cannot help (writers.validated can)
        self.tally.failed[table] += len(lines)


def copy_rows(conn: psycopg.Connection, statement: str, data: bytes) -> None:
    """Stream COPY text `data` with `statement` (see writers.rows.copy_statement) in conn's transaction."""
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(data)


def copy_deduplicated(conn: psycopg.Connection, table: str, data: bytes) -> None:
    """COPY into a temporary table, then keep only event_ids the table does not have yet."""
    staging = f"firehose_retry_{table}"
    columns = ", ".join(COLUMNS[table])
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
    copy_rows(conn, copy_statement(table, staging), data)
    conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT (event_id) DO NOTHING")
