"""The Locust side of a run: options, the database, run bookkeeping, draining and the summary.

Everything attaches through Locust's events (`register`), in this order:
- init: the master (or local runner) resolves the database, starting the embedded server when no
  DSN is given, and creates the schema; writing processes build the value pools.
- test_start: the master records the run and hands its id, seed and time anchor to the workers
  through the parsed options (Locust forwards custom options in its spawn message); every writing
  process opens its `ProcessRun`.
- test_stop: writing processes drain their writers; the master asks workers to drain, waits for
  every writer key of the run to report, counts the run's rows in the database and prints the summary.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Callable

import gevent
import psycopg
from gevent.event import AsyncResult
from locust import User
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_RUNNING, MasterRunner, WorkerRunner

from firehose import tuning
from firehose.database import EMBEDDED_PORT, EmbeddedPostgres, apply_schema, dsn_from_environment, redact
from firehose.session import ProcessRun, open_run
from firehose.summary import RunSummary, count_in_database
from telemetry.generator import TRACES_PER_ENGINEER
from telemetry.pools import Pools

logger = logging.getLogger("firehose")

DRAIN = "firehose:drain"
DRAINED = "firehose:drained"
ENGINEERS = "firehose_engineers"
DRAIN_TIMEOUT_S = 300
"""How long the master waits for workers to commit what they buffered: a few backlogs of batches."""
POOL_SEED = 0
"""Pools are a fixed catalogue (same in every process); the run's seed varies what is drawn from them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """firehose's own options (each writer adds its own)."""
    parser.add_argument(
        "--pg-dsn",
        default=None,
        include_in_web_ui=False,  # a DSN may hold a password
        help="libpq DSN of the target PostgreSQL. Default: the PG* variables when set, else an embedded "
        "PostgreSQL started on 127.0.0.1 (kept under the cache dir, stopped at exit).",
    )
    parser.add_argument("--embedded-port", type=int, default=EMBEDDED_PORT, help="Port of the embedded PostgreSQL.")
    parser.add_argument("--embedded-data-dir", default=None, help="Data directory of the embedded PostgreSQL.")
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
    parser.add_argument("--summary-json", default=None, help="Also write the end-of-run summary to this JSON file.")


class Firehose:
    """One per process, attached to the Locust environment as `environment.firehose`."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.options = environment.parsed_options
        self.embedded: EmbeddedPostgres | None = None
        self._pools: AsyncResult | None = None
        self.process_run: ProcessRun | None = None
        self.run_id: int | None = None
        self.started_at = 0.0
        self.reports: dict[int, dict] = {}
        self.engineer_reports: dict[str, tuple[int, int]] = {}
        self.summary: RunSummary | None = None
        self._stops: list[Callable[[], None]] = []

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.environment.runner, MasterRunner)

    def on_init(self) -> None:
        runner = self.environment.runner
        if not self.is_worker:
            self.options.pg_dsn = self._database()
            self._stops.append(tuning.apply(self.options.pg_dsn, self.options))
            for writer_class in _writer_classes(self.environment.user_classes):
                if (stop := writer_class.prepare(self.options)) is not None:
                    self._stops.append(stop)
        if not self.is_master:
            # ~1.5 s of CPU: in a real thread, so this process's greenlets (heartbeats to the master
            # among them) keep running; test start waits for it.
            self._pools = gevent.get_hub().threadpool.spawn(Pools.build, POOL_SEED)
        if self.is_worker:
            runner.register_message(DRAIN, self._on_drain_request, concurrent=True)
        elif self.is_master:
            runner.register_message(DRAINED, self._on_drained)

    def _database(self) -> str:
        conninfo = self.options.pg_dsn if self.options.pg_dsn is not None else dsn_from_environment()
        if conninfo is None:
            self.embedded = EmbeddedPostgres(self.options.embedded_data_dir, self.options.embedded_port)
            conninfo = self.embedded.start()
            logger.info("embedded PostgreSQL on %s (data in %s)", redact(conninfo), self.embedded.data_dir)
        else:
            apply_schema(conninfo)
        return conninfo

    def on_test_start(self) -> None:
        if not self.is_worker:
            seed = self.options.seed if self.options.seed is not None else random.getrandbits(62)
            label = " ".join(sorted(user_class.__name__ for user_class in self.environment.user_classes))
            run_id = open_run(self.options.pg_dsn, seed, label)
            self.options.firehose_run = {"run_id": run_id, "seed": seed, "anchor_us": int(time.time() * 1e6)}
            self.run_id, self.started_at, self.summary = run_id, time.time(), None
            self.reports, self.engineer_reports = {}, {}
        if not self.is_master:
            run = self.options.firehose_run
            runner = self.environment.runner
            self.process_run = ProcessRun(
                self.options.pg_dsn,
                run["run_id"],
                run["seed"],
                run["anchor_us"],
                runner.worker_index if self.is_worker else 0,
                self._pools.get(),
                self.options,
                self.environment.events,
            )

    def on_spawning_complete(self) -> None:
        """Without --continuous, end the run once every engineer has emitted its telemetry."""
        if not self.is_worker and not self.options.continuous:
            gevent.spawn(self._finish_when_done)

    def engineers(self) -> tuple[int, int]:
        """Engineers (started, finished) in the whole run: this process's, or the workers' latest reports."""
        if not self.is_master:
            run = self.process_run
            return (run.engineers_started, run.engineers_finished) if run else (0, 0)
        reports = list(self.engineer_reports.values())
        return sum(started for started, _ in reports), sum(finished for _, finished in reports)

    def _finish_when_done(self) -> None:
        # Counting engineers, not users: a master may see 0 users before workers have spawned any,
        # and engineers that finish between two reports would never be seen at all.
        runner = self.environment.runner
        while runner.state == STATE_RUNNING:
            gevent.sleep(0.5)
            started, finished = self.engineers()
            if finished and finished >= started >= runner.target_user_count:
                logger.info("all %d engineers have emitted their telemetry: ending the run", finished)
                runner.quit() if self.options.headless else runner.stop()
                return

    def on_report_to_master(self, data: dict) -> None:
        """Workers add their engineer counts to every stats report (every few seconds, and at the end)."""
        if self.process_run is not None:
            data[ENGINEERS] = (self.process_run.engineers_started, self.process_run.engineers_finished)

    def on_worker_report(self, client_id: str, data: dict) -> None:
        if ENGINEERS in data:
            self.engineer_reports[client_id] = tuple(data[ENGINEERS])

    def on_test_stop(self) -> None:
        if self.process_run is not None:
            report = self.process_run.drain()
            if self.is_worker:
                self.environment.runner.send_message(DRAINED, report)
            else:
                self.reports[report["writer_key"]] = report
        if not self.is_worker and self.run_id is not None:
            if self.is_master:
                self._collect_worker_reports()
            self._summarise()

    def _on_drain_request(self, environment: Environment, msg) -> None:
        if self.process_run is not None and self.process_run.run_id == msg.data["run_id"]:
            environment.runner.send_message(DRAINED, self.process_run.drain())

    def _on_drained(self, environment: Environment, msg) -> None:
        if msg.data["run_id"] == self.run_id:
            self.reports[msg.data["writer_key"]] = msg.data

    def _collect_worker_reports(self) -> None:
        """Ask workers to drain and wait until every writer key of the run has reported."""
        self.environment.runner.send_message(DRAIN, {"run_id": self.run_id})
        with psycopg.connect(self.options.pg_dsn, autocommit=True) as conn:
            keys = {
                row[0]
                for row in conn.execute("SELECT writer_key FROM firehose_writer_keys WHERE run_id = %s", [self.run_id])
            }
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not keys <= self.reports.keys() and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if missing := keys - self.reports.keys():
            logger.error("no final report from writer keys %s: their rows count as lost", sorted(missing))

    def _summarise(self) -> None:
        run = self.options.firehose_run
        in_database, duplicates = count_in_database(self.options.pg_dsn, self.run_id)
        self.summary = RunSummary(
            run_id=self.run_id,
            seed=run["seed"],
            database=redact(self.options.pg_dsn),
            started_at=self.started_at,
            ended_at=time.time(),
            reports=list(self.reports.values()),
            in_database=in_database,
            duplicates=duplicates,
        )
        sys.stdout.write(self.summary.render() + "\n")
        sys.stdout.flush()
        if self.options.summary_json:
            self.summary.write_json(self.options.summary_json)
        events = self.summary.as_dict()["events"]
        if events["lost"] or events["duplicates"]:
            self.environment.process_exit_code = 1

    def on_quitting(self) -> None:
        for stop in reversed(self._stops):
            stop()
        if self.embedded is not None:
            self.embedded.stop()


def register(events: Events, user_classes: list[type[User]]) -> None:
    """Attach firehose to Locust's events; the writers of `user_classes` declare their options."""

    @events.init_command_line_parser.add_listener
    def _(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)
        tuning.add_arguments(parser)
        for writer_class in _writer_classes(user_classes):
            writer_class.add_arguments(parser)

    @events.init.add_listener
    def _(environment: Environment, **_kwargs) -> None:
        environment.firehose = firehose = Firehose(environment)
        firehose.on_init()
        events.test_start.add_listener(lambda **_: firehose.on_test_start())
        events.spawning_complete.add_listener(lambda **_: firehose.on_spawning_complete())
        events.test_stop.add_listener(lambda **_: firehose.on_test_stop())
        events.report_to_master.add_listener(lambda data, **_: firehose.on_report_to_master(data))
        events.worker_report.add_listener(lambda client_id, data, **_: firehose.on_worker_report(client_id, data))
        events.quitting.add_listener(lambda **_: firehose.on_quitting())


def _writer_classes(user_classes: list[type[User]]) -> list[type]:
    """The write strategies of these user classes, each once."""
    found = {user.writer_class for user in user_classes if getattr(user, "writer_class", None) is not None}
    return sorted(found, key=lambda cls: cls.__name__)
