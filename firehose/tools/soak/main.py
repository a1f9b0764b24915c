"""`firehose soak`: a bounded run of several strategies while servers restart and workers die; every row accounted for.

On servers of its own (a PostgreSQL in a new data directory on a free port, pgBouncer and Redis, never the
user's embedded server), a Locust master and two `locust --worker` processes run the strategies (default
CopyEngineer, PooledEngineer and StreamEngineer, paced by `--engineer-rate`) for --duration with `--continuous`.
Once they write, a seeded schedule (printed) injects a fault every --min-gap to --max-gap seconds, the kinds in
a random order, each kind once per round: PostgreSQL restarted fast and immediate, pgBouncer restarted (every
client connection cut), Redis restarted (SIGTERM or kill -9), a worker killed -9 and a replacement started.
After each database restart it looks for the disk guard's query in `pg_stat_activity` (it must come back).

Writes results/soak-<timestamp>/soak.md and soak.json: per fault what it took and the retries and seconds
blocked that followed it, per strategy; per writer key its reconciliation; per killed worker what the summary
says died with it against what its strategies held; the verdict's checks (firehose.tools.soak.verdict). The
master's summary JSON and every process's log are kept beside them. Exit 1 when the verdict fails, 2 when refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from firehose.strategies import class_names, strategy_named
from firehose.tools.headless import RUN_OVERHEAD_S, parsed_option, passed_to_locust, results_dir
from firehose.tools.locust_processes import DEADLINE_S, start_locust, wait_for, writer_key_of
from firehose.tools.machine import machine_info
from firehose.tools.results import write_report
from firehose.tools.soak import probe
from firehose.tools.soak.report import render_markdown
from firehose.tools.soak.verdict import account, names
from services.pgbouncer import PgBouncer
from services.ports import free_port
from services.postgres import EmbeddedPostgres, redact
from services.redis_server import LocalRedis
from telemetry.durations import parse_duration
from users import CopyEngineer, PooledEngineer, StreamEngineer

KINDS = ("postgres-fast", "postgres-immediate", "pgbouncer", "redis", "kill-worker")
"""The faults a schedule draws from."""
NEEDS = {"pgbouncer": "pgbouncer", "redis": "redis"}
"""Fault -> the service it restarts, which one of the strategies must write through."""
DEFAULT_STRATEGIES = ",".join(cls.__name__ for cls in (CopyEngineer, PooledEngineer, StreamEngineer))
"""One strategy per service a fault restarts: COPY straight to PostgreSQL, batches through pgBouncer, the stream."""
DEFAULT_USERS = 6
"""Two engineers per strategy: one of each on each worker (Locust spreads each class over the workers)."""
DEFAULT_LOCUST_ARGS = ("--engineer-rate", "500", "--disk-budget", "20GB")
"""Each engineer offers 500 events/s (3,000 rows/s in all): a 10-minute soak writes ~1.8 M rows (~5 GB with
WAL), a fraction of what the server takes here (one COPY connection alone ~14k rows/s), so what a fault costs is
not hidden by a saturated database. A disk budget of four times that keeps the disk guard asking the database
(`pg_database_size`, what the soak looks for after each restart) and stops a runaway soak. After `--` on the
command line, the same option given again wins."""
WORKERS = 2
TAIL_S = 30
"""No fault is planned in the run's last 30 s: the last one's retries and the disk guard's return are seen."""
ENDING_S = 3
"""A fault due this close to the run's end (a fixed schedule too long for the run) is not injected."""
GUARD_QUERY = "pg_database_size"
"""What the disk guard asks the server every second (firehose.run.disk_guard): a backend of the run asking it,
started after a database restart, is the guard watching again."""
GUARD_WAIT_S = 15
"""Time the guard has to come back after a restart before the soak says it did not."""
POLL_S = 0.5
"""How often the soak looks at the master and for the disk guard between faults."""
REPORT_WAIT = {"LOCUST_WAIT_FOR_WORKERS_REPORT_AFTER_RAMP_UP": "1"}
"""Locust's own default, whatever the environment says (the suite sets 30 s): when a replacement worker joins,
Locust's master rebalances the users from inside its message loop and waits this long for the workers' reports,
which that same loop would read; no heartbeat is read meanwhile either, so past ~3 s every worker is marked missing
and the run stops (seen here with 30 s). The soak's run ends by time (`--continuous`), not by engineer counts."""


