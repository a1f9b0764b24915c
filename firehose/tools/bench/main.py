"""`firehose bench`: is the load generator ever the bottleneck? Ratios against the physical limit, one run.

1. Generator: events/s on one core, next to a dict-plus-orjson build and Faker per event (bench.generator).
2. End to end: CopyEngineer through Locust (headless) vs raw `psql \\copy` of the same rows, pre-written
   to files, with 2 parallel connections, into the same freshly truncated tables, back to back.
3. Strategies: each strategy of the table (firehose.strategies) with a bench goal against its C-client reference
   (firehose.tools.references: pgbench running the same statements, or `psql \\copy`; or another strategy's run),
   in the same run, with the same connection counts: ours, the reference's, the ratio and its goal, and what each
   costs the server per row (firehose.tools.server_cost).
4. Levers: CopyEngineer with one option changed at a time (lz4, WAL compression, synchronous_commit,
   checkpoints, COPY batch size, flushing connections).
5. Client profile and 6. profiles: where our client's CPU goes per row (bench.profiles).
7. Layouts: COPY rows/s into partitioned tables against plain ones, the same rows (bench.layouts).
With --layout partitioned, every Locust run and reference writes partitioned tables (the layouts part compares both).
Every figure is the median of `--repetitions` runs, reported with its spread (min-max); bench.report renders them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from locust.event import Events

from firehose.run.preflight import Refused, partition_interval_s
from firehose.strategies import Strategy, all_strategies, baseline
from firehose.tools.bench import crash_cost, layouts
from firehose.tools.bench.figures import BENCH_SEED, END_TO_END, Figure, median_costs
from firehose.tools.bench.generator import time_dict_orjson, time_faker_per_event, time_generator
from firehose.tools.bench.profiles import (
    STREAM_PROFILE_TRACES,
    profile_client,
    profile_stream,
    profile_valve,
    profile_writer,
)
from firehose.tools.bench.report import render_markdown
from firehose.tools.database import (
    add_empty_arguments,
    add_layout_arguments,
    empty_tables,
    layout_arguments,
    prepare_layout,
    refusal_to_empty,
)
from firehose.tools.headless import REPO, run_headless
from firehose.tools.references import (
    LABELS,
    ROWS_PER_TRANSACTION,
    raw_copy,
    representative_rows,
    run_pgbench,
    write_copy_files,
)
from firehose.tools.server_cost import ServerCost, process_cpu_s
from services.pgbouncer import DEFAULT_POOL_SIZE, PgBouncer
from services.postgres import EmbeddedPostgres, LayoutMismatch, add_embedded_arguments, redact
from services.redis_server import LocalRedis
from telemetry.durations import parse_duration
from telemetry.generator import TRACES_PER_ENGINEER
from telemetry.layout import TABLES
from telemetry.pools import CATALOGUE_SEED, Pools
from writers.base import Writer
from writers.stream import StreamWriter
from writers.valve import ValveWriter

SIZES = {"engineers": 100, "repetitions": 3, "strategy_users": 50, "strategy_duration": "20s", "strategy_traces": 0}
"""The sizes of a full bench."""
QUICK_SIZES = {"engineers": 3, "repetitions": 1, "strategy_users": 3, "strategy_duration": "3s", "strategy_traces": 10}
"""The sizes of `--quick`: each applies unless given on the command line. Its strategy runs are fixed volumes, so a
busy machine makes them slower, never empty."""
LEVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("COPY batch 1,000 rows", ("--copy-batch-size", "1000")),
    ("COPY batch 20,000 rows", ("--copy-batch-size", "20000")),
    ("1 flushing connection", ("--copy-pool-size", "1")),
    ("4 flushing connections", ("--copy-pool-size", "4")),
    ("8 flushing connections", ("--copy-pool-size", "8")),
    ("synchronous_commit=off", ("--pg-setting", "synchronous_commit=off")),
    ("wal_compression=pglz", ("--pg-setting", "wal_compression=pglz")),
    ("checkpoint_timeout=30min, max_wal_size=16GB",
     ("--pg-setting", "checkpoint_timeout=30min", "--pg-setting", "max_wal_size=16GB")),
    ("JSONB compression lz4", ("--jsonb-compression", "lz4")),
)  # fmt: skip
QUICK_LEVERS = ("1 flushing connection", "synchronous_commit=off", "JSONB compression lz4")
"""The levers `--quick` measures: one of each kind (a client option, a server setting, a table change)."""


@dataclass(frozen=True)
class Part:
    """One thing a bench measures: its name (`--only NAME`, the key of its results) and how it is measured.

    A new part is a function (bench, pools, the results so far) -> its results, a row here, and its renderer in
    bench.report.SECTIONS."""

    name: str
    measure: Callable[[Bench, Pools, dict], dict]
    optional: bool = False
    """Measured only when asked for with --only (not part of a default bench)."""


def bench_strategies() -> list[Strategy]:
    """The strategies of the table the bench holds to a goal, in the table's order."""
    return [row for row in all_strategies() if row.goal is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_empty_arguments(parser)
    parser.add_argument("--pg-dsn", default=None, help="Target server (default: the embedded PostgreSQL).")
    add_embedded_arguments(parser)
    parser.add_argument("--pg-bin", default=None, help="Run the embedded server from these binaries instead "
                        "(e.g. /usr/lib/postgresql/15/bin, built with lz4).")  # fmt: skip
    sizes = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in QUICK_SIZES.items())
    parser.add_argument("--engineers", type=int, default=None, help="Engineers (x ~1,900 rows) per COPY run "
                        f"(default: {SIZES['engineers']}).")  # fmt: skip
    parser.add_argument("--repetitions", type=int, default=None, help="Runs per figure, the median reported "
                        f"(default: {SIZES['repetitions']}).")  # fmt: skip
    parser.add_argument("--strategy-users", type=int, default=None, help="Users of each strategy run "
                        f"(default: {SIZES['strategy_users']}).")  # fmt: skip
    parser.add_argument("--strategy-duration", default=None, help="Duration of each strategy run "
                        f"(default: {SIZES['strategy_duration']}).")  # fmt: skip
    parser.add_argument("--strategy-traces", type=int, default=None, help="Instead of --strategy-duration, each "
                        "strategy run writes this many traces per user and ends, and each pgbench reference a "
                        "fixed number of transactions of about the same rows (default: 0, timed).")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"A small, fast run (for tests): {sizes}, fewer "
                        "rows per profile, 3 of the levers; a size given explicitly wins over --quick's.")  # fmt: skip
    parser.add_argument(
        "--only",
        action="append",
        choices=[part.name for part in PARTS],
        default=None,
        help="Measure only this part (repeatable; default: all but the optional ones). E.g. --only end_to_end to "
        "compare two builds.",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=[row.name for row in bench_strategies()],
        default=None,
        help="In the strategies and profiles parts, run only this strategy and its reference (repeatable; default: "
        "all). A strategy whose reference is another strategy's run brings that strategy.",
    )
    add_layout_arguments(parser)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="Directory of the results files.")


