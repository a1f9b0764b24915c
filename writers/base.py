"""The one interface every write strategy implements, and the bookkeeping they share.

A writer receives the rows of one trace at a time (`write`), may buffer them, and acknowledges a
row only once the database committed it. Each database round trip fires Locust's `request` event
(request_type = the SQL verb, name = the table), so the stats, the web UI and the reports see every
strategy the same way and never import a writer.

A writer starts no process and knows nothing of the run: it declares the services it writes through
(`services`), and the run hands it their addresses in its `WriterContext`.
"""

from __future__ import annotations

import argparse
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import psycopg
from hdrh.histogram import HdrHistogram
from locust.event import Events

from telemetry.generator import TraceRows
from writers.delivery import (
    DEADLINE_S,
    Connections,
    Delivery,
    Outcome,
    RetryPolicy,
    SetupError,
    as_failure,
    deliver,
)

logger = logging.getLogger("firehose")

OnFatal = Callable[[SetupError], None]
"""Told once when a writer meets an error of the setup (see writers.delivery): the run stops."""


@dataclass(frozen=True)
class WriterContext:
    """What the run gives a writer: addresses, the run's id, the options the user typed, Locust's events."""

    addresses: Mapping[str, str]
    """Service name -> address: "postgres" (a libpq DSN) always, and each service the writer declared."""
    run_id: int
    options: argparse.Namespace
    events: Events
    on_fatal: OnFatal | None = None

    @property
    def postgres(self) -> str:
        return self.addresses["postgres"]

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """The process's retry policy (--outage-deadline), one for all its writers: once one delivery has given
        up on the database, the others stop retrying."""
        return RetryPolicy(deadline_s=getattr(self.options, "outage_deadline", DEADLINE_S))


HISTOGRAM_LOWEST_US = 1
HISTOGRAM_HIGHEST_US = 3_600_000_000
"""Freshness and round-trip histograms' range, in microseconds: 1 us to an hour."""
HISTOGRAM_DIGITS = 3
"""Significant digits an HDR histogram keeps: 0.1 % error (Locust's own response times keep about 2)."""


def new_histogram() -> HdrHistogram:
    """An empty microsecond histogram of the range every tally uses (so any two merge)."""
    return HdrHistogram(HISTOGRAM_LOWEST_US, HISTOGRAM_HIGHEST_US, HISTOGRAM_DIGITS)


def _micros(seconds: float) -> int:
    return min(max(round(seconds * 1e6), HISTOGRAM_LOWEST_US), HISTOGRAM_HIGHEST_US)


@dataclass
class Tally:
    """Rows a writer received and the database acknowledged, per table, and how long rows and round trips took.

    `failed` rows were given up on (they count as lost); `quarantined` rows were refused as malformed and
    kept, with their reason, in the quarantine table (accounted for, not lost). `retries` counts round trips
    tried again after a lost connection; `blocked_s` sums, over deliveries, the seconds from a delivery's first
    failed attempt to its outcome (committed or given up): two batches blocked 10 s at once count 20 s.
    The process's live counters are read from here (firehose.report).

    Freshness (per table, microsecond HDR histogram): the time from a row being handed to the writer (`write`)
    to its commit being acknowledged. Cheap by construction: `receive` notes the wall time of each write per
    table, and `acknowledge` looks up the write that holds the oldest row of the acknowledged chunk, counting
    rows in the order they arrived (settled = acknowledged + failed + quarantined), and records that delay once
    per row of the chunk. A writer that acknowledges elsewhere than where rows arrive (the stream's consumers)
    records freshness itself from the hand-over time it carried along (`record_freshness`).
    """

    received: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    acknowledged_bytes: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    blocked_s: Counter[str] = field(default_factory=Counter)
    freshness: dict[str, HdrHistogram] = field(default_factory=dict)
    round_trips: dict[str, HdrHistogram] = field(default_factory=dict)
    """Per SQL verb (COPY, INSERT, XADD): each round trip's duration, the one Locust's request event reports."""
    track_hand_over: bool = True
    """False for writers that acknowledge rows in another process than the one that received them."""
    _handed: dict[str, deque] = field(default_factory=dict, repr=False)

    def receive(self, rows: TraceRows) -> None:
        now = time.time()
        for table, lines in (("spans", rows.spans), ("metrics", rows.metrics), ("logs", rows.logs)):
            if lines:
                self.received[table] += len(lines)
                if self.track_hand_over:
                    self._handed.setdefault(table, deque()).append((self.received[table], now))

    def settled(self, table: str) -> int:
        return self.acknowledged[table] + self.failed[table] + self.quarantined[table]

    def acknowledge(self, table: str, rows: int, size: int) -> None:
        self.acknowledged[table] += rows
        self.acknowledged_bytes[table] += size
        handed = self._handed.get(table)
        if not handed or rows <= 0:
            return
        oldest = self.settled(table) - rows + 1  # position (in order of arrival) of the chunk's oldest row
        while len(handed) > 1 and handed[0][0] < oldest:  # writes wholly settled before this chunk
            handed.popleft()
        self.record_freshness(table, rows, handed[0][1])

    def record_freshness(self, table: str, rows: int, handed_at: float) -> None:
        """`rows` rows of `table`, handed to a writer at `handed_at` (wall clock), are committed now."""
        if table not in self.freshness:
            self.freshness[table] = new_histogram()
        self.freshness[table].record_value(_micros(time.time() - handed_at), rows)

    def record_round_trip(self, verb: str, seconds: float) -> None:
        if verb not in self.round_trips:
            self.round_trips[verb] = new_histogram()
        self.round_trips[verb].record_value(_micros(seconds))

    def buffered(self) -> dict[str, int]:
        """Rows received and not yet settled (committed, failed or quarantined), per table."""
        return {table: self.received[table] - self.settled(table) for table in self.received}

    def as_dict(self, *, encode: bool = True) -> dict:
        """The counters and histograms: the one serialisation of a writer's figures (live reports, drain report,
        summary). `encode`: histograms as HdrHistogram's compressed base64 text, to travel in messages; else the
        histograms themselves (copies not taken: for the process that reads them at once)."""
        return {
            "received": dict(self.received),
            "acknowledged": dict(self.acknowledged),
            "acknowledged_bytes": dict(self.acknowledged_bytes),
            "failed": dict(self.failed),
            "quarantined": dict(self.quarantined),
            "retries": dict(self.retries),
            "blocked_s": dict(self.blocked_s),
            "freshness": {table: _encoded(h, encode) for table, h in self.freshness.items()},
            "round_trips": {verb: _encoded(h, encode) for verb, h in self.round_trips.items()},
        }


