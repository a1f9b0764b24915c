"""firehose's side of a Locust run, attached through Locust's events in one place (`register`).

Each process gets a `Firehose` with the parts its role needs:
- the coordinator (firehose.run.coordinator) on the master or the only process: database, services, the run's
  record and start message, end detection, drain protocol, summary;
- the writing process (firehose.run.process_run) wherever users run: pools, the process's share of the run,
  handed to the user classes as `users.run.RunUser.process`;
- the live telemetry (firehose.report.telemetry) on the master or the only process.
`register` adds one listener per Locust event, and each calls these parts in the order written there: no
listener depends on the order in which listeners were added.
"""

from __future__ import annotations

import argparse
import signal
from threading import Event

import gevent
from locust import User, runners
from locust.env import Environment
from locust.event import Events
from locust.runners import MasterRunner, WorkerRunner

from firehose.report import webui
from firehose.report.telemetry import Telemetry
from firehose.run import budget, disk_guard, endpoints, kept, partitions, parts, replica, tuning
from firehose.run.coordinator import DRAIN_TIMEOUT_S, Coordinator
from firehose.run.messages import FATAL, SNAPSHOT
from firehose.run.preflight import Refused, check_options
from firehose.run.process_run import WritingProcess
from firehose.run.refusal import check_when_parsed, end_workers, forked_workers, refuse
from firehose.strategies import writer_classes
from services.postgres import redact
from telemetry.generator import TRACES_PER_ENGINEER
from users.run import RunUser
from writers import delivery
from writers.delivery import SetupError

LOCUST_WORKER_GONE_AFTER_S = -runners.HEARTBEAT_DEAD_INTERNAL
"""Locust's own wait before it drops a missing worker, read once: --worker-gone-after changes the constant."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """firehose's own options (each writer adds its own)."""
    endpoints.add_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, help="Seed of the run's telemetry (default: random).")
    parser.add_argument(
        "--traces-per-engineer",
        type=int,
        default=TRACES_PER_ENGINEER,
        help="Traces each engineer emits (~19 events each: ~1,900 events for 100).",
    )
    parser.add_argument(
        "--continuous",
        action="store_true",
        default=False,
        help="Engineers start over with new telemetry until the run ends. Default: each emits its events "
        "once and stops, and the run ends when all have finished (the seed's fixed-volume experiment).",
    )
    parser.add_argument(
        "--history",
        default="1h",
        help="Span of time the generated telemetry falls in, ending when the run starts (e.g. 1h, 3d), so that "
        "the analysts' time filters select a fraction of the table.",
    )
    partitions.add_arguments(parser)
    parser.add_argument("--summary-json", default=None, help="Also write the end-of-run summary to this JSON file.")
    parser.add_argument(
        "--drain-timeout",
        type=int,
        default=DRAIN_TIMEOUT_S,
        help="Seconds the master waits at the end for live workers' final reports (their buffered rows committed). "
        "A worker past it, or one Locust found missing (killed, unreachable), is named in the summary with what "
        "is known of its rows, and the run is INCOMPLETE (exit code 3). Locust's --stop-timeout does not bound it.",
    )
    parser.add_argument(
        "--worker-gone-after",
        type=int,
        default=LOCUST_WORKER_GONE_AFTER_S,
        help="Seconds a worker Locust found missing may stay silent before the master drops it and gives its "
        "users to the other workers (default: Locust's own wait). A fixed-volume run waits for those users' "
        "engineers, so a lower value ends it sooner after a worker dies.",
    )
    tuning.add_arguments(parser)
    delivery.add_arguments(parser)
    budget.add_arguments(parser)
    disk_guard.add_arguments(parser)
    kept.add_arguments(parser)
    replica.add_arguments(parser)
    for part in parts.PARTS:
        part.add_arguments(parser)


