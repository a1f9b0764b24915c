"""What the batching strategies share: a per-process buffer, flusher greenlets, back-pressure and retries.

Rows are appended to one buffer per table; every `batch_size` rows become a batch that one of
`pool_size` flusher greenlets hands to `send`, the one thing a strategy defines (COPY, multi-row
INSERT, ...). At most `backlog` batches wait: past that, `write` blocks its engineer until a flusher
catches up (back-pressure, bounded memory). Like psycopg's COPY `Writer`s, a strategy is a subclass
that overrides one method.
"""

from __future__ import annotations

import argparse
from abc import abstractmethod
from collections.abc import Callable

import gevent
import psycopg
from gevent.event import Event
from gevent.queue import JoinableQueue
from locust.event import Events
from psycopg_pool import ConnectionPool

from telemetry.generator import TraceRows
from writers.base import TABLES, Writer

RETRIES = 3
"""Attempts per round trip after a lost connection; a retry skips rows already stored (see `deliver`), so
rows that committed just before their connection dropped are not written twice."""
RETRY_BACKOFF_S = 0.5
"""First wait before a retry, doubled each time: long enough for a restarting server or pgBouncer to listen."""
POOL_OPEN_TIMEOUT_S = 30
"""Bound on opening the pool's connections: generous for a remote server or many processes connecting at once."""

_STOP = None


class BufferedWriter(Writer):
    """Batches rows per table; a flusher `send`s each batch and acknowledges it once committed."""

    verb: str
    """The SQL verb of a round trip, Locust's request_type."""
    option_prefix: str
    """The strategy's options are `--PREFIX-batch-size` and `--PREFIX-pool-size`."""
    options_title: str
    """The heading of those options in `locust --help`."""
    default_batch_size: int
    default_pool_size: int
    batch_help: str = "Rows per batch."
    pool_help: str = "Connections sending batches, per process."
    connection_settings: dict = {}
    """Keyword arguments every connection of the pool gets, whatever the caller's `connect_kwargs`."""

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        batch_size: int | None = None,
        pool_size: int | None = None,
        connect_kwargs: dict | None = None,
    ) -> None:
        super().__init__(events)
        batch_size = batch_size or self.default_batch_size
        pool_size = pool_size or self.default_pool_size
        self.batch_size = batch_size
        self.backlog = 2 * pool_size
        self._buffers: dict[str, list[str]] = {table: [] for table in TABLES}
        self._batches: JoinableQueue = JoinableQueue()
        self._room = Event()
        self._pool = ConnectionPool(
            conninfo,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={**(connect_kwargs or {}), **self.connection_settings},
            name=type(self).__name__,
            open=False,
        )
        self._pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        self._flushers = [gevent.spawn(self._flush_forever) for _ in range(pool_size)]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(cls.options_title)
        group.add_argument(
            f"--{cls.option_prefix}-batch-size", type=int, default=cls.default_batch_size, help=cls.batch_help
        )
        group.add_argument(
            f"--{cls.option_prefix}-pool-size", type=int, default=cls.default_pool_size, help=cls.pool_help
        )

    @classmethod
    def sizes(cls, options: argparse.Namespace) -> dict[str, int]:
        """The batch and pool sizes the options give this strategy."""
        prefix = cls.option_prefix.replace("-", "_")
        return {
            "batch_size": getattr(options, f"{prefix}_batch_size"),
            "pool_size": getattr(options, f"{prefix}_pool_size"),
        }

    @classmethod
    def from_options(cls, conninfo: str, options: argparse.Namespace, events: Events) -> BufferedWriter:
        return cls(conninfo, events, **cls.sizes(options))

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

    @abstractmethod
    def send(self, table: str, lines: list[str]) -> None:
        """Store one batch of COPY text rows of `table` in a transaction of its own (usually via `deliver`)."""


def deliver(
    writer: Writer,
    verb: str,
    pool: ConnectionPool,
    table: str,
    rows: int,
    size: int,
    attempt: Callable[[psycopg.Connection, bool], None],
) -> None:
    """Run `attempt(conn, retry)` on a connection of `pool`, timed as one `verb` round trip; retry lost connections.

    The transaction commits when `attempt` returns (unless the pool's connections are autocommit).
    `retry` is True after a lost connection: the rows may have committed before the connection
    dropped, so the attempt must then skip rows already stored. Rows the server refused (bad data:
    retrying cannot help) or that ran out of retries count as failed.
    """
    for number in range(RETRIES):
        try:
            with writer.round_trip(verb, table, rows, size), pool.connection() as conn:
                attempt(conn, number > 0)
            return
        except psycopg.OperationalError:
            gevent.sleep(RETRY_BACKOFF_S * 2**number)
            # What dropped this connection (a restart, a proxy) likely dropped its idle siblings too:
            # replace the broken ones now, or the retries could draw one dead connection after another.
            pool.check()
        except psycopg.Error:
            break  # the data itself was refused: retrying cannot help (writers.validated can)
    writer.tally.failed[table] += rows
