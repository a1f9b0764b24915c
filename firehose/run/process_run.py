"""One writing process's side of a run: its addresses, writer key, event ids, writers and engineers' seeds.

Every process that runs users (the local runner, or each worker) is a `WritingProcess`. It builds the
value pools once, keeps the addresses the user gave it (Locust overwrites a worker's options with the
master's at every spawn, so they are read at init), and at each test start opens a `ProcessRun` from the
run-start message, its own addresses winning over the master's.

A `ProcessRun`'s writer key, drawn from a database sequence, numbers its events (`EventIds`), so a run's
rows are found and counted by key range, whatever process or machine wrote them. The key's row also
records the address the process used (application name, client address), for the DBA and the tests.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import gevent
import psycopg
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from locust.env import Environment
from locust.runners import WorkerRunner
from psycopg.conninfo import make_conninfo

from firehose.run.endpoints import given_addresses
from firehose.run.messages import DRAIN, DRAINED, ENGINEERS, FATAL, FIGURES, RUN_START, WRITER_KEY, RunStart
from firehose.run.preflight import cannot_connect
from firehose.run.reach import refusal
from firehose.run.records import register_writer_key
from telemetry.counts import GeneratedCounts
from telemetry.durations import parse_duration
from telemetry.generator import WINDOW_S, EngineerTelemetry, EventIds, engineer_seed
from telemetry.pools import CATALOGUE_SEED, Pools
from writers.base import OnFatal, Writer, WriterContext

logger = logging.getLogger("firehose")

T = TypeVar("T")


class ProcessRun:
    """What the users of one process share during one run."""

    def __init__(
        self,
        run: RunStart,
        process_name: str,
        process_index: int,
        pools: Pools,
        options: argparse.Namespace,
        environment: Environment,
        on_fatal: OnFatal,
    ) -> None:
        # Every connection of the process carries its name (unless the DSN names one): pg_stat_activity
        # tells the processes apart.
        self.addresses = {
            name: make_conninfo(address, fallback_application_name=process_name) if name != "redis" else address
            for name, address in run.addresses.items()
        }
        self.conninfo = self.addresses["postgres"]
        self.process_name = process_name
        self.run_id = run.run_id
        self.seed = run.seed
        self.anchor_us = run.anchor_us
        self.process_index = process_index
        self.history_s = parse_duration(options.history) if getattr(options, "history", None) else WINDOW_S
        """The span of time generated telemetry falls in, ending at the anchor (--history)."""
        self.pools = pools
        self.options = options
        self.events = environment.events
        self.closing = False
        self.engineers_started = 0
        self.engineers_finished = 0
        self.generated = GeneratedCounts(pools.topologies)
        """The generator's own counts of the traces this process's engineers handed to writers."""
        self.writing_since: float | None = None
        """Wall-clock time the first engineer asked for a writer: where the run's write rate starts."""
        self._context = WriterContext(self.addresses, self.run_id, options, self.events, on_fatal)
        self._writers: dict[type[Writer], Writer] = {}
        self._shared: dict[Callable, object] = {}
        self._report: dict | None = None
        self._draining = Semaphore()
        self._creating = Semaphore()
        self._sharing = Semaphore()
        self.ids = EventIds(register_writer_key(self.conninfo, self.run_id))

    def engineer_telemetry(self, traces: int) -> EngineerTelemetry:
        """The next engineer's telemetry: its seed derives from the run's, so a seed replays a run."""
        self.engineers_started += 1
        seed = engineer_seed(self.seed, self.process_index, self.engineers_started)
        return EngineerTelemetry(self.pools, seed, anchor_us=self.anchor_us, traces=traces, window_s=self.history_s)

    def writer(self, writer_class: type[Writer]) -> Writer:
        """This process's writer of that strategy, created on first use (after Locust forked)."""
        if self.writing_since is None:
            self.writing_since = time.time()
        with self._creating:  # connecting yields: the other engineers must wait, not build their own
            if writer_class not in self._writers:
                self._writers[writer_class] = writer_class.from_context(self._context)
        return self._writers[writer_class]

    def shared(self, factory: Callable[[ProcessRun], T]) -> T:
        """The object `factory(self)` built once for this process and run (e.g. the analysts' query runner).

        Every later call with the same factory returns that object; `drain` closes it if it has `close()`.
        """
        with self._sharing:  # building one may connect, which yields: other greenlets must wait, not build another
            if factory not in self._shared:
                self._shared[factory] = factory(self)
        return self._shared[factory]  # type: ignore[return-value]

    def writers(self) -> list[Writer]:
        """This process's writers so far (one per strategy its engineers used): their tallies are its counters."""
        return list(self._writers.values())

    def rows_acknowledged(self) -> int:
        """Rows this process's writers have seen committed so far."""
        return sum(sum(writer.tally.acknowledged.values()) for writer in self._writers.values())

    def figures(self) -> dict:
        """Rows received and acknowledged so far per table, all writers together: small enough for every report."""
        received: dict[str, int] = {}
        acknowledged: dict[str, int] = {}
        for writer in self._writers.values():
            for totals, counter in ((received, writer.tally.received), (acknowledged, writer.tally.acknowledged)):
                for table, rows in counter.items():
                    totals[table] = totals.get(table, 0) + rows
        return {
            "run_id": self.run_id,
            "writer_key": self.ids.writer_key,
            "received": received,
            "acknowledged": acknowledged,
        }

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
                    "process": self.process_name,
                    "writing_since": self.writing_since,
                    "writers": {type(writer).__name__: writer.tally.as_dict() for writer in self._writers.values()},
                    "generated_counts": self.generated.as_dict(),
                    "shared": {
                        type(shared).__name__: shared.report()
                        for shared in self._shared.values()
                        if callable(getattr(shared, "report", None))
                    },
                }
        return self._report