def apply_sizes(args: argparse.Namespace) -> None:
    """Fill the sizes not given: --quick's, else a full bench's."""
    for name, value in (QUICK_SIZES if args.quick else SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    apply_sizes(args)
    try:
        partition_interval_s(args)
    except Refused as error:
        sys.stderr.write(f"firehose bench: {error}\n")
        return 2
    if args.pg_dsn is not None and (refusal := refusal_to_empty(args.pg_dsn, "bench", args.yes)) is not None:
        sys.stderr.write(refusal + "\n")
        return 2
    server = None
    try:
        if args.pg_dsn is None:
            server = EmbeddedPostgres(args.embedded_data_dir, args.embedded_port, bin_dir=args.pg_bin)
            args.pg_dsn = server.start(args.layout)
        now = datetime.datetime.now(datetime.UTC)  # the references' rows: the last hour; a long bench: a day on
        earliest, latest = now - datetime.timedelta(hours=2), now + datetime.timedelta(days=1)
        prepare_layout(args.pg_dsn, args.layout, args.partition_interval, earliest, latest)
        results = Bench(args).run()
    except LayoutMismatch as error:
        sys.stderr.write(f"firehose bench: {error}\n")
        return 2
    finally:
        if server is not None:
            server.stop()
    stem = Path(args.out) / datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(results))
    print(render_markdown(results))
    print(f"results: {stem}.json, {stem}.md")
    return 0