@dataclass(frozen=True)
class PlannedFault:
    """A fault of the schedule: its kind, due `at_s` seconds after the workers started writing."""

    at_s: float
    kind: str


def schedule(seed: int, kinds: list[str], span_s: float, gaps: tuple[float, float]) -> list[PlannedFault]:
    """Faults every `gaps` seconds (uniform) up to `span_s`; the kinds shuffled, each once per round."""
    rng = random.Random(seed)
    faults: list[PlannedFault] = []
    round_: list[str] = []
    at = rng.uniform(*gaps)
    while at <= span_s:
        if not round_:
            round_ = rng.sample(kinds, len(kinds))
        faults.append(PlannedFault(round(at, 1), round_.pop()))
        at += rng.uniform(*gaps)
    return faults


def fixed_schedule(kinds: list[str], every_s: float) -> list[PlannedFault]:
    """Each kind once, in the order given, every `every_s` seconds (`--every`: a short soak that must meet each)."""
    return [PlannedFault(every_s * (index + 1), kind) for index, kind in enumerate(kinds)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose soak`'s options; what follows `--` goes to the Locust master as is."""
    parser.add_argument("--duration", default="10m", help="Run time (default: %(default)s).")
    parser.add_argument(
        "--strategies", default=DEFAULT_STRATEGIES, help="Engineer classes, comma-separated (default: %(default)s)."
    )
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Engineers in all (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the schedule and the run (default: random).")
    parser.add_argument(
        "--faults",
        default=",".join(KINDS),
        help=f"Fault kinds, comma-separated, from {', '.join(KINDS)} (default: all).",
    )
    parser.add_argument("--min-gap", default="30s", help="Shortest time between two faults (default: %(default)s).")
    parser.add_argument("--max-gap", default="90s", help="Longest time between two faults (default: %(default)s).")
    parser.add_argument(
        "--every",
        default=None,
        help="A fixed schedule instead: each of --faults once, in its order, this often (e.g. 5s; for tests).",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="The soak's PostgreSQL data directory (default: a new temporary one, removed at the end).",
    )
    parser.add_argument("--out", default=None, help="Results directory (default: results/soak-<timestamp>).")
    parser.add_argument(
        "locust_args",
        nargs=argparse.REMAINDER,
        help="After `--`: options for the Locust master, e.g. `-- --stream-claim-idle 5`.",
    )


@dataclass
class Settings:
    """The soak's settings, checked."""

    duration_s: int
    strategies: list[str]
    users: int
    seed: int
    kinds: list[str]
    plan: list[PlannedFault]
    services: list[str]
    locust_args: list[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings `args` give; a ValueError names what is wrong."""
        duration_s = parsed_option("--duration", parse_duration, args.duration)
        strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
        services = sorted({service for name in strategies for service in strategy_named(name).services})
        kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
        if unknown := [kind for kind in kinds if kind not in KINDS]:
            raise ValueError(f"--faults: unknown {', '.join(unknown)}: choose from {', '.join(KINDS)}")
        if unserved := [kind for kind in kinds if kind in NEEDS and NEEDS[kind] not in services]:
            raise ValueError(f"--faults {', '.join(unserved)}: none of --strategies writes through it")
        if args.users < len(strategies):
            raise ValueError(f"--users: at least one engineer per strategy ({len(strategies)})")
        seed = args.seed if args.seed is not None else random.randrange(2**31)
        if args.every is not None:
            plan = fixed_schedule(kinds, parsed_option("--every", parse_duration, args.every))
        else:
            gaps = (
                parsed_option("--min-gap", parse_duration, args.min_gap),
                parsed_option("--max-gap", parse_duration, args.max_gap),
            )
            if not 0 < gaps[0] <= gaps[1]:
                raise ValueError("--min-gap must be more than 0 and at most --max-gap")
            plan = schedule(seed, kinds, duration_s - TAIL_S, gaps) if kinds else []
        locust_args = passed_to_locust(args.locust_args)
        return cls(duration_s, strategies, args.users, seed, kinds, plan, services, list(locust_args))


def run(args: argparse.Namespace) -> int:
    """Soak, write the results, print the report; 2 when refused, 1 when the verdict fails."""
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        sys.stderr.write(f"firehose soak: {error}\n")
        return 2
    out = results_dir(args.out, "soak")
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"soak schedule (seed {settings.seed}, --duration {settings.duration_s} s): "
        + (", ".join(f"+{fault.at_s:g} s {fault.kind}" for fault in settings.plan) or "no faults"),
        flush=True,
    )
    with Soak(settings, out, Path(args.data_dir) if args.data_dir else None) as soak:
        try:
            result = soak.run()
        except (TimeoutError, RuntimeError) as error:  # the run never started writing: its logs say why
            sys.stderr.write(f"firehose soak: {error} (logs in {out})\n")
            return 1
    write_report(out, "soak", render_markdown(result), result)
    if failed := names(result["verdict"]["checks"]):
        sys.stderr.write(f"firehose soak: the verdict fails: {'; '.join(failed)}\n")
        return 1
    return 0


class Soak:
    """The soak's servers and Locust processes, its schedule's faults, and what it observed of them."""

    def __init__(self, settings: Settings, out: Path, data_dir: Path | None) -> None:
        self.settings = settings
        self.out = out
        self.rng = random.Random(settings.seed)
        self._scratch: tempfile.TemporaryDirectory | None = None
        if data_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="firehose-soak-")
            os.chmod(self._scratch.name, 0o755)  # the server's user (as root: postgres) enters it
            data_dir = Path(self._scratch.name) / "data"
        self.postgres = EmbeddedPostgres(data_dir, port=free_port())
        self.bouncer: PgBouncer | None = None
        self.redis: LocalRedis | None = None
        self.dsn = ""
        self.master: subprocess.Popen | None = None
        self.master_port = free_port()
        self.workers: dict[str, subprocess.Popen] = {}
        self.faults: list[dict] = []
        self.guard_since = 0.0
        """Epoch s: the disk guard must be seen with a backend started after this (the last database restart)."""
        self.guard_seen_at: float | None = None
        self._guard_fault: dict | None = None
        self._logs = ExitStack()

    def __enter__(self) -> Soak:
        return self

    def __exit__(self, *_: object) -> None:
        """Whatever is still running goes, whatever happened: Locust's process groups, then the servers."""
        for process in [self.master, *self.workers.values()]:
            if process is not None and process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for service in (self.redis, self.bouncer):
            if service is not None:
                service.stop()
        self.postgres.stop()
        self._logs.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def run(self) -> dict:
        """Start the servers and Locust, inject the schedule's faults, wait for the end; the results document."""
        settings = self.settings
        self.dsn = self.postgres.start()
        service_args = self._start_services()
        reports = self.out / "reports.jsonl"
        reports.unlink(missing_ok=True)
        started = time.time()
        self.master = start_locust(
            *settings.strategies, "--master", "--headless", "--only-summary", "--expect-workers", str(WORKERS),
            "--master-bind-port", str(self.master_port), "-u", str(settings.users), "-r", str(settings.users),
            "-t", f"{settings.duration_s}s", "--continuous", "--seed", str(settings.seed), "--pg-dsn", self.dsn,
            *service_args, "--summary-json", str(self.out / "summary.json"), *DEFAULT_LOCUST_ARGS,
            *settings.locust_args,
            log=self._log("master.log"), locustfiles=(probe.__file__,),
            env={**os.environ, probe.PROBE_FILE: str(reports), **REPORT_WAIT},
        )  # fmt: skip
        for _ in range(WORKERS):
            self._start_worker()
        run_started = wait_for(self._writing_since, "the run's start and rows of both workers", *self._all())
        writing = time.time()
        print(f"soak: writing {writing - started:.1f} s after start; faults from now", flush=True)
        ends = run_started + settings.duration_s
        for planned in settings.plan:
            fault = {"kind": planned.kind, "planned_at_s": planned.at_s, "at": None, "error": None}
            self.faults.append(fault)
            due = writing + planned.at_s
            if due > ends - ENDING_S or not self._wait_until(due):
                continue  # listed as not injected: the run was ending (or had ended)
            self._inject(fault, writing)
        self._wait_until(min(ends, time.time() + GUARD_WAIT_S), until_guard=True)
        returncode, timed_out = self._wait_for_the_end(ends)
        return self._results(returncode, timed_out, started, writing)

    def _start_services(self) -> list[str]:
        args = []
        if "pgbouncer" in self.settings.services:
            self.bouncer = PgBouncer(self.dsn)
            args += ["--pgbouncer-dsn", self.bouncer.start()]
        if "redis" in self.settings.services:
            self.redis = LocalRedis()
            args += ["--redis-url", self.redis.start()]
        return args

    def _log(self, name: str) -> object:
        return self._logs.enter_context((self.out / name).open("w"))

    def _all(self) -> list[subprocess.Popen]:
        return [process for process in [self.master, *self.workers.values()] if process is not None]

    def _start_worker(self) -> str:
        """A `locust --worker` whose own DSN names it (application_name soak-worker-N: its writer key is found)."""
        name = f"soak-worker-{len(self.workers) + 1}"
        self.workers[name] = start_locust(
            "--worker", "--master-port", str(self.master_port),
            "--pg-dsn", make_conninfo(self.dsn, application_name=name), log=self._log(f"{name}.log"),
        )  # fmt: skip
        return name

    def _writing_since(self) -> float | None:
        """The run's start (epoch s) once both first workers drew their keys and rows are in the database."""
        with psycopg.connect(self.dsn) as conn:
            run = conn.execute("SELECT extract(epoch FROM max(started_at))::float FROM firehose_runs").fetchone()[0]
            rows = conn.execute("SELECT EXISTS (SELECT 1 FROM spans)").fetchone()[0]
        keys = [writer_key_of(self.dsn, name) for name in list(self.workers)[:WORKERS]]
        return run if run is not None and rows and None not in keys else None

    def _wait_until(self, when: float, *, until_guard: bool = False) -> bool:
        """Look for the disk guard until `when` (or, `until_guard`, until it is seen); False if the master ended."""
        while (now := time.time()) < when:
            if self.master.poll() is not None:
                return False
            self._look_for_guard()
            if until_guard and self.guard_seen_at is not None:
                break
            time.sleep(min(POLL_S, when - now))
        return self.master.poll() is None

    def _look_for_guard(self) -> None:
        if self.guard_seen_at is not None:
            return
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                seen = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND query LIKE %s AND backend_start > to_timestamp(%s))",
                    [f"%{GUARD_QUERY}%", self.guard_since],
                ).fetchone()[0]
        except psycopg.OperationalError:
            return
        if seen:
            self.guard_seen_at = time.time()
            if self._guard_fault is not None:
                self._guard_fault["disk_guard_back_after_s"] = round(self.guard_seen_at - self._guard_fault["at"], 1)

    def _inject(self, fault: dict, writing: float) -> None:
        fault["at"] = time.time()
        fault["at_s"] = round(fault["at"] - writing, 1)
        began = time.monotonic()
        try:
            fault["detail"] = self._strike(fault)
        except Exception as error:  # a server that does not come back: the verdict says so; the soak goes on
            fault["error"] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fault["took_s"] = round(time.monotonic() - began, 2)
        print(f"soak: +{fault['at_s']:g} s {fault['kind']}: {fault.get('detail') or fault['error']}", flush=True)

    def _strike(self, fault: dict) -> str:
        """Inject one fault; what was done, in a few words."""
        kind = fault["kind"]
        if kind.startswith("postgres-"):
            mode = kind.removeprefix("postgres-")
            self.guard_since, self.guard_seen_at, self._guard_fault = fault["at"], None, fault
            fault["disk_guard_back_after_s"] = None
            self.postgres.restart(mode)
            return f"pg_ctl restart -m {mode}"
        if kind == "pgbouncer":
            self.bouncer.stop()  # every client connection cut
            self.bouncer.start()  # the same port
            return "stopped (SIGTERM) and started on its port"
        if kind == "redis":
            kill = self.rng.random() < 0.5
            self.redis.restart(kill=kill)
            return f"{'kill -9' if kill else 'SIGTERM'}, started on its port and append-only file"
        live = sorted(name for name, process in self.workers.items() if process.poll() is None)
        writing = [name for name in live if writer_key_of(self.dsn, name) is not None]
        victim = self.rng.choice(writing or live)
        os.kill(self.workers[victim].pid, signal.SIGKILL)
        self.workers[victim].wait()
        fault["victim"] = victim
        fault["replacement"] = self._start_worker()
        return f"kill -9 {victim}, started {fault['replacement']}"

    def _wait_for_the_end(self, ends: float) -> tuple[int, bool]:
        """The master's exit code once it ends (killed past the run's end + RUN_OVERHEAD_S), and whether it was."""
        try:
            returncode, timed_out = self.master.wait(max(ends - time.time(), 0) + RUN_OVERHEAD_S), False
        except subprocess.TimeoutExpired:
            os.killpg(self.master.pid, signal.SIGKILL)
            returncode, timed_out = self.master.wait(), True
        for process in self.workers.values():  # they quit with their master
            try:
                process.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return returncode, timed_out

    def _results(self, returncode: int, timed_out: bool, started: float, writing: float) -> dict:
        """The results document (soak.json): settings, machine, faults, accounting, verdict."""
        summary_path = self.out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() and not timed_out else None
        reports = self.out / "reports.jsonl"
        lines = [json.loads(line) for line in reports.read_text().splitlines()] if reports.exists() else []
        with psycopg.connect(self.dsn) as conn:
            keys = dict(conn.execute("SELECT application_name, writer_key FROM firehose_writer_keys").fetchall())
        guard = self._guard_verdict(summary)
        class_of = class_names([strategy_named(name).user_class for name in self.settings.strategies])
        accounting = account(summary, self.faults, lines, keys, class_of, guard)
        settings = self.settings
        return {
            "date": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "settings": {
                "duration_s": settings.duration_s,
                "strategies": settings.strategies,
                "users": settings.users,
                "workers": WORKERS,
                "seed": settings.seed,
                "faults": settings.kinds,
                "schedule": [{"at_s": fault.at_s, "kind": fault.kind} for fault in settings.plan],
                "locust_args": [*DEFAULT_LOCUST_ARGS, *settings.locust_args],
                "database": redact(self.dsn),
            },
            "machine": machine_info(self.dsn),
            "writing_after_s": round(writing - started, 1),
            "master": {"exit_code": returncode, "killed_after_timeout": timed_out},
            "faults": self.faults,
            "retries_before_faults": accounting["before_faults"],
            "keys": accounting["keys"],
            "killed": accounting["killed"],
            "disk_guard": guard,
            "events": summary["events"] if summary else None,
            "by_class": summary["writes"]["by_class"] if summary else None,
            "rows_per_s": summary["writes"]["rows_per_s"] if summary else None,
            "verdict": {"ok": accounting["ok"], "checks": accounting["checks"]},
        }

    def _guard_verdict(self, summary: dict | None) -> dict:
        """Whether the disk guard was seen watching after the last database restart (and, when the summary has a
        disk guard section, not blind at the end), with what the master logged and summed of it."""
        restarts = [fault for fault in self.faults if fault["kind"].startswith("postgres-") and fault["at"]]
        logged = [line.strip() for line in (self.out / "master.log").open(errors="replace") if "disk guard" in line]
        said = f"; the master logged: {' / '.join(logged[:3])}" if logged else ""
        section = (summary or {}).get("disk_guard")
        if section is not None:
            said += (
                f"; its summary: {section['reconnects']} reconnect(s), {section['blind_s']:g} s blind"
                f"{', blind at the end' if section['blind_at_end'] else ''}"
            )
        blind_at_end = section is not None and section["blind_at_end"]
        if self.guard_seen_at is not None:
            after = f" after the last database restart (+{restarts[-1]['at_s']:g} s)" if restarts else ""
            return {"watching": not blind_at_end, "detail": f"its query seen in pg_stat_activity{after}{said}"}
        since = f"within {GUARD_WAIT_S} s of the last database restart" if restarts else "during the run"
        return {"watching": False, "detail": f"its query ({GUARD_QUERY}) not seen in pg_stat_activity {since}{said}"}
