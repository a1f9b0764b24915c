"""firehose's side of a Locust run, attached through Locust's events in one place (`register`).

Each process gets a `Firehose` (as `environment.firehose`) with the parts its role needs:
- the coordinator (firehose.run.coordinator) on the master or the only process: database, services, the run's
  record and start message, end detection, drain protocol, summary;
- the writing process (firehose.run.process_run) wherever users run: pools, the process's share of the run.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gevent
from locust import User
from locust.env import Environment
from locust.event import Events
from locust.runners import MasterRunner, WorkerRunner

from firehose.report import webui
from firehose.report.telemetry import attach as attach_telemetry
from firehose.run import budget, disk_guard, endpoints, probe, tuning
from firehose.run.coordinator import DRAIN_TIMEOUT_S, Coordinator
from firehose.run.messages import FATAL
from firehose.run.preflight import Refused
from firehose.run.process_run import ProcessRun, WritingProcess
from firehose.strategies import writer_classes
from telemetry.generator import TRACES_PER_ENGINEER
from users import pacing
from writers import delivery
from writers.delivery import SetupError


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
    parser.add_argument("--summary-json", default=None, help="Also write the end-of-run summary to this JSON file.")
    parser.add_argument(
        "--drain-timeout",
        type=int,
        default=DRAIN_TIMEOUT_S,
        help="Seconds the master waits at the end for live workers' final reports (their buffered rows committed). "
        "A worker past it, or one Locust found missing (killed, unreachable), is named in the summary with what "
        "is known of its rows, and the run is INCOMPLETE (exit code 1). Locust's --stop-timeout does not bound it.",
    )
    tuning.add_arguments(parser)
    pacing.add_arguments(parser)
    delivery.add_arguments(parser)
    budget.add_arguments(parser)
    disk_guard.add_arguments(parser)


class Firehose:
    """One per process, attached to the Locust environment as `environment.firehose`."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.options = environment.parsed_options
        runner = environment.runner
        self.process = None if isinstance(runner, MasterRunner) else WritingProcess(environment, self._on_fatal)
        self.coordinator = None if isinstance(runner, WorkerRunner) else Coordinator(environment, self.process)

    @property
    def process_run(self) -> ProcessRun | None:
        """This process's share of the current run (None on a master, or before the first test start)."""
        return self.process.process_run if self.process is not None else None

    def _on_fatal(self, error: Exception) -> None:
        if self.coordinator is not None:
            self.coordinator.on_fatal(str(error))
        elif (run := self.process.run_start) is not None:  # a worker: the master prints it and stops the run
            self.environment.runner.send_message(FATAL, {"run_id": run.run_id, "reason": str(error)})

    def on_test_start(self) -> None:
        try:
            if self.coordinator is not None:
                self.coordinator.on_test_start()
            if self.process is not None:
                self.process.on_test_start()
        except Exception as error:  # e.g. a service that would not start: one line and the run stops, no traceback
            self._on_fatal(SetupError(f"the run could not start: {one_line(error)}"))

    def on_test_stop(self) -> None:
        if self.coordinator is not None:
            self.coordinator.on_test_stop()  # drains this process's users first, when it has any
        elif self.process is not None:
            self.process.drain()


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
    """Attach firehose to Locust's events. The writers of `user_classes`, and the user classes that have
    an `add_arguments` classmethod (the analysts), declare their options; a selected user class with a
    `configure(options)` classmethod applies them at init, before any spawn (e.g. --analysts)."""

    @events.init_command_line_parser.add_listener
    def _(parser: argparse.ArgumentParser) -> None:
        locust_own = set(parser._actions)
        add_arguments(parser)
        for writer_class in writer_classes(user_classes):
            writer_class.add_arguments(parser)
        for user_class in user_classes:
            if callable(declare := getattr(user_class, "add_arguments", None)):
                declare(parser)
        webui.show_in_form([action for action in parser._actions if action not in locust_own])

    @events.init.add_listener
    def _(environment: Environment, **_kwargs) -> None:
        if not isinstance(environment.runner, WorkerRunner):  # the master's (or only) dispatcher spawns users
            for user_class in environment.user_classes:
                if callable(configure := getattr(user_class, "configure", None)):
                    configure(environment.parsed_options)
        try:
            environment.firehose = firehose = Firehose(environment)
        except Refused as refusal:  # one line, exit code 2, before anything ran (Locust's traceback stays out)
            sys.stderr.write(f"firehose: {refusal}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        gevent.signal_handler(signal.SIGINT, _interrupt_main_greenlet)
        events.test_start.add_listener(lambda **_: firehose.on_test_start())
        events.test_stop.add_listener(lambda **_: firehose.on_test_stop())
        if (coordinator := firehose.coordinator) is not None:
            events.spawning_complete.add_listener(lambda **_: coordinator.on_spawning_complete())
            events.worker_report.add_listener(
                lambda client_id, data, **_: coordinator.on_worker_report(client_id, data)
            )
            events.quitting.add_listener(lambda **_: coordinator.on_quitting())
        if (process := firehose.process) is not None:
            events.report_to_master.add_listener(lambda data, **_: process.on_report_to_master(data))
        firehose.telemetry = attach_telemetry(environment, firehose)  # after the listeners above: it reads them

    probe.register(events)  # the migration-lock probe (--migration-probe): after the listeners above