class WritingProcess:
    """A process that runs users: the local runner, or a worker. Opens a ProcessRun at each test start."""

    def __init__(self, environment: Environment, on_fatal: OnFatal) -> None:
        self.environment = environment
        self.options = environment.parsed_options
        self.own_addresses = given_addresses(self.options)
        """What the user gave this process, read before Locust overwrites its options with the master's."""
        self.on_fatal = on_fatal
        self.process_run: ProcessRun | None = None
        self.run_start: RunStart | None = None
        # ~1.5 s of CPU: in a real thread, so this process's greenlets (heartbeats to the master among
        # them) keep running; test start waits for it.
        self._pools: AsyncResult = gevent.get_hub().threadpool.spawn(Pools.build, CATALOGUE_SEED)
        if self.is_worker:
            environment.runner.register_message(RUN_START, self._on_run_start)
            environment.runner.register_message(DRAIN, self._on_drain_request, concurrent=True)

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment.runner, WorkerRunner)

    @property
    def name(self) -> str:
        if self.is_worker:
            return f"firehose worker {self.environment.runner.worker_index}"
        return "firehose"

    def begin(self, run: RunStart) -> None:
        """Open this process's share of `run` (from the run-start message, or the local coordinator)."""
        run = run.with_own(self.own_addresses)
        index = self.environment.runner.worker_index if self.is_worker else 0
        self.process_run = ProcessRun(
            run, self.name, index, self._pools.get(), self.options, self.environment, self.on_fatal
        )
        if self.is_worker:  # before any row is written: a worker that dies from now on is known by its key
            key = {"run_id": run.run_id, "writer_key": self.process_run.ids.writer_key, "worker_index": index}
            self.environment.runner.send_message(WRITER_KEY, key)

    def on_test_start(self) -> None:
        """A worker's test start: the run-start message arrived before Locust's spawn message. A worker that
        cannot reach where the run writes refuses it (`_refuse`)."""
        if not self.is_worker:
            return
        if self.run_start is None:
            raise RuntimeError("no run-start message from the master before the spawn message")
        run = self.run_start
        line = refusal(run.loopback, run.addresses, self.own_addresses)
        if line is None:
            try:
                self.begin(run)
                return
            except psycopg.Error as error:  # registering the writer key connects first (or finds the DSN malformed)
                conninfo = run.with_own(self.own_addresses).addresses["postgres"]
                line = f"{cannot_connect(conninfo, error)}: give this worker a --pg-dsn it reaches"
        self._refuse(line)

    def engineers(self) -> tuple[int, int]:
        """This process's engineers (started, finished) in the current run."""
        run = self.process_run
        return (run.engineers_started, run.engineers_finished) if run else (0, 0)

    def on_report_to_master(self, data: dict) -> None:
        """Workers add their engineer counts and figures to every stats report (every few seconds, and at the end)."""
        if self.process_run is not None:
            data[ENGINEERS] = self.engineers()
            data[FIGURES] = self.process_run.figures()

    def drain(self) -> dict | None:
        """Commit what this process buffered; its final report (sent to the master from a worker)."""
        if self.process_run is None:
            return None
        report = self.process_run.drain()
        if self.is_worker:
            self._send_final(report)
        return report

    def _refuse(self, line: str) -> None:
        """Say `line` here and to the master (which stops the run), and quit with exit code 2 before any user
        of ours runs: the quit is scheduled ahead of the spawning Locust starts after this test start."""
        sys.stderr.write(f"firehose: {line}\n")
        sys.stderr.flush()
        host = socket.gethostname()
        self.environment.runner.send_message(
            FATAL, {"run_id": self.run_start.run_id, "reason": f"{self.name} on {host}: {line}"}
        )
        self.environment.process_exit_code = 2
        gevent.spawn(self.environment.runner.quit)

    def _on_run_start(self, environment: Environment, msg) -> None:
        self.run_start = RunStart.from_message(msg.data)

    def _on_drain_request(self, environment: Environment, msg) -> None:
        if self.process_run is not None and self.process_run.run_id == msg.data["run_id"]:
            self._send_final(self.process_run.drain())

    def _send_final(self, report: dict) -> None:
        """A stats report first (its live counters are then final on the master), then the drained report."""
        self.environment.runner._send_stats()  # Locust's own report, which fires report_to_master
        self.environment.runner.send_message(DRAINED, report)
