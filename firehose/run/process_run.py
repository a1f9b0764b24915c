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
import os
import socket
import sys
import time

import gevent
import psycopg
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from locust.argument_parser import get_parser
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING, WorkerRunner
from psycopg.conninfo import make_conninfo

from firehose.run import parts
from firehose.run.endpoints import given_addresses
from firehose.run.exit_codes import ExitCode
from firehose.run.messages import DRAIN, DRAINED, FATAL, JOIN, REFUSED, RUN_START, SNAPSHOT, WRITER_KEY, RunStart
from firehose.run.partitions import live_clock
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


def history_seconds(options: argparse.Namespace) -> int:
    """--history in seconds (the generator's hour when the option is absent or empty)."""
    return parse_duration(options.history) if getattr(options, "history", None) else WINDOW_S


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
        self.users = run.users
        self.processes = run.processes
        self.history_s = history_seconds(options)
        """The span of time generated telemetry falls in, ending at the anchor (--history)."""
        self.clock = live_clock(options, run.anchor_us)
        """The data's clock under --timestamps live (each trace stamped when composed); None under history."""
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
        return EngineerTelemetry(
            self.pools, seed, anchor_us=self.anchor_us, traces=traces, window_s=self.history_s, clock=self.clock
        )

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


def send_request_stats(runner: WorkerRunner) -> None:
    """Send this worker's request stats to the master now, as Locust does every 3 s (a private method of its runner):
    at a headless run's end the master waits only 0.5 s for the workers' last stats before it exits, which a loaded
    machine misses (a short run's requests then never reach the master's stats). The one call of it."""
    runner._send_stats()


def another_runs(run: RunStart, served: str | None, forked_by: int | None, parent: int) -> str | None:
    """Why a worker refuses `run`, if it does: `served` is the master it serves (None before its first run),
    `forked_by` the process that forked it (--processes; None for a worker started on its own), `parent` its
    parent now."""
    if forked_by is not None and parent != forked_by:
        return f"the master that started it (pid {forked_by}) is gone: it belongs to a run that ended"
    if served is not None and run.master != served:
        return f"it serves the master {served}, not {run.master}: start a worker for this run"
    return None


