"""The run's coordinator, on the master (or the only process): what is decided once for the whole run.

- init: resolve the database (starting the embedded server when no DSN is given) and apply the levers.
- test start: start the services the selected writers declare, record the run, and send what it decided
  (`RunStart`) to the workers, or hand it to this process's own users.
- end detection: without --continuous, end the run once every engineer has emitted its telemetry.
- drain protocol: at test stop, ask every worker to commit what it buffered and wait, at most --drain-timeout,
  until every writer key of the run has reported, except those of workers Locust found missing or dropped
  (firehose.run.worker_ledger); then count the run's rows per writer key and print the summary, naming every
  worker that did not report (an INCOMPLETE run).
- a worker that joins a running test asks for the run at its init (JOIN: Locust connects it, and hands it users,
  before its init, so a message sent on `worker_connect` would come too early); it gets the run-start message,
  opens its share under a writer key of its own and reconciles like the others. A worker of another run refuses
  it (REFUSED, one line here and there) and quits, and the run goes on without it.
- an error of the setup anywhere (`writers.delivery.SetupError`) stops the run with one clear line.
- the exit code says how the run ended (firehose.run.exit_codes): the summary's verdict, whatever Locust counted
  as failed requests (a round trip a restart broke is retried, not failed), or STOPPED; a failed --check turns
  an OK run's into CHECKS_FAILED (firehose.run.kept: the summary kept and checked).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import psycopg
import redis
from locust import User
from locust.env import Environment
from locust.runners import STATE_INIT, STATE_RUNNING, STATE_SPAWNING, MasterRunner
from locust.stats import StatsError

from firehose.report import checks
from firehose.run import budget, disk_guard, kept, partitions, preflight, replica, tuning
from firehose.run.endpoints import RunServices
from firehose.run.exit_codes import ExitCode, of_failures, of_verdict
from firehose.run.messages import DRAIN, DRAINED, FATAL, JOIN, REFUSED, RUN_START, WRITER_KEY, RunStart
from firehose.run.process_run import WritingProcess, history_seconds
from firehose.run.records import open_run
from firehose.run.summary import RunSummary, count_in_database
from firehose.run.worker_ledger import WorkerLedger
from firehose.strategies import class_names, writer_classes
from services.postgres import redact
from writers.delivery import RetriedRoundTrip
from writers.valve import ValveWriter, left_in_spools

logger = logging.getLogger("firehose")

DRAIN_TIMEOUT_S = 60
"""--drain-timeout's default: how long the master waits for live workers to commit what they buffered. A COPY
backlog of a few batches commits in seconds here; a worker past this is named in the summary, not waited for."""
DRAIN_POLL_S = 0.1
"""How often the master looks for final reports, and for workers gone, while it waits."""
END_CHECK_S = 0.5
"""How often the end of a fixed-volume run is checked."""


class Coordinator:
    """The master's (or local runner's) job in a run. `local` is this process's own users, when it has any."""

    def __init__(self, environment: Environment, local: WritingProcess | None) -> None:
        self.environment = environment
        self.options = environment.parsed_options
        self.local = local
        self.services = RunServices.from_options(self.options)
        self._check_and_start_database()
        try:
            self._restore_levers: Callable[[], None] = tuning.apply(self.services.postgres, self.options)
        except (psycopg.Error, ValueError) as error:
            self.services.stop()
            reason = error.diag.message_primary if isinstance(error, psycopg.Error) else str(error)
            needs = (
                " (server levers need a superuser)" if isinstance(error, psycopg.errors.InsufficientPrivilege) else ""
            )
            raise preflight.Refused(f"--pg-setting / --jsonb-compression refused: {reason}{needs}") from None
        embedded_dir = self.services.embedded.data_dir if self.services.embedded is not None else None
        self.disk_guard = disk_guard.DiskGuard.from_options(self.postgres, self.options, embedded_dir, self.on_fatal)
        if self._valve_selected():  # the spool's bytes count in the floor, on whichever volume it is
            self.disk_guard.also_watch(Path(self.options.valve_spool))
        self.disk_guard.count_wal = self.replica_how == "--replica"
        self.run: RunStart | None = None
        self.started_at = 0.0
        self.fatal: str | None = None
        self.reports: dict[int, dict] = {}
        """Final (drained) reports by writer key."""
        self.unaccounted: list[dict] = []
        """Writer keys of the run with no final report, with what is known of their workers."""
        self.workers = WorkerLedger(environment.runner) if self.is_master else None
        self._end_watch: gevent.Greenlet | None = None
        self.summary: RunSummary | None = None
        self._summary_kept = False
        self.replica_watch: replica.ReplicaWatch | None = None
        self.partition_keeper: partitions.PartitionKeeper | None = None
        self.summary_extras: dict[str, Callable[[], object]] = {
            "connection_budget": lambda: self.connection_budget,
            "disk_guard": self.disk_guard.report,
            "valve": self._left_in_spools,
        }
        """Sections other parts add to the summary (the lifecycle: the live totals), computed when it is made."""
        if self.replica_how is not None:
            self.summary_extras["replica"] = lambda: self.replica_watch.report() if self.replica_watch else None
        if self.is_master:
            environment.runner.register_message(DRAINED, self._on_drained)
            environment.runner.register_message(WRITER_KEY, self._on_writer_key)
            environment.runner.register_message(FATAL, self._on_fatal_message)
            environment.runner.register_message(REFUSED, self._on_refused)
            environment.runner.register_message(JOIN, self._on_join)

    def _valve_selected(self) -> bool:
        writers = [getattr(user, "writer_class", None) for user in self.environment.user_classes]
        return any(writer is not None and issubclass(writer, ValveWriter) for writer in writers)

    def _left_in_spools(self) -> list[dict] | None:
        """The valve's pointers nobody stored, per spool (None when no ValveEngineer ran, or Redis is gone)."""
        if self.run is None or "redis" not in self.run.addresses or not self._valve_selected():
            return None
        try:
            return left_in_spools(self.run.addresses["redis"], self.run.run_id)
        except redis.RedisError as error:
            logger.warning("valve: the run's Redis could not say what its spools hold (%s)", error)
            return None

    def _check_and_start_database(self) -> None:
        """Refuse settings that cannot work (firehose.run.preflight) before anything starts, then start the database."""
        given = self.services.given
        preflight.check_options(self.options)
        disk_guard.check_options(self.options)
        replica.check_options(self.options, given)
        if "postgres" in given:
            preflight.check_database(given["postgres"])  # before the schema step: no table of another shape touched
        if "redis" in given:
            preflight.check_redis(given["redis"])
        named = [user for user in self.environment.user_classes if user.__name__ in (self.options.user_classes or ())]
        needed = {service for writer in writer_classes(named) for service in writer.services}
        preflight.check_binaries(needed - given.keys())  # only for classes named: the web UI's picker may skip them
        self.services.start_postgres()
        self.connection_budget: dict | None = None
        """The run's connection budget (firehose.run.budget): checked here when headless with the classes named, else
        at each test start."""
        self.replica_how: str | None = None
        """How the analysts' server is a replica of the target: "--replica", "--analyst-dsn", or None (it is not)."""
        try:
            self._start_replica(given)
            if self.services.embedded is not None:
                disk_guard.warn_if_large(self.services.embedded.data_dir)
                with psycopg.connect(self.services.postgres, autocommit=True) as conn:
                    preflight.check_tables(conn)
            if named and self.options.headless:  # the web UI's form may change classes and sizes: checked at start
                self.connection_budget = self._check_budget(named)
        except preflight.Refused:
            self.services.stop()
            raise

    def _start_replica(self, given: dict[str, str]) -> None:
        """--replica: start the embedded server's replica; else an --analyst-dsn standby of the target is one."""
        if getattr(self.options, "replica", False):
            try:
                self.services.start_replica(self.options.replica_port, self.options.replica_data_dir)
            except (RuntimeError, psycopg.Error) as error:
                reason = str(error).strip().splitlines()[0]
                raise preflight.Refused(f"--replica could not start: {reason}", "replica") from None
            self.replica_how = "--replica"
        elif "analysts" in given and replica.is_replica_of(self.services.postgres, given["analysts"]):
            self.replica_how = "--analyst-dsn"

    def replica_gauges(self) -> dict[str, int]:
        """The replica's latest lag for the live view; none without a replica."""
        return self.replica_watch.gauges() if self.replica_watch is not None else {}

    def _check_budget(self, user_classes: list[type[User]]) -> dict:
        bouncer_here = "pgbouncer" not in self.services.given
        return budget.check(self.postgres, user_classes, self.options, bouncer_started_here=bouncer_here)

    @property
    def is_master(self) -> bool:
        return isinstance(self.environment.runner, MasterRunner)

    @property
    def postgres(self) -> str:
        return self.services.postgres

    def on_test_start(self) -> None:
        user_classes = self.environment.user_classes
        needed = {service for writer in writer_classes(user_classes) for service in writer.services}
        self.run, self.fatal = None, None
        addresses = self.services.start(needed)
        given = self.options.seed  # the web UI's form sends "" for an empty field
        seed = int(given) if given not in (None, "") else random.getrandbits(62)
        label = " ".join(sorted(user_class.__name__ for user_class in user_classes))
        run_id = open_run(self.postgres, seed, label)
        writing_processes = self.environment.runner.worker_count if self.is_master else 1
        self.run = RunStart(
            run_id, seed, int(time.time() * 1e6), addresses, users=self.options.num_users or 0,
            processes=max(writing_processes, 1),
        )  # fmt: skip
        self.started_at, self.summary, self._summary_kept = time.time(), None, False
        self.reports, self.unaccounted = {}, []
        if self.workers is not None:
            self.workers.begin(run_id)
        self.disk_guard.start()
        if partitions.layout(self.options) == "partitioned":  # before any row is written: none may find no partition
            self.partition_keeper = partitions.PartitionKeeper(
                self.postgres, self.options, self.run.anchor_us, history_seconds(self.options)
            )
            try:
                self.partition_keeper.start()
            except psycopg.Error as error:
                self.on_fatal(f"the partitions of the run could not be made: {error.diag.message_primary or error}")
        if self.replica_how is not None:
            backup = self.services.replica.backup if self.services.replica is not None else None
            self.replica_watch = replica.ReplicaWatch(
                self.postgres, addresses["analysts"], run_id, self.replica_how, backup
            )
            self.replica_watch.start()
        if self.is_master:  # before Locust's spawn messages: workers have it when their test_start fires
            self.environment.runner.send_message(RUN_START, self.run.as_message())
        elif self.local is not None:
            self.local.begin(self.run)
        if self.connection_budget is None or not self.options.headless:  # before the spawn messages and writers
            try:
                self.connection_budget = self._check_budget(user_classes)
            except preflight.Refused as refusal:
                self.on_fatal(str(refusal))  # ends the run as soon as Locust starts spawning

    def on_spawning_complete(self) -> None:
        """Without --continuous, end the run once every engineer has emitted its telemetry."""
        # Once: Locust completes spawning again when it hands a dropped worker's users to the survivors.
        if not self.options.continuous and (self._end_watch is None or self._end_watch.dead):
            self._end_watch = gevent.spawn(self._finish_when_done)

    def engineers(self) -> tuple[int, int]:
        """Engineers (started, finished) in the whole run: this process's, or the workers' latest reports."""
        if self.local is not None:
            return self.local.engineers()
        return self.workers.engineers()

    def _target_engineers(self) -> int:
        """Engineers the run spawns: users of classes that write (analysts do not end a run)."""
        engineer_names = {user.__name__ for user in self.environment.user_classes if hasattr(user, "writer_class")}
        counts = self.environment.runner.target_user_classes_count
        return sum(count for name, count in counts.items() if name in engineer_names)

    def _finish_when_done(self) -> None:
        # Counting engineers, not users: a master may see 0 users before workers have spawned any,
        # and engineers that finish between two reports would never be seen at all.
        runner = self.environment.runner
        while runner.state == STATE_RUNNING:
            gevent.sleep(END_CHECK_S)
            started, finished = self.engineers()
            target = self._target_engineers()
            if target and finished and finished >= started >= target:
                logger.info("all %d engineers have emitted their telemetry: ending the run", finished)
                self._end_run()
                return

    def _end_run(self) -> None:
        runner = self.environment.runner
        runner.quit() if self.options.headless else runner.stop()

    def on_worker_snapshot(self, client_id: str, snapshot: dict) -> None:
        """A worker's snapshot, from its stats report (firehose.run.worker_ledger)."""
        self.workers.on_snapshot(client_id, snapshot)

    def on_fatal(self, reason: str) -> None:
        """An error of the setup, here or in a worker: print it once, and stop the run (exit code STOPPED)."""
        if self.fatal is not None:
            return
        self.fatal = reason
        logger.error("firehose stops the run: %s", reason)
        self.environment.process_exit_code = ExitCode.STOPPED
        # Not from inside a writer's greenlet, which the stop may kill; from test start, once spawning began.
        gevent.spawn(self._end_run_once_started)

    def _end_run_once_started(self) -> None:
        runner = self.environment.runner
        while runner.state == STATE_INIT:  # a fatal error of test start: Locust sets "spawning" right after
            gevent.sleep(0.1)
        if runner.state in (STATE_SPAWNING, STATE_RUNNING):  # else it is ending already
            self._end_run()

    def on_test_stop(self) -> None:
        """After this process's own users drained (if any): collect the workers' reports, count, summarise.
        Once per run: a run stopped while Locust's master was still spawning gets test_stop again at its exit."""
        if self.run is None or self.summary is not None:
            return
        self.disk_guard.stop()  # what is buffered is committed whatever it costs: the rows are generated already
        if self.partition_keeper is not None:
            self.partition_keeper.stop()
        if self.local is not None and (report := self.local.drain()) is not None:
            self.reports[report["writer_key"]] = report
        if self.is_master:
            self._collect_worker_reports()
        if self.replica_watch is not None:
            self.replica_watch.finish(self.options.replica_catch_up)
        self._summarise()

    def _on_drained(self, environment: Environment, msg) -> None:
        if self.run is not None and msg.data["run_id"] == self.run.run_id and self.summary is None:
            self.reports[msg.data["writer_key"]] = msg.data

    def _on_writer_key(self, environment: Environment, msg) -> None:
        self.workers.on_writer_key(msg.node_id, msg.data)

    def _on_fatal_message(self, environment: Environment, msg) -> None:
        if self.run is not None and msg.data["run_id"] == self.run.run_id:
            self.on_fatal(msg.data["reason"])

    def on_worker_connect(self, client_id: str) -> None:
        """Locust's `worker_connect`: a worker that was connected before (its init done: one that lost its master
        and found this one) gets the run under way now, and refuses it if it served another master. A new worker
        is not ready for it yet ("Unknown message type" in its log): it asks again at its init (JOIN)."""
        self._send_run_under_way(client_id)

    def _on_join(self, environment: Environment, msg) -> None:
        """A worker's init: one that joins a run under way gets its run-start message (it missed test start's)."""
        if self._send_run_under_way(msg.node_id):
            logger.info(
                "a worker joined the running test (%s): it gets run %d's start message", msg.node_id, self.run.run_id
            )

    def _send_run_under_way(self, client_id: str) -> bool:
        """Send `client_id` the run-start message of the run under way, if one is."""
        if self.run is None or self.summary is not None:
            return False  # no run under way: the next test start sends it to every worker
        self.environment.runner.send_message(RUN_START, self.run.as_message(), client_id=client_id)
        return True

    def _on_refused(self, environment: Environment, msg) -> None:
        logger.error("firehose refuses a worker (%s): %s", msg.node_id, msg.data["reason"])

    def _collect_worker_reports(self) -> None:
        """Ask workers to drain; wait for the final report of every writer key whose worker is still there."""
        self.environment.runner.send_message(DRAIN, {"run_id": self.run.run_id})
        try:
            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=preflight.CONNECT_TIMEOUT_S) as conn:
                keys = {
                    row[0]
                    for row in conn.execute(
                        "SELECT writer_key FROM firehose_writer_keys WHERE run_id = %s", [self.run.run_id]
                    )
                }
        except psycopg.OperationalError:  # the database is gone (an outage past the deadline): the keys workers told
            keys = {entry.writer_key for entry in self.workers.entries.values() if entry.writer_key is not None}
        timeout = self.options.drain_timeout
        deadline = time.monotonic() + timeout
        while self.workers.awaited(keys, set(self.reports)) and time.monotonic() < deadline:
            gevent.sleep(DRAIN_POLL_S)
        self.unaccounted = self.workers.unaccounted(keys, set(self.reports), timeout)
        for worker in self.unaccounted:
            logger.error(
                "no final report from %s (writer key %d): %s",
                worker["worker"] or "an unknown process",
                worker["writer_key"],
                worker["reason"],
            )

    def _summarise(self) -> None:
        try:
            in_database_by_key, duplicates = count_in_database(self.postgres, self.run.run_id)
        except psycopg.OperationalError:  # the database is gone (an outage past the deadline stopped the run)
            in_database_by_key, duplicates = None, 0
        self.summary = RunSummary(
            run_id=self.run.run_id,
            seed=self.run.seed,
            database=redact(self.postgres),
            layout=partitions.layout(self.options),
            started_at=self.started_at,
            ended_at=time.time(),
            reports=list(self.reports.values()),
            in_database_by_key=in_database_by_key,
            unaccounted=self.unaccounted,
            duplicates=duplicates,
            stopped_by=self.fatal,
            class_names=class_names(self.environment.user_classes),
            extras={name: section() for name, section in self.summary_extras.items()},
        )
        user_counts = dict(self.environment.runner.target_user_classes_count or {})
        self.summary.extras["context"] = kept.context(self.postgres, self.options, self.started_at, user_counts)
        check_results = self.summary.extras["checks"] = kept.judge(self.summary.as_dict(), self.options)
        sys.stdout.write(self.summary.render() + "\n")
        sys.stdout.write("".join(result["line"] + "\n" for result in check_results))
        sys.stdout.flush()
        if self.options.summary_json:
            self.summary.write_json(self.options.summary_json)
        if self.options.junit:
            checks.write_junit(self.options.junit, check_results, f"run{self.run.run_id}")
        # Always set: Locust's own rule (failed requests -> 1) would count the round trips a restart broke.
        code = of_verdict(self.summary.verdict())
        if code is ExitCode.OK and self.replica_watch is not None and self.replica_watch.went_away:
            code = ExitCode.REPLICA_LOST
        elif code is ExitCode.OK and not all(result["passed"] for result in check_results):
            code = ExitCode.CHECKS_FAILED
        elif code is ExitCode.OK and (self._failures_not_retried() or self.environment.runner.exceptions):
            code = of_failures(self.options.exit_code_on_error)
        self.environment.process_exit_code = code

    def keep_summary(self) -> None:
        """Keep the run's summary (database and local store: firehose.run.kept), once; the lifecycle calls it after
        the web UI shows the run's end, which it would otherwise delay."""
        if self.summary is None or self._summary_kept:
            return
        self._summary_kept = True
        if (ref := kept.keep(self.postgres, self.summary.as_dict())) is not None:
            logger.info("run %d kept as %s (firehose runs, firehose compare)", self.run.run_id, ref)

    def _failures_not_retried(self) -> int:
        """Locust's failed requests but the round trips a lost connection broke (retried: not failures of the run)."""
        retried = f"{RetriedRoundTrip.__name__}("
        return sum(
            error.occurrences
            for error in self.environment.runner.stats.errors.values()
            if not StatsError.parse_error(error.error).startswith(retried)
        )

    def on_quitting(self) -> None:
        runner = self.environment.runner
        if runner.state in (STATE_SPAWNING, STATE_RUNNING):
            # Ctrl-C: Locust fires quitting before it stops the users. Stop them now, so the run drains and
            # reconciles while the servers it writes through are still up.
            runner.stop()
        self._restore_levers()
        self.services.stop()
