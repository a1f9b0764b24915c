"""`firehose grow`: the growth curve: write rate, I/O and the analysts' queries as the tables grow to --to, per layout.

For each layout (--layout, default plain then partitioned), on a PostgreSQL of its own in a new data directory
(DIR/<layout> under --data-dir; removed when the layout is done, so the next one has the disk), one Locust run of
--strategy (default CopyEngineer) writes continuously, its rows stamped as they are composed (`--timestamps live`,
a run's second standing for --time-scale seconds of data, so the tables span days). From outside, every second,
grow reads the tables' size (tables, TOAST and indexes; all partitions). Each time it passes a multiple of --step:
- the writing phase since the last mark: rows/s (pg_stat_user_tables' inserts), WAL bytes, checkpoints (timed and
  requested), the buffer hit ratio and the bytes the server read (pg_stat_io: from the page cache or the disk);
- a burst of analysts (firehose.tools.grow.burst) for --burst: each of the 8 queries run back to back by an analyst
  of its own on a 1 h window ending at the newest data (24 h for the dependency map): count, p50, p95, max; the
  writers go on, and their rows/s, hit ratio and reads during the burst are recorded too.
At --to the writers are stopped (Ctrl-C: the run drains and reconciles). The run's disk guard bounds it
(--disk-budget, and Locust's --disk-floor after `--`): a run it stops ends the layout there, cleanly.

Writes results/grow-<timestamp>/ (grow.md, grow.csv, grow.json, grow.png: rows/s and each query's p95 against
the size, shared_buffers and the machine's RAM marked, every layout on one chart), with each layout's Locust log
and summary. Exit 1 when a layout stopped short of --to, 2 when refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg

from firehose.run.disk_guard import pretty
from firehose.strategies import strategy_named
from firehose.tools.grow.burst import run_burst
from firehose.tools.grow.figures import Counters, newest_data, shared_buffers_bytes
from firehose.tools.grow.report import render_chart, render_csv, render_markdown
from firehose.tools.headless import RUN_OVERHEAD_S, parsed_option, passed_to_locust, results_dir
from firehose.tools.locust_processes import start_locust, wait_for
from firehose.tools.machine import machine_info
from firehose.tools.results import write_report
from services.ports import free_port
from services.postgres import LAYOUTS, REPO, EmbeddedPostgres
from services.watchdog import Watchdog
from telemetry.durations import parse_duration
from users import CopyEngineer
from writers.spool import parse_size

DEFAULT_TO = "30GB"
"""Past this machine's RAM (24 GB): the tables no longer fit the page cache."""
DEFAULT_STEP = "2GB"
DEFAULT_USERS = 50
"""COPY at 50 engineers writes ~17-20k rows/s here (docs/performance.md): the server's CPU is the wall."""
DEFAULT_TIME_SCALE = 600
"""A run's second stands for ten minutes of data: at ~10k rows/s (~26 MB/s), 30 GB take ~20 min and span ~8 days,
so a 1 h window is a small share of the data and the daily partitions are several."""
MAX_BURST_S = 60
"""The analysts' burst at each mark lasts at most this."""
POLL_S = 1.0
"""How often grow reads the tables' size: at ~26 MB/s a mark is passed by at most this much writing."""
WRITING_DEADLINE_S = 120
"""Time the writer has to start writing (Locust's start, the value pools, the partitions made ahead)."""
INDEXES_SQL = REPO / "schema" / "indexes.sql"
STOPS = "firehose stops the run: "
"""What a run logs when a guard (the disk budget or floor) or an error of the setup stops it."""
BUDGET_MARGIN_SHARE, BUDGET_MARGIN_BYTES = 0.25, 1024**3
"""The run's --disk-budget by default: --to and a quarter more, at least 1 GB more (the database's growth, WAL not
in it): the last burst writes on past --to, and a budget crossed during it would stop the run as grow stops it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose grow`'s options; what follows `--` goes to each writing Locust run as is."""
    parser.add_argument(
        "--layout", default=",".join(LAYOUTS), help="Layouts, comma-separated, each in turn (default: %(default)s)."
    )
    parser.add_argument("--to", default=DEFAULT_TO, help="Grow the tables and indexes to this size (%(default)s).")
    parser.add_argument("--step", default=DEFAULT_STEP, help="Record figures each time this much more is written.")
    parser.add_argument("--strategy", default=CopyEngineer.__name__, help="The engineer class writing (%(default)s).")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Engineers writing (%(default)s).")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help="Seconds of data a second of the run stands for (Locust's --time-scale; default %(default)g).",
    )
    parser.add_argument(
        "--partition-interval", default="1d", help="Span of each partition (partitioned layout; %(default)s)."
    )
    parser.add_argument(
        "--burst", default="30s", help=f"The analysts' burst at each step (at most {MAX_BURST_S}s; %(default)s)."
    )
    parser.add_argument("--window", default="1h", help="Window of the queries, ending at the newest data (1h).")
    parser.add_argument("--dependency-window", default="24h", help="Window of service_dependency_map (%(default)s).")
    parser.add_argument(
        "--indexes", action="store_true", help="Create schema/indexes.sql's indexes before writing (default: none)."
    )
    parser.add_argument(
        "--disk-budget",
        default=None,
        help="The writing run's --disk-budget, the database's growth (default: --to and a quarter more, at least 1GB).",
    )
    parser.add_argument(
        "--max-time", default="3h", help="Stop a layout that has not reached --to after this long (%(default)s)."
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Folder of the layouts' data directories (DIR/<layout>, each removed when done; default: a new folder "
        "under /var/tmp, not /tmp, which may be memory).",
    )
    parser.add_argument("--embedded-port", type=int, default=None, help="Port of grow's server (default: a free one).")
    parser.add_argument("--out", default=None, help="Results directory (default: results/grow-<timestamp>).")
    parser.add_argument(
        "locust_args", nargs=argparse.REMAINDER, help="After `--`: options for each writing run, e.g. `-- --seed 1`."
    )