def _encoded(histogram: HdrHistogram, encode: bool) -> HdrHistogram | str:
    return histogram.encode().decode("ascii") if encode else histogram


class Writer(ABC):
    """A write strategy. One instance per process, shared by every engineer of its user class."""

    services: tuple[str, ...] = ()
    """Services besides PostgreSQL this strategy writes through ("pgbouncer", "redis"): the run starts each
    once (unless the user gave its address) and hands the address over in the WriterContext."""

    default_pool_size: int = 0
    """Connections the strategy opens per process by default (its pool option's default)."""

    lost_connection_errors: tuple[type[Exception], ...] = ()
    """Errors of a service besides PostgreSQL that say its connection was lost (retried like PostgreSQL's): a round
    trip they break shows in Locust's Failures tab as retried (writers.delivery.RetriedRoundTrip)."""

    def __init__(
        self, events: Events, on_fatal: OnFatal | None = None, retry_policy: RetryPolicy | None = None
    ) -> None:
        self.events = events
        self.tally = Tally()
        self.fatal: SetupError | None = None
        """The first error of the setup this writer met: past it, the run is stopping."""
        self._on_fatal = on_fatal
        self.retry_policy = retry_policy or RetryPolicy()
        """Shared by the process's writers (WriterContext.retry_policy): one gives up on the database, all do."""

    @classmethod  # noqa: B027 (an optional hook: most strategies add no options)
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare this strategy's command-line options (Locust's parser; shown in the web UI)."""

    @classmethod
    def pool_option(cls) -> str | None:
        """The option (its dest) that gives the PostgreSQL connections this strategy opens per process; None when
        it opens none directly (through pgBouncer, whose server pool is counted instead: firehose.run.budget)."""
        return None

    @classmethod
    @abstractmethod
    def from_context(cls, context: WriterContext) -> Writer:
        """Build the process's writer of this strategy."""

    @abstractmethod
    def write(self, rows: TraceRows) -> None:
        """Take one trace's rows. May block (cooperatively) while the database catches up."""

    def wait_for_room(self) -> None:  # noqa: B027 (an optional hook: a writer that buffers nothing never waits)
        """Return once the writer can take another trace without its buffer outgrowing its backlog. An engineer
        calls it before composing a trace, so that a waiting engineer holds no rows, and rows buffered stay bounded
        whatever the number of engineers (10,000 per process held ~95,000 rows, ~300 MB, without it)."""

    @abstractmethod
    def flush(self) -> None:
        """Send everything buffered and return once it is committed (or given up on)."""

    @abstractmethod
    def close(self) -> None:
        """Flush, then release connections. The writer is unusable afterwards."""

    def gauges(self) -> dict[str, int]:
        """Figures of the strategy's own buffer outside this process (e.g. a stream's length), for live reports."""
        return {}

    @contextmanager
    def timed(self, verb: str, name: str, size: int) -> Iterator[None]:
        """Time one round trip and report it as a Locust request (a failure if it raises); errors propagate."""
        start = time.perf_counter()
        try:
            yield
        except Exception as error:
            self._fire(verb, name, start, size, error)
            raise
        self._fire(verb, name, start, size, None)

    def deliver(
        self,
        pool: Connections,
        verb: str,
        name: str,
        size: int,
        attempt: Callable[[psycopg.Connection, bool], None],
        *,
        deduplicate: bool = False,
    ) -> Delivery:
        """`writers.delivery.deliver` under the process's retry policy; a database gone for good stops the run."""
        delivery = deliver(self, pool, verb, name, size, attempt, deduplicate=deduplicate, policy=self.retry_policy)
        if delivery.outcome is Outcome.UNAVAILABLE:
            self.fail(delivery.error)
        return delivery

    def acknowledge(self, table: str, rows: int, size: int) -> None:
        """`rows` rows of `table` (`size` bytes of COPY text) are committed."""
        self.tally.acknowledge(table, rows, size)

    def fail(self, error: SetupError) -> None:
        """Record an error of the setup and tell the run, once: every later batch would meet it too."""
        if self.fatal is None:
            self.fatal = error
            if self._on_fatal is not None:
                self._on_fatal(error)
            else:
                logger.error("%s", error)

    def _fire(self, verb: str, table: str, start: float, size: int, error: Exception | None) -> None:
        elapsed = time.perf_counter() - start
        self.tally.record_round_trip(verb, elapsed)
        self.events.request.fire(
            request_type=verb,
            name=table,
            response_time=elapsed * 1000,
            response_length=size,
            exception=as_failure(error, self.lost_connection_errors) if error is not None else None,
            context={},
        )