class Bench:
    """One benchmark run against one server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn = args.pg_dsn
        self.traces = TRACES_PER_ENGINEER if not args.quick else 10

    def run(self) -> dict:
        """The parts asked for (and those they build on), in PARTS' order."""
        wanted = set(self.args.only or (part.name for part in PARTS if not part.optional))
        if "levers" in wanted:
            wanted.add("end_to_end")  # the levers' baseline
        pools = Pools.cached(CATALOGUE_SEED)
        results: dict = {"machine": self.machine()}
        for part in PARTS:
            if part.name in wanted:
                started = time.monotonic()
                results[part.name] = part.measure(self, pools, results)
                _progress(f"{part.name} measured in {time.monotonic() - started:.0f} s")
        return results

    def machine(self) -> dict:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            names = ("shared_buffers", "max_connections", "max_wal_size", "checkpoint_timeout", "synchronous_commit",
                     "wal_compression", "default_toast_compression", "wal_level")  # fmt: skip
            settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}
        return {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": version,
            "settings": settings,
            "database": redact(self.dsn),
            "engineers": self.args.engineers,
            "repetitions": self.args.repetitions,
            "layout": self.args.layout,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def generator(self, pools: Pools, _results: dict) -> dict:
        ours, size = Figure(), 0
        for _ in range(self.args.repetitions):
            events, seconds, size = time_generator(pools, engineers=20 if not self.args.quick else 2)
            ours.values.append(events / seconds)
        dict_orjson = Figure([time_dict_orjson(pools, 20_000 if not self.args.quick else 2_000)])
        faker = Figure([time_faker_per_event(1_000 if not self.args.quick else 200)])
        return {
            "events_per_s": ours.as_dict(),
            "mean_row_bytes": size,
            "dict_orjson_events_per_s": dict_orjson.as_dict(),
            "faker_per_event_events_per_s": faker.as_dict(),
            "ratio_to_dict_orjson": ours.median / dict_orjson.median,
            "ratio_to_faker": ours.median / faker.median,
        }

    def end_to_end(self, pools: Pools, _results: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="firehose-bench-") as scratch:
            parts, rows = write_copy_files(Path(scratch), pools, self.args.engineers, self.traces)
            raw, copy = Figure(), Figure()
            for _ in range(self.args.repetitions):  # interleaved, so drift hits both alike
                self.fresh_tables()
                raw.values.append(raw_copy(self.dsn, parts, rows))
                self.fresh_tables()
                copy.values.append(self.copy_engineers())
        return {
            "rows": rows,
            "raw_copy_rows_per_s": raw.as_dict(),
            "copy_engineer_rows_per_s": copy.as_dict(),
            "ratio": copy.median / raw.median,
        }

    def copy_engineers(self, extra: tuple[str, ...] = ()) -> float:
        result = run_headless(
            END_TO_END, self.args.engineers, pg_dsn=self.dsn,
            extra=["--seed", str(BENCH_SEED), "--traces-per-engineer", str(self.traces), *layout_arguments(self.args),
                   *extra],
        )  # fmt: skip
        if not result.ok or result.summary["events"]["lost"]:
            raise RuntimeError(f"{END_TO_END} run failed or lost rows:\n{result.output}")
        return result.summary["writes"]["rows_per_s"]

    def client_profile(self, pools: Pools, _results: dict) -> dict:
        return profile_client(self.dsn, pools, engineers=50 if not self.args.quick else 2)

    def strategies(self, pools: Pools, results: dict) -> dict:
        """Each strategy and its reference, back to back in each repetition, each into emptied tables, with the
        server's counters sampled around every run; our client's CPU per row from the profiles, when measured."""
        seconds = int(parse_duration(self.args.strategy_duration))
        traces = self.args.strategy_traces
        # A fixed volume ends by itself (its -t is a safety net); a timed run writes until -t.
        volume, run_time = (
            (["--traces-per-engineer", str(traces)], "10m") if traces else (["--continuous"], f"{seconds}s")
        )
        picked = picked_strategies(self.args.strategy)
        names = [row.name for row in picked]
        rows = representative_rows(pools, BENCH_SEED)
        ours = {name: Figure() for name in names}
        reference = {name: Figure() for name in names}
        costs: dict[str, dict[str, list[dict]]] = {name: {"ours": [], "reference": []} for name in names}
        checks: dict[str, list[dict]] = {name: [] for name in names}
        cost = ServerCost(self.dsn)
        bouncer, redis_server = PgBouncer(self.dsn), LocalRedis()
        services = ["--pgbouncer-dsn", bouncer.start(), "--redis-url", redis_server.start()]
        with tempfile.TemporaryDirectory(prefix="firehose-bench-") as scratch:
            engineers = self.args.engineers if not self.args.quick else 3
            files, copy_rows_total = write_copy_files(Path(scratch), pools, engineers, self.traces)
            try:
                for _ in range(self.args.repetitions):
                    for row in picked:
                        name = row.name
                        lingering = DEFAULT_POOL_SIZE if "pgbouncer" in row.services else 0
                        self.fresh_tables()
                        before, redis_before = cost.sample(), process_cpu_s(redis_server.pid)
                        result = run_headless(
                            name, self.args.strategy_users, pg_dsn=self.dsn, run_time=run_time,
                            extra=[*volume, "--seed", str(BENCH_SEED), *services, *layout_arguments(self.args)],
                        )  # fmt: skip
                        if not result.ok or result.summary["events"]["lost"]:
                            raise RuntimeError(f"{name} run failed or lost rows:\n{result.output}")
                        written = result.summary["writes"]["rows"]
                        _progress(f"{name}: {result.summary['writes']['rows_per_s']:,.0f} rows/s")
                        costs[name]["ours"].append(
                            cost.per_row(before, cost.sample(before, lingering=lingering), written)
                        )
                        if "redis" in row.services:  # the run's Redis is a server too: its CPU beside PostgreSQL's
                            redis_cpu = process_cpu_s(redis_server.pid) - redis_before
                            costs[name]["ours"][-1]["redis_cpu_us_per_row"] = redis_cpu / max(written, 1) * 1e6
                        ours[name].values.append(result.summary["writes"]["rows_per_s"])
                        if row.bench_reference is not None:
                            reference[name].values.append(ours[row.bench_reference.__name__].values[-1])
                            continue
                        self.fresh_tables()
                        before = cost.sample()
                        if row.reference == "copy":
                            rate = raw_copy(self.dsn, files, copy_rows_total)
                            claimed, counted = copy_rows_total, count_all(self.dsn)
                        else:
                            pooled = row.reference == "pooled"
                            kind = "batched" if pooled else row.reference
                            length = (
                                {"seconds": seconds}
                                if not traces
                                else {"transactions": max(1, written // (row.connections * ROWS_PER_TRANSACTION[kind]))}
                            )  # the fixed volume: about the rows the strategy wrote
                            run = run_pgbench(
                                self.dsn, kind, rows, clients=row.connections, **length,
                                protocol="extended" if pooled else "prepared", through=bouncer.dsn if pooled else None,
                            )  # fmt: skip
                            rate, claimed, counted = run.rows_per_s, run.rows_claimed, run.rows_counted
                        costs[name]["reference"].append(
                            cost.per_row(before, cost.sample(before, lingering=lingering), counted)
                        )
                        reference[name].values.append(rate)
                        _progress(f"{name}'s reference ({reference_label(row)}): {rate:,.0f} rows/s")
                        checks[name].append({"rows_claimed": claimed, "rows_counted": counted})
            finally:
                bouncer.stop()
                redis_server.stop()
        base = baseline().name
        return {
            "users": self.args.strategy_users,
            "duration": self.args.strategy_duration if not traces else None,
            "traces_per_user": traces or None,
            "rows_per_s": {name: figure.as_dict() for name, figure in ours.items()},
            "reference": {row.name: reference_label(row) for row in picked},
            "connections": {row.name: None if row.bench_reference else row.connections for row in picked},
            "reference_rows_per_s": {name: figure.as_dict() for name, figure in reference.items()},
            "reference_rows": checks,
            "ratio_to_reference": {name: ours[name].median / reference[name].median for name in names},
            "goal": {row.name: row.goal for row in bench_strategies()},
            "ratio_to_naive": {name: ours[name].median / ours[base].median for name in names if base in names},
            "server_cost": {
                name: {side: median_costs(runs) for side, runs in sides.items()} for name, sides in costs.items()
            },
            "client_cpu_us_per_row": {
                name: profile["client_cpu_us_per_row"] for name, profile in results.get("profiles", {}).items()
            },
        }

    def profiles(self, pools: Pools, _results: dict) -> dict:
        """Our client's CPU per row of each strategy, in this process, and where it goes."""
        engineers, traces = (50, 4) if not self.args.quick else (4, 2)
        bouncer, redis_server = PgBouncer(self.dsn), LocalRedis()
        addresses: dict[str, str] = {}

        def address(row: Strategy) -> str:  # pgBouncer started once, for the first strategy that writes through it
            if "pgbouncer" not in row.services:
                return self.dsn
            if "pgbouncer" not in addresses:
                addresses["pgbouncer"] = bouncer.start()
            return addresses["pgbouncer"]

        def maker(row: Strategy) -> Callable[[Events], Writer]:
            return lambda events: row.writer(address(row), events)

        try:
            profiles = {}
            for row in picked_strategies(self.args.strategy):
                if issubclass(row.writer, StreamWriter):  # the stream, or the valve (its pointers in a stream)
                    if redis_server.pid is None:
                        redis_server.start()
                    stream_traces = STREAM_PROFILE_TRACES if not self.args.quick else traces
                    profile = profile_valve if issubclass(row.writer, ValveWriter) else profile_stream
                    profiles[row.name] = profile(self.dsn, redis_server, pools, engineers, stream_traces)
                else:  # COPY writers send COPY text; the others turn it into values
                    values = row.reference != "copy"
                    profiles[row.name] = profile_writer(self.dsn, maker(row), pools, engineers, traces, values=values)
            return profiles
        finally:
            bouncer.stop()
            redis_server.stop()

    def crash_cost(self, _pools: Pools, _results: dict) -> dict:
        """What a worker killed -9 while it writes loses, per strategy (firehose.tools.bench.crash_cost)."""
        return crash_cost.measure(self.dsn, progress=_progress)

    def layouts(self, pools: Pools, _results: dict) -> dict:
        """COPY rows/s into partitioned tables against plain ones (firehose.tools.bench.layouts)."""
        return layouts.measure(
            self.dsn, self.args.layout, parse_duration(self.args.partition_interval), pools,
            self.args.engineers, self.traces, self.args.repetitions, progress=_progress,
        )  # fmt: skip

    def levers(self, _pools: Pools, results: dict) -> dict:
        baseline_rate = results["end_to_end"]["copy_engineer_rows_per_s"]
        lz4 = self.supports_lz4()
        levers = {}
        for label, extra in LEVERS:
            if self.args.quick and label not in QUICK_LEVERS:
                continue
            if "lz4" in extra and not lz4:
                levers[label] = {"skipped": "this server was built without lz4 (try --pg-bin)"}
                continue
            figure = Figure()
            for _ in range(self.args.repetitions):
                self.fresh_tables()
                figure.values.append(self.copy_engineers(extra))
            self.reset_tables()
            levers[label] = {**figure.as_dict(), "effect": figure.median / baseline_rate["median"] - 1}
        return levers

    def supports_lz4(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
            return "lz4" in row.fetchone()[0]

    def fresh_tables(self) -> None:
        """Empty tables, a checkpoint, so each run starts from the same state (as a sweep's cells do)."""
        empty_tables(self.dsn)

    def reset_tables(self) -> None:
        """Undo a lever that changed the tables (lz4 compression)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for table in TABLES:
                conn.execute(f"ALTER TABLE {table} ALTER COLUMN attributes SET COMPRESSION default")


PARTS: tuple[Part, ...] = (
    Part("generator", Bench.generator),
    Part("end_to_end", Bench.end_to_end),
    Part("client_profile", Bench.client_profile),
    Part("profiles", Bench.profiles),
    Part("strategies", Bench.strategies),
    Part("levers", Bench.levers),
    Part("layouts", Bench.layouts),
    Part("crash_cost", Bench.crash_cost, optional=True),
)
"""What a bench measures, in this order (the strategies read the profiles, the levers the end-to-end figure)."""


def reference_label(row: Strategy) -> str:
    """How a strategy's reference is named in the results: another strategy's run, or the C client's kind."""
    return row.bench_reference.__name__ if row.bench_reference is not None else LABELS[row.reference]


def picked_strategies(picked: list[str] | None) -> list[Strategy]:
    """The strategies to run, in the table's order: those picked (all by default), and the runs they are
    measured against."""
    wanted = set(picked or (row.name for row in bench_strategies()))
    for row in bench_strategies():
        if row.name in wanted and row.bench_reference is not None:
            wanted.add(row.bench_reference.__name__)  # its reference, run in the same repetition
    return [row for row in bench_strategies() if row.name in wanted]


def count_all(dsn: str) -> int:
    """Rows in the telemetry tables (a raw \\copy into emptied tables wrote all of them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
