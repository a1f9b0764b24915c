"""What the batching strategies share: a per-process buffer, flusher greenlets, back-pressure and retries.

Rows are appended to one buffer per table; every `batch_size` rows become a batch that one of
`pool_size` flusher greenlets hands to `send`, the one thing a strategy defines (COPY, multi-row
INSERT, ...). At most `backlog` batches wait: past that, `write` blocks its engineer until a flusher
catches up (back-pressure, bounded memory). Like psycopg's COPY `Writer`s, a strategy is a subclass
that overrides one method.
"""

from __future__ import annotations

import argparse
import logging
from abc import abstractmethod
from collections.abc import Callable

import gevent
import psycopg
from gevent.event import Event
from gevent.queue import JoinableQueue
from locust.event import Events

from telemetry.generator import TraceRows
from telemetry.layout import TABLES
from writers.base import OnFatal, Writer, WriterContext
from writers.delivery import Outcome, RetryPolicy, SetupError, open_pool
from writers.partitions import rows_outside_partitions

logger = logging.getLogger("firehose")

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
    address: str = "postgres"
    """The service of the context this strategy connects to."""

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
        super().__init__(events, on_fatal, retry_policy)
        batch_size = batch_size or self.default_batch_size
        pool_size = pool_size or self.default_pool_size
        self.batch_size = batch_size
        self.backlog = 2 * pool_size
        self._buffers: dict[str, list[str]] = {table: [] for table in TABLES}
        self._batches: JoinableQueue = JoinableQueue()
        self._room = Event()
        self._pool = open_pool(
            conninfo, pool_size, type(self).__name__, **(connect_kwargs or {}), **self.connection_settings
        )
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
    def pool_option(cls) -> str | None:
        return f"{cls.option_prefix.replace('-', '_')}_pool_size" if cls.address == "postgres" else None

    @classmethod
    def from_context(cls, context: WriterContext) -> BufferedWriter:
        return cls(
            context.addresses[cls.address],
            context.events,
            on_fatal=context.on_fatal,
            retry_policy=context.retry_policy,
            **cls.sizes(context.options),
        )

    def write(self, rows: TraceRows) -> None:
        self.tally.receive(rows)
        for table, lines in rows.by_table():
            buffer = self._buffers[table]
            buffer += lines
            if len(buffer) >= self.batch_size:
                self._batches.put((table, buffer[: self.batch_size]))
                self._buffers[table] = buffer[self.batch_size :]
        # The rows are handed over above without yielding; only now may this engineer wait.
        self.wait_for_room()

    def wait_for_room(self) -> None:
        while self._batches.qsize() >= self.backlog:  # checked again on waking: another engineer may have filled it
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
            except SetupError as error:
                self.fail(error)
            except Exception:
                # Not a database error (deliver sorts those): a bug or input nothing foresaw. The flusher must
                # outlive it, and the batch's rows must count as failed, not vanish from the reconciliation.
                logger.exception("a batch of %d %s rows could not be sent", len(batch[1]), batch[0])
                self.tally.failed[batch[0]] += len(batch[1])
            finally:
                self._batches.task_done()
        self._batches.task_done()

    @abstractmethod
    def send(self, table: str, lines: list[str]) -> None:
        """Store one batch of COPY text rows of `table` in a transaction of its own (usually via `deliver_rows`)."""

    def deliver_rows(
        self, table: str, lines: list[str], size: int, attempt: Callable[[psycopg.Connection, bool], None]
    ) -> None:
        """`deliver` one batch of rows and tally it: acknowledged once committed, else failed. When the server refused
        it for rows whose time has no partition (writers.partitions), only those fail: the others are sent again."""
        try:
            delivery = self.deliver(self._pool, self.verb, table, size, attempt)
        except SetupError:
            self.tally.failed[table] += len(lines)
            raise
        if delivery.outcome is Outcome.COMMITTED:
            self.acknowledge(table, len(lines), size)
            return
        outside = rows_outside_partitions(self, self._pool, table, lines, delivery.error)
        self.tally.failed[table] += len(outside) or len(lines)
        if outside:
            split = set(outside)
            if kept := [line for position, line in enumerate(lines) if position not in split]:
                self.send(table, kept)
