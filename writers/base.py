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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from locust.event import Events

from telemetry.generator import TraceRows
from writers.delivery import SetupError

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


@dataclass
class Tally:
    """Rows a writer received and the database acknowledged, per table.

    `failed` rows were given up on (they count as lost); `quarantined` rows were refused as malformed and
    kept, with their reason, in the quarantine table (accounted for, not lost).
    """

    received: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    acknowledged_bytes: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)

    def receive(self, rows: TraceRows) -> None:
        self.received["spans"] += len(rows.spans)
        self.received["metrics"] += len(rows.metrics)
        self.received["logs"] += len(rows.logs)

    def as_dict(self) -> dict:
        return {
            "received": dict(self.received),
            "acknowledged": dict(self.acknowledged),
            "acknowledged_bytes": dict(self.acknowledged_bytes),
            "failed": dict(self.failed),
            "quarantined": dict(self.quarantined),
        }


class Writer(ABC):
    """A write strategy. One instance per process, shared by every engineer of its user class."""

    services: tuple[str, ...] = ()
    """Services besides PostgreSQL this strategy writes through ("pgbouncer", "redis"): the run starts each
    once (unless the user gave its address) and hands the address over in the WriterContext."""

    def __init__(self, events: Events, on_fatal: OnFatal | None = None) -> None:
        self.events = events
        self.tally = Tally()
        self.fatal: SetupError | None = None
        """The first error of the setup this writer met: past it, the run is stopping."""
        self._on_fatal = on_fatal

    @classmethod  # noqa: B027 (an optional hook: most strategies add no options)
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare this strategy's command-line options (Locust's parser; shown in the web UI)."""

    @classmethod
    @abstractmethod
    def from_context(cls, context: WriterContext) -> Writer:
        """Build the process's writer of this strategy."""

    @abstractmethod
    def write(self, rows: TraceRows) -> None:
        """Take one trace's rows. May block (cooperatively) while the database catches up."""

    @abstractmethod
    def flush(self) -> None:
        """Send everything buffered and return once it is committed (or given up on)."""

    @abstractmethod
    def close(self) -> None:
        """Flush, then release connections. The writer is unusable afterwards."""

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

    def acknowledge(self, table: str, rows: int, size: int) -> None:
        """`rows` rows of `table` (`size` bytes of COPY text) are committed."""
        self.tally.acknowledged[table] += rows
        self.tally.acknowledged_bytes[table] += size

    def fail(self, error: SetupError) -> None:
        """Record an error of the setup and tell the run, once: every later batch would meet it too."""
        if self.fatal is None:
            self.fatal = error
            if self._on_fatal is not None:
                self._on_fatal(error)
            else:
                logger.error("%s", error)

    def _fire(self, verb: str, table: str, start: float, size: int, error: Exception | None) -> None:
        self.events.request.fire(
            request_type=verb,
            name=table,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