class Firehose:
    """One per process: the parts its role needs, called from Locust's events in the order each step needs."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        runner = environment.runner
        self.process = None if isinstance(runner, MasterRunner) else WritingProcess(environment, self._on_fatal)
        self.coordinator = None if isinstance(runner, WorkerRunner) else Coordinator(environment, self.process)
        self.telemetry: Telemetry | None = None
        """The live telemetry, where there is a coordinator."""
        if (coordinator := self.coordinator) is not None:
            self.telemetry = telemetry = Telemetry(
                environment, self._local_snapshot if self.process else None, check_form_options
            )
            telemetry.gauges = coordinator.replica_gauges
            coordinator.summary_extras["live"] = lambda: telemetry.final_totals(coordinator.reports.values())
            # The target is the database: Locust's Host field shows it (redacted), and its "no host" warning goes.
            environment.host = redact(coordinator.postgres)

    def _local_snapshot(self) -> dict | None:
        run = self.process.process_run
        return run.snapshot(encode=False) if run is not None else None

    def _on_fatal(self, error: Exception) -> None:
        if self.coordinator is not None:
            self.coordinator.on_fatal(str(error))
        elif (run := self.process.run_start) is not None:  # a worker: the master prints it and stops the run
            self.environment.runner.send_message(FATAL, {"run_id": run.run_id, "reason": str(error)})

    def on_test_start(self) -> None:
        """The coordinator records the run (and hands it to this process's users), a worker opens its share, and
        the live telemetry counts the recorded run."""
        try:
            if self.coordinator is not None:
                self.coordinator.on_test_start()
            if self.process is not None:
                self.process.on_test_start()
        except Exception as error:  # e.g. a service that would not start: one line and the run stops, no traceback
            self._on_fatal(SetupError(f"the run could not start: {one_line(error)}"))
        if self.coordinator is not None and (run := self.coordinator.run) is not None:
            self.telemetry.begin(run.run_id)

    def on_test_stop(self) -> None:
        """Drain (the coordinator drains this process's users first, then the workers', and summarises), then
        show the run's end in the web UI (which reports the run as running until then), then keep the summary."""
        if self.coordinator is None:
            self.process.drain()
            return
        try:
            self.coordinator.on_test_stop()
        finally:
            self.telemetry.end(self.coordinator.summary)
        self.coordinator.keep_summary()

    def on_spawning_complete(self) -> None:
        if self.coordinator is not None:
            self.coordinator.on_spawning_complete()

    def on_report_to_master(self, data: dict) -> None:
        """A worker's stats report: its snapshot goes with it."""
        if self.process is not None:
            self.process.on_report_to_master(data)

    def on_worker_report(self, client_id: str, data: dict) -> None:
        """On the master, a worker's stats report: its snapshot to the ledger of workers and to the live view."""
        if self.coordinator is not None and (snapshot := data.get(SNAPSHOT)) is not None:
            self.coordinator.on_worker_snapshot(client_id, snapshot)
            self.telemetry.absorb(snapshot)

    def on_worker_connect(self, client_id: str) -> None:
        """On the master, a worker connected (see Coordinator.on_worker_connect)."""
        if self.coordinator is not None:
            self.coordinator.on_worker_connect(client_id)

    def on_quitting(self) -> None:
        """The coordinator stops the run's users and services, then the live telemetry writes its files (also
        when the first failed, e.g. a lever not restored on a database that is gone)."""
        if self.coordinator is not None:
            try:
                self.coordinator.on_quitting()
            finally:
                self.telemetry.on_quitting()


def check_form_options(options: argparse.Namespace) -> tuple[str, str | None] | None:
    """The command line's checks of the web form's values: None, or the refusal and its option's dest."""
    try:
        check_options(options)
    except Refused as refusal:
        return str(refusal), refusal.option
    return None


def _interrupt_main_greenlet() -> None:
    """Ctrl-C as Locust expects it (KeyboardInterrupt in its main greenlet, which then shuts down and drains),
    but always there: Python's default handler raises it in whatever greenlet runs, and a writer's flusher or
    consumer killed so loses the rows it held."""
    gevent.get_hub().parent.throw(KeyboardInterrupt)


def one_line(error: Exception) -> str:
    """An error's message on one line (a server's log tail may follow its first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3]) or type(error).__name__


def register(events: Events, user_classes: list[type[User]]) -> None:
    """Attach firehose to Locust's events, one listener per event. The writers of `user_classes` and the run's
    parts declare their options; a selected user class with a `configure(options)` classmethod applies them at
    init, before any spawn (e.g. --analysts)."""
    parsed = Event()
    """Set once the command line passed firehose's checks (only the first parse is Locust's start)."""

    @events.init_command_line_parser.add_listener
    def _(parser: argparse.ArgumentParser) -> None:
        def declare(parser: argparse.ArgumentParser) -> None:
            add_arguments(parser)
            for writer_class in writer_classes(user_classes):
                writer_class.add_arguments(parser)

        webui.declare_in_form(parser, declare)
        if not parsed.is_set():
            check_when_parsed(parser, user_classes, parsed.set)

    @events.init.add_listener
    def _(environment: Environment, **_kwargs) -> None:
        workers = forked_workers() if getattr(environment.parsed_options, "processes", None) else []
        if isinstance(environment.runner, MasterRunner):  # Locust has no option for it: its module's constant
            runners.HEARTBEAT_DEAD_INTERNAL = -environment.parsed_options.worker_gone_after
        if not isinstance(environment.runner, WorkerRunner):  # the master's (or only) dispatcher spawns users
            for user_class in environment.user_classes:
                if callable(configure := getattr(user_class, "configure", None)):
                    configure(environment.parsed_options)
        try:
            firehose = Firehose(environment)
        except Refused as refusal:  # one line, exit code 2, before anything ran (Locust's traceback stays out)
            end_workers(workers)
            refuse(refusal)
        RunUser.process = firehose.process
        gevent.signal_handler(signal.SIGINT, _interrupt_main_greenlet)
        events.test_start.add_listener(lambda **_: firehose.on_test_start())
        events.test_stop.add_listener(lambda **_: firehose.on_test_stop())
        events.spawning_complete.add_listener(lambda **_: firehose.on_spawning_complete())
        events.report_to_master.add_listener(lambda data, **_: firehose.on_report_to_master(data))
        events.worker_report.add_listener(lambda client_id, data, **_: firehose.on_worker_report(client_id, data))
        events.worker_connect.add_listener(lambda client_id, **_: firehose.on_worker_connect(client_id))
        events.quitting.add_listener(lambda **_: firehose.on_quitting())