class WritingProcess:
    """A process that runs users: the local runner, or a worker. Opens a ProcessRun at each test start.

    A worker that joins a running test gets its users from Locust before its own init (so before test start's
    listeners exist): at init it asks the master for the run under way (JOIN), opens its share when the run-start
    message comes (`_on_run_start`), and its users wait for it (`wait_for_run`).

    A worker serves one master (`RunStart.master`): a run-start message from another one (its own master died and
    another took the port), or any at all once the master that forked it (`--processes`) is gone, is another run's.
    It refuses that run with one line here and at the master (REFUSED) and quits; the run goes on without it.
    """

    def __init__(self, environment: Environment, on_fatal: OnFatal) -> None:
        self.environment = environment
        self.options = environment.parsed_options
        self.own_addresses = given_addresses(self._own_options())
        """What the user gave this process, read before Locust overwrites its options with the master's."""
        self.on_fatal = on_fatal
        self.process_run: ProcessRun | None = None
        self.run_start: RunStart | None = None
        self.master: str | None = None
        """The master this worker serves: the first whose run-start message it took."""
        self.forked_by = os.getppid() if getattr(self.options, "processes", None) else None
        """The master (or worker parent) that forked this process, with --processes: it serves no other."""
        self.refused = False
        self._opened = Event()
        """Set once this process's share of a run is open, or cannot be: users that started first wait for it."""
        # ~1 s of CPU when not cached yet: in a real thread, so this process's greenlets (heartbeats to the master among
        # them) keep running; test start waits for it.
        self._pools: AsyncResult = gevent.get_hub().threadpool.spawn(Pools.cached, CATALOGUE_SEED)
        if self.is_worker:
            environment.runner.register_message(RUN_START, self._on_run_start)
            environment.runner.register_message(DRAIN, self._on_drain_request, concurrent=True)
            environment.runner.send_message(JOIN, {})

    def _own_options(self) -> argparse.Namespace:
        """The options the user gave this process. A worker that joined a running test got Locust's spawn message,
        which overwrites its options with the master's, before this init: its command line is parsed again."""
        runner = self.environment.runner
        if self.is_worker and runner.worker_state in (STATE_SPAWNING, STATE_RUNNING):
            return get_parser().parse_args(sys.argv[1:])
        return self.options

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
        self._opened.set()

    def wait_for_run(self, timeout: float) -> None:
        """Return once this process's share of the current run is open, or cannot be, at most `timeout` seconds:
        a worker that joined a running test waits for the master's answer to its JOIN."""
        if self.is_worker and self.process_run is None and not self.refused:
            self._opened.wait(timeout)

    def on_test_start(self) -> None:
        """A worker's test start: the run-start message arrived before Locust's spawn message (else, a worker
        joining a running test, it opens its share when the message comes). A worker that cannot reach where the
        run writes refuses it (`_refuse`)."""
        if self.is_worker and not self.refused and self.run_start is not None:
            self._open(self.run_start, joining=False)

    def _open(self, run: RunStart, *, joining: bool) -> None:
        line = refusal(run.loopback, run.addresses, self.own_addresses)
        if line is None:
            try:
                self.begin(run)
                return
            except psycopg.Error as error:  # registering the writer key connects first (or finds the DSN malformed)
                conninfo = run.with_own(self.own_addresses).addresses["postgres"]
                line = f"{cannot_connect(conninfo, error)}: give this worker a --pg-dsn it reaches"
        if joining:  # the run is under way without it: it goes on
            self._refuse_run(run, line)
        else:
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
            if self.environment.process_exit_code is None:  # its share is drained: the run's verdict is the master's
                self.environment.process_exit_code = ExitCode.OK
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
        self.environment.process_exit_code = ExitCode.BAD_SETTING
        self.refused = True
        self._opened.set()
        gevent.spawn(self.environment.runner.quit)

    def _refuse_run(self, run: RunStart, line: str) -> None:
        """Refuse `run` with `line`, here and at the master (which goes on without this worker), and quit."""
        self.refused = True
        self._opened.set()  # users that started first stop: no share of the run opens here
        sys.stderr.write(f"firehose: {self.name} refuses run {run.run_id}: {line}\n")
        sys.stderr.flush()
        reason = f"{self.name} on {socket.gethostname()} (pid {os.getpid()}) refuses it and quits: {line}"
        self.environment.runner.send_message(REFUSED, {"run_id": run.run_id, "reason": reason})
        self.environment.process_exit_code = ExitCode.BAD_SETTING
        gevent.spawn(self.environment.runner.quit)  # before a spawn message that follows is handled

    def _on_run_start(self, environment: Environment, msg) -> None:
        run = RunStart.from_message(msg.data)
        if self.refused:
            return
        if (line := another_runs(run, self.master, self.forked_by, os.getppid())) is not None:
            self._refuse_run(run, line)
            return
        self.master, self.run_start = run.master, run
        running = environment.runner.worker_state in (STATE_SPAWNING, STATE_RUNNING)
        if running and (self.process_run is None or self.process_run.run_id != run.run_id):
            self._open(run, joining=True)  # joined a running test: Locust's test start came before this message

    def _on_drain_request(self, environment: Environment, msg) -> None:
        if self.process_run is not None and self.process_run.run_id == msg.data["run_id"]:
            self._send_final(self.process_run.drain())

    def _send_final(self, report: dict) -> None:
        """The final report to the master: its figures are the worker's last (its live view and summary read them).
        Locust's request stats go first, so they are in before the master's quit (see `send_request_stats`)."""
        send_request_stats(self.environment.runner)
        self.environment.runner.send_message(DRAINED, report)
