"""Redis Streams strategy: engineers XADD their traces to a stream; a consumer group COPYs them to PostgreSQL.

This module is the producing side, the Writer the engineers use; the consuming side (reading batches, COPY,
XACK) is `writers.stream_consumer`, whose greenlets the writer owns and stops once the stream is empty.

Producing: each `write` is one XADD of the trace (one entry per trace, its three tables' COPY rows in three
fields: the coarsest entry costs the client the least CPU per row), tallied as received, and returns once Redis
answered it. The process's sender greenlets send the XADDs queued by all its engineers in pipelined round trips
(with one XLEN that keeps the backlog estimate fresh). While the backlog is at `--stream-max-len` entries, `write`
blocks its engineer (cooperatively) instead of trimming: MAXLEN would silently drop rows.

Redis restarts: the run's Redis keeps an append-only file fsynced at every write (services.redis_server), so
an acknowledged XADD, the consumer group and its pending entries survive a SIGTERM or a kill -9. Through the
outage the producer retries its XADD (`--outage-deadline`); an XADD whose reply the restart cut may have
landed and is sent again: the duplicate entry's rows are already stored and count nowhere twice.
Measured costs and the A/B runs behind these choices: docs/performance-notes.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import gevent
import redis
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from locust.event import Events

from telemetry.generator import TraceRows
from telemetry.layout import TABLES
from writers.base import OnFatal, Writer, WriterContext
from writers.copy import copy_data
from writers.delivery import RetryPolicy, SetupError
from writers.stream_consumer import HANDED_AT, Entry, StreamConsumers, StreamKeys

logger = logging.getLogger(__name__)

BATCH_SIZE = 5_000
"""Rows a consumer takes per batch (the seed's COPY batch), spread over one COPY per table."""
ROWS_PER_ENTRY = 19
"""Rows in one trace's entry on average (8.5 spans + 5.5 metrics + 5 logs): turns rows into XREADGROUP's COUNT."""
CONSUMERS = 4
"""Consumer greenlets per writing process, each with its PostgreSQL connection: more than the cores, because
each consumer's connection idles while it reads and settles a batch (docs/performance-notes.md)."""
MAX_LEN = 5_000
"""Entries (one trace, ~62 KB of Redis memory each) before engineers wait: ~95k rows, ~310 MB of Redis memory,
a few seconds of PostgreSQL's COPY rate."""
CLAIM_IDLE_S = 30.0
"""Pending this long, an entry's consumer is taken for dead and XAUTOCLAIM hands the entry to another
(`--stream-claim-idle`). A live consumer holds a batch for its three COPYs (about a second), far below this;
one that was only slow loses nothing to a claim either: the claimer's de-duplicating COPY skips stored rows."""
REDIS_CONNECTIONS = 64
"""Redis connections per process, a bound: the senders, the consumers and the engineer polling for room use one each."""
SENDERS = 8
"""Greenlets per process sending queued XADDs: while some wait for Redis's fsync, others send (fewer left the
stream nearly empty: docs/performance-notes.md)."""
PIPELINE_TRACES = 10
"""XADDs (one trace each, ~57 KB) a sender pipelines in one round trip at most: one per round trip costs the client
about twice the CPU per row (docs/performance-notes.md)."""
ROOM_POLL_S = 0.05
"""While the stream is full, one engineer polls XLEN this often: a consumer frees a batch every ~0.3 s."""
DRAIN_POLL_S = 0.1
DRAIN_TIMEOUT_S = 240
"""`close` gives up after this (entries left count as lost). A master stops waiting for a process's final report
after --drain-timeout (60 s by default) and names a process still draining then as late: a backlog that takes
longer makes the run INCOMPLETE rather than hang it."""

T = TypeVar("T")


class StreamWriter(Writer):
    """XADDs each trace to the run's stream; the process's consumer greenlets COPY batches, then XACK them."""

    verb = "COPY"
    services = ("redis",)
    default_pool_size = CONSUMERS
    lost_connection_errors = (redis.ConnectionError, redis.TimeoutError)
    senders = SENDERS
    """Sender greenlets per process (see SENDERS)."""
    pipeline_traces = PIPELINE_TRACES
    """Traces a sender takes from the queue at once (see PIPELINE_TRACES)."""
    rows_per_entry = ROWS_PER_ENTRY
    """Rows in one stream entry on average: turns --stream-batch-size into XREADGROUP's COUNT."""

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        redis_url: str,
        run_id: int,
        batch_size: int = BATCH_SIZE,
        consumers: int = CONSUMERS,
        max_len: int = MAX_LEN,
        claim_idle_s: float = CLAIM_IDLE_S,
        on_fatal: OnFatal | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(events, on_fatal, retry_policy)
        self.tally.track_hand_over = False  # rows are acknowledged by whichever process consumes them
        self.keys = self.stream_keys(run_id)
        self.stream, self.group, self.refused_stream = self.keys.stream, self.keys.group, self.keys.refused
        self.max_len = max_len
        self.claim_idle_ms = max(1, round(claim_idle_s * 1000))
        self._redis_pool = redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=REDIS_CONNECTIONS, timeout=None
        )
        self.redis = redis.Redis(connection_pool=self._redis_pool)
        self.create_group()
        # Back-pressure estimate: the last XLEN seen, plus own XADDs since; never below the truth for this process.
        self._length = 0
        self._in_flight = 0
        self._added = 0
        self._last_id: tuple[int, int] | None = None
        self._outbox: Queue = Queue()
        """Traces waiting for a sender: (payload, rows, the engineer's AsyncResult); None stops a sender."""
        self._senders = [gevent.spawn(self._send_forever) for _ in range(self.senders)]
        self._polling = Semaphore()
        self._closing = False
        self._writes = 0
        """`write` calls under way, waiting for room included: `close` waits for them before judging the stream."""
        self._consumers = StreamConsumers(self, conninfo, consumers, per_read=max(1, batch_size // self.rows_per_entry))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Redis Streams strategy")
        group.add_argument(
            "--stream-batch-size", type=int, default=BATCH_SIZE, help="Rows a consumer COPYs per batch (all tables)."
        )
        group.add_argument(
            "--stream-consumers",
            type=int,
            default=CONSUMERS,
            help="Consumers (each with a PostgreSQL connection) per writing process; 0: the process only produces.",
        )
        group.add_argument(
            "--stream-max-len",
            type=int,
            default=MAX_LEN,
            help="Entries (one per trace: ~19 rows, ~62 KB of Redis memory) the stream holds before engineers "
            "wait. Nothing is trimmed.",
        )
        group.add_argument(
            "--stream-claim-idle",
            type=float,
            default=CLAIM_IDLE_S,
            metavar="SECONDS",
            help="An entry pending this long is taken from its consumer (dead, e.g. its process killed) by another "
            "with XAUTOCLAIM, and stored through the de-duplicating path.",
        )

    @classmethod
    def pool_option(cls) -> str | None:
        return "stream_consumers"  # each consumer holds one PostgreSQL connection

    @classmethod
    def from_context(cls, context: WriterContext) -> StreamWriter:
        options = context.options
        return cls(
            context.postgres,
            context.events,
            redis_url=context.addresses["redis"],
            run_id=context.run_id,
            batch_size=options.stream_batch_size,
            consumers=options.stream_consumers,
            max_len=options.stream_max_len,
            claim_idle_s=options.stream_claim_idle,
            on_fatal=context.on_fatal,
            retry_policy=context.retry_policy,
        )

    def write(self, rows: TraceRows) -> None:
        if self._closing:  # close() has decided when the stream is empty: an entry now would never be consumed
            self._refuse(rows)
            logger.error("a trace of %d rows arrived after the stream writer closed: counted as failed", len(rows))
            return
        self._writes += 1
        try:
            try:
                self._wait_for_room()
            except RedisUnreachable as error:
                self._refuse(rows)
                self.fail(error)
                return
            self._in_flight += 1  # before yielding: the next engineer must see this room as taken
            payload = {table: copy_data(lines) for table, lines in rows.by_table()}
            payload[HANDED_AT] = b"%.6f" % time.time()  # for the consumer's freshness figure
            # Received before sending: if the reply is lost the entry may still have landed, and be counted.
            self.tally.receive(rows)
            # A sender XADDs it: when Locust kills the engineer while it waits, the XADD and its tally still complete.
            added = AsyncResult()
            self._outbox.put((payload, rows, added))
            added.get()
        finally:
            self._writes -= 1

    def flush(self) -> None:
        """Return once every entry this writer added has been committed and acknowledged, by any consumer."""
        self._wait_until(lambda: self._in_flight == 0, "this writer's XADDs")
        if self._last_id is not None and not self.given_up():
            last = "%d-%d" % self._last_id
            self._wait_until(lambda: not self.redis.xrange(self.stream, "-", last, count=1), "this writer's entries")

    def close(self) -> None:
        """Stop the consumers once the stream is empty: every entry, this writer's included, is committed and acked.

        Other processes' entries too: one that only produces, or one that died, relies on these consumers.
        Writes already under way (an engineer waiting for room) finish first; later ones are refused, counted.
        Once the database or Redis is taken for gone (--outage-deadline), nothing more can be stored: the entries
        stay in the stream, for a later consumer, and close does not wait for them.
        """
        self._closing = True
        self._wait_until(lambda: self._writes == 0, "the writes under way")
        for _ in self._senders:
            self._outbox.put(None)
        gevent.joinall(self._senders)
        self._wait_until(lambda: self.given_up() or self.redis.xlen(self.stream) == 0, self.stream)
        self._consumers.stop()
        if self.retry_policy.gone is not None:
            self._report_left()
        self._redis_pool.disconnect()

    def _report_left(self) -> None:
        """Say what stays behind, not written, once the database is gone."""
        try:
            left = self.redis.xlen(self.stream)
        except redis.RedisError:
            left = "its"
        logger.error(
            "the database is gone: %s entries stay in Redis stream %s, not written to PostgreSQL", left, self.stream
        )

    def gauges(self) -> dict[str, int]:
        """The run's stream now: entries waiting (length) and entries read but not yet acknowledged (pending)."""
        if self._consumers.stopping:  # closed: its connections are gone
            return {}
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                length, pending = pipe.xlen(self.stream).xpending(self.stream, self.group).execute()
        except redis.RedisError:  # restarting: no figure rather than a failed report
            return {}
        return {"stream_length": length, "stream_pending": pending["pending"]}

    def given_up(self) -> bool:
        """The database or Redis stayed out of reach past the deadline: nothing more can be stored."""
        return self.retry_policy.gone is not None or isinstance(self.fatal, RedisUnreachable)

    def _refuse(self, rows: TraceRows) -> None:
        """Count a trace that never reached the stream as received and failed."""
        self.tally.receive(rows)
        for table, lines in rows.by_table():
            self.tally.failed[table] += len(lines)

    def stream_keys(self, run_id: int) -> StreamKeys:
        """The Redis keys this writer produces to and consumes from: the run's one stream."""
        return StreamKeys.of_run(run_id)

    def read_entries(self, entries: list[Entry]) -> list[Entry]:
        """The entries a consumer read, with their rows (a stream entry holds them: as they are)."""
        return entries

    def entries_settled(self, entries: list[Entry]) -> None:
        """Called once a consumer has settled these entries (stored and acknowledged)."""

    def create_group(self) -> None:
        """The run's consumer group (and stream), unless another process (or this one, before a restart) made it."""
        try:  # from id 0: entries another process added before the group existed are delivered too
            self.with_redis(lambda: self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # BUSYGROUP: another process of the run created it first
                raise

    def with_redis(self, call: Callable[[], T], name: str | None = None) -> T:
        """`call()`, retried through a Redis restart (lost connections) until the outage deadline.

        Redis retries and blocked seconds are tallied under `name` (the stream), when given.
        """
        waits: Iterator[float] | None = None
        blocked_since = 0.0
        try:
            while True:
                try:
                    return call()
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    if waits is None:
                        waits, blocked_since = self.retry_policy.waits(), time.monotonic()
                    if (wait := next(waits, None)) is None:
                        raise RedisUnreachable(self.retry_policy.deadline_s, error) from error
                    if name is not None:
                        self.tally.retries[name] += 1
                    gevent.sleep(wait)
        finally:
            if waits is not None and name is not None:
                self.tally.blocked_s[name] += time.monotonic() - blocked_since

    # Producing

    def _backlog(self) -> int:
        return self._length + self._in_flight

    def _wait_for_room(self) -> None:
        """Block while the stream is full; one engineer polls Redis while the others queue behind it."""
        while self._backlog() >= self.max_len:
            with self._polling:
                while self._backlog() >= self.max_len:
                    added = self._added
                    length = self._measure_backlog()
                    self._length = length + self._added - added  # own XADDs that completed meanwhile
                    if self._backlog() >= self.max_len:
                        gevent.sleep(ROOM_POLL_S)

    def _measure_backlog(self) -> int:
        """The backlog now, in the unit of `max_len`: the stream's length."""
        return self.with_redis(lambda: self.redis.xlen(self.stream))

    def _send_forever(self) -> None:
        """XADD the queued traces, up to PIPELINE_TRACES per round trip, until told to stop."""
        while (first := self._outbox.get()) is not None:
            batch = [first]
            while len(batch) < self.pipeline_traces:
                try:
                    item = self._outbox.get_nowait()
                except Empty:
                    break
                if item is None:  # stop after this batch
                    self._outbox.put(None)
                    break
                batch.append(item)
            self._add(batch)

    def _add(self, batch: list[tuple[dict, TraceRows, AsyncResult]]) -> None:
        """XADD a batch of traces in one round trip, and tell each engineer; a trace that did not land is failed."""
        size = sum(len(value) for payload, _, _ in batch for key, value in payload.items() if key != HANDED_AT)
        added = self._added

        def xadd() -> list:
            with self.timed("XADD", self.stream, size), self.redis.pipeline(transaction=False) as pipe:
                for payload, _, _ in batch:
                    pipe.xadd(self.stream, payload)
                return pipe.xlen(self.stream).execute()

        try:
            # A re-sent XADD may duplicate an entry whose reply a restart cut: its rows are stored once (see above).
            *entry_ids, length = self.with_redis(xadd, self.stream)
        except Exception as error:
            for _, rows, _ in batch:
                for table in TABLES:
                    self.tally.failed[table] += len(getattr(rows, table))
            if isinstance(error, RedisUnreachable):
                self.fail(error)
            for _, _, done in batch:
                if isinstance(error, RedisUnreachable):  # Redis gone: the run stops (fail above)
                    done.set(None)
                else:  # any other error is raised to the engineer, as Locust reports it
                    done.set_exception(error)
            return
        finally:
            self._in_flight -= len(batch)
        # `length` may miss own XADDs that completed meanwhile on other connections: count them back in.
        self._length = length + self._added - added
        self._added += len(batch)
        for entry_id in entry_ids:
            ms, seq = entry_id.split(b"-")
            self._last_id = max(self._last_id or (0, 0), (int(ms), int(seq)))
        for _, _, done in batch:
            done.set(None)

    def _wait_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not self._done(done):
            if time.monotonic() > deadline:
                logger.error("%s not consumed in %d s: what is left counts as lost", what, DRAIN_TIMEOUT_S)
                return
            gevent.sleep(DRAIN_POLL_S)

    @staticmethod
    def _done(done: Callable[[], bool]) -> bool:
        try:
            return done()
        except (redis.ConnectionError, redis.TimeoutError):  # Redis restarting: ask again
            return False


class RedisUnreachable(SetupError):
    """Redis stayed out of reach past the outage deadline: the run stops, as for an error of the setup."""

    def __init__(self, deadline_s: float, error: Exception) -> None:
        reason = str(error).strip() or type(error).__name__
        super().__init__(f"Redis has been unreachable for {deadline_s:g} s ({reason})")
