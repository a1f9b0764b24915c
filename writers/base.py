"""The one interface every write strategy implements, and the bookkeeping they share.

A writer receives the rows of one trace at a time (`write`), may buffer them, and acknowledges a
row only once the database committed it. Each database round trip fires Locust's `request` event
(request_type = the SQL verb, name = the table), so the stats, the web UI and the reports see every
strategy the same way and never import a writer.
"""

from __future__ import annotations

import argparse
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from locust.event import Events

from telemetry.generator import TraceRows

TABLES = ("spans", "metrics", "logs")


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

    def __init__(self, events: Events) -> None:
        self.events = events
        self.tally = Tally()

    @classmethod  # noqa: B027 (an optional hook: most strategies add no options)
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare this strategy's command-line options (Locust's parser; shown in the web UI)."""

    @classmethod
    def prepare(cls, options: argparse.Namespace) -> Callable[[], None] | None:
        """Start what this strategy needs besides PostgreSQL (pgBouncer, Redis), once, on the master.

        Runs at Locust's init on the master or local runner, only when a user class of this strategy
        is selected. Record addresses in `options` (Locust forwards custom options to workers) and
        return a function that stops what was started, or None when nothing was.
        """
        return None

    @classmethod
    @abstractmethod
    def from_options(cls, conninfo: str, options: argparse.Namespace, events: Events) -> Writer:
        """Build the process's writer from the parsed options."""

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

    @contextmanager
    def round_trip(self, verb: str, table: str, rows: int, size: int) -> Iterator[None]:
        """A `timed` round trip that, when it succeeds, acknowledges `rows` rows of `table`."""
        with self.timed(verb, table, size):
            yield
        self.tally.acknowledged[table] += rows
        self.tally.acknowledged_bytes[table] += size

    def _fire(self, verb: str, table: str, start: float, size: int, error: Exception | None) -> None:
        self.events.request.fire(
            request_type=verb,
            name=table,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
