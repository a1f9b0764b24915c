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

import gevent
import psycopg
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from locust.env import Environment
from locust.runners import WorkerRunner
from psycopg.conninfo import make_conninfo

from firehose.run import parts
from firehose.run.endpoints import given_addresses
from firehose.run.messages import DRAIN, DRAINED, FATAL, RUN_START, SNAPSHOT, WRITER_KEY, RunStart
from firehose.run.preflight import cannot_connect
from firehose.run.reach import refusal
from firehose.run.records import register_writer_key
from telemetry.counts import GeneratedCounts
from telemetry.durations import parse_duration
from telemetry.generator import WINDOW_S, EngineerTelemetry, EventIds, engineer_seed
from telemetry.pools import CATALOGUE_SEED, Pools
from users.analyst import QueryRunner
from users.run import P, Part
from writers.base import OnFatal, Writer, WriterContext

logger = logging.getLogger("firehose")


class ProcessRun:
    """What the users of one process share during one run (the `users.run.Run` its users and parts see)."""

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
        self._parts: dict[type[Part], Part] = {}
        self._report: dict | None = None
        self._draining = Semaphore()
        self._creating = Semaphore()
        self._building_parts = Semaphore()
        self.ids = EventIds(register_writer_key(self.conninfo, self.run_id))
        for part_class in parts.PARTS:
            if part_class.starts_with_run(options):
                self.part(part_class)

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

    def part(self, part_class: type[P]) -> P:
        """This process's `part_class` for the run (e.g. the analysts' query runner), built once by
        `part_class.for_run(self)`; `drain` closes it and reports it under its name."""
        with (
            self._building_parts
        ):  # building one may connect, which yields: other greenlets must wait, not build another
            if part_class not in self._parts:
                self._parts[part_class] = part_class.for_run(self)
        return self._parts[part_class]  # type: ignore[return-value]

    def rows_acknowledged(self) -> int:
        """Rows this process's writers have seen committed so far."""
        return sum(sum(writer.tally.acknowledged.values()) for writer in self._writers.values())

    def snapshot(self, *, encode: bool = True) -> dict:
        """This process's counters now: its engineers, per writer its tally (writers.base.Tally.as_dict) and
        gauges, and its analysts' queries so far (QueryRunner.report, for the web UI's live query percentiles).
        Sent with every stats report from a worker, read at once by the local live view (`encode` False), and
        the start of the final report (`drain`)."""
        queries = self._parts.get(QueryRunner)
        return {
            "run_id": self.run_id,
            "writer_key": self.ids.writer_key,
            "at": time.time(),
            "engineers": [self.engineers_started, self.engineers_finished],
            "writers": {
                type(writer).__name__: {**writer.tally.as_dict(encode=encode), "gauges": writer.gauges()}
                for writer in self._writers.values()
            },
            "queries": queries.report() if queries is not None else None,
        }

    def drain(self) -> dict:
        """Stop taking rows, commit everything buffered, and report. Idempotent."""
        self.closing = True
        with self._draining:  # test_stop and the master's drain request may both ask
            if self._report is None:
                with self._building_parts:  # first: readers stop competing with the writers' last batches
                    for part in self._parts.values():
                        part.close()
                for writer in self._writers.values():
                    writer.close()
                self._report = {
                    **self.snapshot(),
                    "process": self.process_name,
                    "writing_since": self.writing_since,
                    "generated_counts": self.generated.as_dict(),
                    "parts": {part.name: part.report() for part in self._parts.values()},
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
        # ~1 s of CPU when not cached yet: in a real thread, so this process's greenlets (heartbeats to the master among
        # them) keep running; test start waits for it.
        self._pools: AsyncResult = gevent.get_hub().threadpool.spawn(Pools.cached, CATALOGUE_SEED)
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
        """A worker's stats report (every few seconds) carries its snapshot."""
        if self.process_run is not None:
            data[SNAPSHOT] = self.process_run.snapshot()

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
        """The final report to the master: its figures are the worker's last (its live view and summary read them)."""
        self.environment.runner.send_message(DRAINED, report)