@dataclass
class Settings:
    """grow's settings, checked."""

    layouts: list[str]
    to_bytes: int
    step_bytes: int
    strategy: str
    users: int
    time_scale: float
    partition_interval: str
    burst_s: int
    window_s: int
    dependency_window_s: int
    indexes: bool
    budget_bytes: int
    max_time_s: int
    data_dir: Path
    port: int
    locust_args: list[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings `args` give; a ValueError names what is wrong."""
        layouts = [layout.strip() for layout in args.layout.split(",") if layout.strip()]
        if not layouts or any(layout not in LAYOUTS for layout in layouts):
            raise ValueError(f"--layout: choose from {', '.join(LAYOUTS)} (comma-separated)")
        to_bytes, step_bytes = (
            parsed_option("--to", parse_size, args.to),
            parsed_option("--step", parse_size, args.step),
        )
        if not 0 < step_bytes <= to_bytes:
            raise ValueError("--step must be more than 0 and at most --to")
        burst_s = parsed_option("--burst", parse_duration, args.burst)
        if not 0 < burst_s <= MAX_BURST_S:
            raise ValueError(f"--burst must be more than 0 and at most {MAX_BURST_S}s")
        if args.users < 1 or args.time_scale <= 0:
            raise ValueError("--users must be at least 1 and --time-scale above 0")
        strategy = strategy_named(args.strategy).name
        budget = args.disk_budget
        data_dir = Path(args.data_dir or f"/var/tmp/firehose-grow-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        if taken := [layout for layout in layouts if (data_dir / layout).exists()]:
            raise ValueError(f"--data-dir: {data_dir / taken[0]} exists: grow starts each layout in a new one")
        return cls(
            layouts=layouts,
            to_bytes=to_bytes,
            step_bytes=step_bytes,
            strategy=strategy,
            users=args.users,
            time_scale=args.time_scale,
            partition_interval=args.partition_interval,
            burst_s=burst_s,
            window_s=parsed_option("--window", parse_duration, args.window),
            dependency_window_s=parsed_option("--dependency-window", parse_duration, args.dependency_window),
            indexes=args.indexes,
            budget_bytes=parsed_option("--disk-budget", parse_size, budget) if budget else _default_budget(to_bytes),
            max_time_s=parsed_option("--max-time", parse_duration, args.max_time),
            data_dir=data_dir,
            port=args.embedded_port or free_port(),
            locust_args=passed_to_locust(args.locust_args),
        )


def _default_budget(to_bytes: int) -> int:
    return to_bytes + max(int(to_bytes * BUDGET_MARGIN_SHARE), BUDGET_MARGIN_BYTES)


def run(args: argparse.Namespace) -> int:
    """Grow each layout, write the results, print the report; 2 when refused, 1 when a layout stopped short."""
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        sys.stderr.write(f"firehose grow: {error}\n")
        return 2
    out = results_dir(args.out, "grow").resolve()  # the writing runs start in the repository's folder
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    layouts, machine = {}, {}
    for layout in settings.layouts:
        growth = Growth(settings, layout, out)
        try:
            layouts[layout], machine = growth.run()
        except (TimeoutError, RuntimeError, psycopg.Error) as error:  # this layout's server or run: its log says
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            layouts[layout] = {"reached": False, "stopped": f"failed: {first_line}", "steps": []}
        if machine:  # after each layout, so a layout interrupted later leaves the earlier ones' results
            write_results(out, as_document(settings, started, machine, layouts))
    return 0 if all(result["reached"] for result in layouts.values()) else 1


def write_results(out: Path, document: dict) -> None:
    """grow.png, grow.csv, grow.md and grow.json in `out`."""
    render_chart(document, out / "grow.png")
    (out / "grow.csv").write_text(render_csv(document))
    write_report(out, "grow", render_markdown(document), document)


class Growth:
    """One layout grown on a server of its own: the server, the writing run, the marks and their figures."""

    def __init__(self, settings: Settings, layout: str, out: Path) -> None:
        self.settings = settings
        self.layout = layout
        self.out = out
        self.folder = settings.data_dir / layout
        """This layout's: the server's data directory, its log and lock; removed when the layout is done."""
        self.watchdog = Watchdog()
        self.postgres = EmbeddedPostgres(self.folder / "data", settings.port, watchdog=self.watchdog)
        self.dsn = ""
        self.writer: subprocess.Popen | None = None

    def run(self) -> tuple[dict, dict]:
        """(this layout's results, the machine's description); the server stopped and its data removed after."""
        self.folder.mkdir(parents=True)
        removed = self.watchdog.watch_directory(self.folder)
        try:
            self.dsn = self.postgres.start(self.layout)
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                if self.settings.indexes:
                    conn.execute(INDEXES_SQL.read_text())
                machine = {**machine_info(self.dsn), "shared_buffers_bytes": shared_buffers_bytes(conn)}
            return self._grow(), machine
        finally:
            self.postgres.stop()
            shutil.rmtree(self.folder, ignore_errors=True)
            with suppress(OSError):  # the folder of the layouts, if nothing else is in it
                self.folder.parent.rmdir()
            self.watchdog.forget(removed)
            self.watchdog.close()

    def _grow(self) -> dict:
        settings = self.settings
        summary_path = self.out / f"{self.layout}-summary.json"
        log_path = self.out / f"{self.layout}-writer.log"
        with log_path.open("w") as log, psycopg.connect(self.dsn, autocommit=True) as conn:
            self.writer = start_locust(
                settings.strategy, "--headless", "--only-summary", "-u", str(settings.users), "-r",
                str(settings.users), "-t", f"{settings.max_time_s}s", "--continuous", "--pg-dsn", self.dsn,
                "--layout", self.layout, "--partition-interval", settings.partition_interval,
                "--timestamps", "live", "--time-scale", f"{settings.time_scale:g}",
                "--disk-budget", str(settings.budget_bytes), "--summary-json", str(summary_path),
                *settings.locust_args, log=log,
            )  # fmt: skip
            try:
                wait_for(
                    lambda: conn.execute("SELECT EXISTS (SELECT 1 FROM spans)").fetchone()[0],
                    "the writers' first rows",
                    self.writer,
                    deadline_s=WRITING_DEADLINE_S,
                )
                result = self._marks(conn)
                self._stop_writer()
                result["final"] = Counters.read(conn).as_dict()
            finally:
                if self.writer.poll() is None:
                    os.killpg(self.writer.pid, signal.SIGKILL)
                    self.writer.wait()
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        result["writer"] = {
            "exit_code": self.writer.returncode,
            "events": summary["events"] if summary else None,
            "rows_per_s": summary["writes"]["rows_per_s"] if summary else None,
        }
        return result

    def _marks(self, conn: psycopg.Connection) -> dict:
        """Watch the size; at each mark the writing phase's figures and a burst; until --to or the run's end."""
        settings = self.settings
        since = begin = Counters.read(conn)
        first_data, _ = newest_data(conn)
        deadline = since.at + settings.max_time_s
        mark = self._next_mark(begin)
        steps: list[dict] = []
        stopped = None
        while stopped is None:
            now = Counters.read(conn)
            if now.size_bytes >= mark:
                step, since = self._step(conn, since, now, first_data)
                steps.append(step)
                _print_step(self.layout, step)
                if now.size_bytes >= settings.to_bytes:
                    stopped = f"reached --to {pretty(settings.to_bytes)}"
                mark = self._next_mark(since)
            elif self.writer.poll() is not None:
                stopped = self._why_ended()
            elif time.monotonic() > deadline:
                stopped = f"--max-time {settings.max_time_s} s passed before --to"
            else:
                time.sleep(POLL_S)
        return {
            "reached": stopped.startswith("reached"),
            "stopped": stopped,
            "begin": begin.as_dict(),
            "steps": steps,
        }

    def _next_mark(self, look: Counters) -> int:
        """The first multiple of --step past the size at `look` (at most --to): the first rows come by whole COPY
        batches, and a burst writes on, so a mark may be passed before its phase began."""
        step = self.settings.step_bytes
        return min((look.size_bytes // step + 1) * step, self.settings.to_bytes)

    def _step(self, conn: psycopg.Connection, since: Counters, at_mark: Counters, first_data) -> tuple[dict, Counters]:
        """The step that ends at `at_mark`: the writing phase since `since`, then the burst; the look after it."""
        newest, trace_id = newest_data(conn)
        settings = self.settings
        queries = run_burst(
            self.dsn, settings.burst_s, newest, trace_id, settings.window_s, settings.dependency_window_s
        )
        after = Counters.read(conn)
        step = {
            "size_bytes": at_mark.size_bytes,
            "table_bytes": at_mark.table_bytes,
            "index_bytes": at_mark.index_bytes,
            "partitions": at_mark.partitions,
            "rows_inserted": at_mark.rows,
            "newest_data": newest.isoformat() if newest else None,
            "data_span_h": round((newest - first_data).total_seconds() / 3600, 1) if newest and first_data else None,
            "writing": at_mark.since(since),
            "burst": {**after.since(at_mark), "queries": queries},
        }
        return step, after

    def _stop_writer(self) -> None:
        """Ctrl-C to the writing run (it drains and reconciles); killed if it outlives RUN_OVERHEAD_S."""
        if self.writer.poll() is None:
            self.writer.send_signal(signal.SIGINT)
        try:
            self.writer.wait(RUN_OVERHEAD_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.writer.pid, signal.SIGKILL)
            self.writer.wait()

    def _why_ended(self) -> str:
        """Why the writing run ended before --to: its "firehose stops the run" line (a guard), else its exit code."""
        log = (self.out / f"{self.layout}-writer.log").read_text(errors="replace")
        said = [line.split(STOPS, 1)[1] for line in log.splitlines() if STOPS in line]
        return (
            f"the writing run stopped: {said[0]}" if said else f"the writing run ended (exit code {self.writer.poll()})"
        )


def _print_step(layout: str, step: dict) -> None:
    queries = step["burst"]["queries"]
    dependency = queries.get("service_dependency_map", {})
    print(
        f"grow {layout}: {pretty(step['size_bytes'])}, {step['writing']['rows_per_s'] or 0:,.0f} rows/s writing, "
        f"{step['burst']['rows_per_s'] or 0:,.0f} during the burst; dependency map p95 "
        f"{dependency.get('p95_ms')} ms over {dependency.get('count', 0)} execution(s)",
        flush=True,
    )


def as_document(settings: Settings, started: datetime.datetime, machine: dict, layouts: dict) -> dict:
    """grow.json: the settings, the machine (its RAM, the server's shared_buffers) and each layout's steps."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "settings": {
            "layouts": settings.layouts,
            "to_bytes": settings.to_bytes,
            "step_bytes": settings.step_bytes,
            "strategy": settings.strategy,
            "users": settings.users,
            "time_scale": settings.time_scale,
            "partition_interval": settings.partition_interval,
            "burst_s": settings.burst_s,
            "window_s": settings.window_s,
            "dependency_window_s": settings.dependency_window_s,
            "indexes": settings.indexes,
            "disk_budget_bytes": settings.budget_bytes,
            "max_time_s": settings.max_time_s,
            "locust_args": settings.locust_args,
        },
        "machine": {**machine, "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "layouts": layouts,
    }
