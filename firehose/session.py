"""One process's share of a run: its writer key, event ids, writers and engineers' seeds.

Every process that writes (the local runner, or each worker) opens a `ProcessRun` at test start.
Its writer key, drawn from a database sequence, numbers its events (`EventIds`), so a run's rows
are found and counted by key range, whatever process or machine wrote them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import psycopg
from gevent.lock import Semaphore
from locust.event import Events

from telemetry.generator import EngineerTelemetry, EventIds, engineer_seed
from telemetry.pools import Pools

if TYPE_CHECKING:
    from writers.base import Writer

Shared = TypeVar("Shared")


def open_run(conninfo: str, seed: int, label: str) -> int:
    """Record a new run and return its id."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (%s, %s) RETURNING run_id", [seed, label])
        return row.fetchone()[0]


class ProcessRun:
    """What the engineers of one process share during one run."""

    def __init__(
        self,
        conninfo: str,
        run_id: int,
        seed: int,
        anchor_us: int,
        process_index: int,
        pools: Pools,
        options: argparse.Namespace,
        events: Events,
    ) -> None:
        self.conninfo = conninfo
        self.run_id = run_id
        self.seed = seed
        self.anchor_us = anchor_us
        self.process_index = process_index
        self.pools = pools
        self.options = options
        self.events = events
        self.closing = False
        self.engineers_started = 0
        self.writing_since: float | None = None
        """Wall-clock time the first engineer asked for a writer: where the run's write rate starts."""
        self.engineers_finished = 0
        self._writers: dict[type[Writer], Writer] = {}
        self._report: dict | None = None
        self._draining = Semaphore()
        self._creating = Semaphore()
        self._shared: dict[Callable[[ProcessRun], object], object] = {}
        self._sharing = Semaphore()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            key = conn.execute(
                "INSERT INTO firehose_writer_keys (writer_key, run_id)"
                " VALUES (nextval('firehose_writer_key'), %s) RETURNING writer_key",
                [run_id],
            ).fetchone()[0]
        self.ids = EventIds(key)

    def engineer_telemetry(self, traces: int) -> EngineerTelemetry:
        """The next engineer's telemetry: its seed derives from the run's, so a seed replays a run."""
        self.engineers_started += 1
        seed = engineer_seed(self.seed, self.process_index, self.engineers_started)
        return EngineerTelemetry(self.pools, seed, anchor_us=self.anchor_us, traces=traces)

    def writer(self, writer_class: type[Writer]) -> Writer:
        """This process's writer of that strategy, created on first use (after Locust forked)."""
        if self.writing_since is None:
            self.writing_since = time.time()
        with self._creating:  # connecting yields: the other engineers must wait, not build their own
            if writer_class not in self._writers:
                self._writers[writer_class] = writer_class.from_options(self.conninfo, self.options, self.events)
        return self._writers[writer_class]

    def shared(self, factory: Callable[[ProcessRun], Shared]) -> Shared:
        """The object `factory(self)` built once for this process (e.g. the analysts' query runner).

        Every later call with the same factory returns that object; `drain` closes it if it has `close()`.
        """
        with self._sharing:  # building one may connect, which yields: other greenlets must wait, not build another
            if factory not in self._shared:
                self._shared[factory] = factory(self)
        return self._shared[factory]

    def drain(self) -> dict:
        """Stop taking rows, commit everything buffered, and report. Idempotent."""
        self.closing = True
        with self._draining:  # test_stop and the master's drain request may both ask
            if self._report is None:
                with self._sharing:  # first: readers stop competing with the writers' last batches
                    for shared in self._shared.values():
                        if callable(close := getattr(shared, "close", None)):
                            close()
                for writer in self._writers.values():
                    writer.close()
                self._report = {
                    "run_id": self.run_id,
                    "writer_key": self.ids.writer_key,
                    "writing_since": self.writing_since,
                    "writers": {type(writer).__name__: writer.tally.as_dict() for writer in self._writers.values()},
                }
        return self._report
