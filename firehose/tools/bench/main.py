"""`firehose bench`: is the load generator ever the bottleneck? Ratios against the physical limit, one run.

1. Generator: events/s on one core, next to a dict-plus-orjson build and Faker per event.
2. End to end: CopyEngineer through Locust (headless) vs raw `psql \\copy` of the same rows, pre-written
   to files, with 2 parallel connections, into the same freshly truncated tables, back to back.
3. Strategies: each engineer class against its C-client reference (firehose.tools.references: pgbench running
   the same statements, or `psql \\copy`), in the same run, with the same connection counts: ours, the
   C client's, the ratio and its goal, and what each costs the server per row (firehose.tools.server_cost).
   StreamEngineer's reference is CopyEngineer of the same repetition.
4. Levers: CopyEngineer with one option changed at a time (lz4, WAL compression, synchronous_commit,
   checkpoints, COPY batch size, flushing connections).
5. Client profile: where the load generator's own CPU goes per row on the COPY path.
6. Profiles: our client's CPU per row of every strategy, in-process, with its breakdown; for the stream, Redis's
   own CPU per row and PostgreSQL's beside it.
Every figure is the median of `--repetitions` runs, reported with its spread (min-max).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import orjson
import psycopg
import redis
from faker import Faker
from locust.event import Events
from locust.stats import RequestStats

from firehose.tools.bench import crash_cost
from firehose.tools.database import add_empty_arguments, empty_tables, refusal_to_empty
from firehose.tools.headless import REPO, run_headless
from firehose.tools.references import RAW_CONNECTIONS, raw_copy, representative_rows, run_pgbench, write_copy_files
from firehose.tools.server_cost import ServerCost, process_cpu_s
from services.pgbouncer import DEFAULT_POOL_SIZE, PgBouncer
from services.postgres import EmbeddedPostgres, redact
from services.redis_server import LocalRedis
from telemetry.durations import parse_duration
from telemetry.generator import TRACES_PER_ENGINEER, EngineerTelemetry, EventIds, TraceRows, engineer_seed
from telemetry.layout import TABLES, copy_statement, parse_row
from telemetry.pools import Pools
from writers.base import Writer
from writers.batched import BatchedWriter
from writers.copy import BATCH_SIZE as BATCH
from writers.copy import CopyWriter, copy_rows
from writers.naive import NaiveWriter
from writers.pooled import PooledWriter
from writers.stream import BATCH_SIZE as STREAM_BATCH
from writers.stream import ROWS_PER_ENTRY, StreamWriter

BENCH_SEED = 20261125
ANCHOR_US = 1_764_000_000_000_000
PARTS = ("generator", "end_to_end", "client_profile", "strategies", "levers", "profiles")
"""What a bench measures, in this order (`--only` picks some)."""
STRATEGIES = ("NaiveEngineer", "BatchedEngineer", "PooledEngineer", "CopyEngineer", "StreamEngineer")
REFERENCES: dict[str, tuple[str, str]] = {
    "NaiveEngineer": ("pgbench naive, -M prepared", "naive"),
    "BatchedEngineer": ("pgbench batched, -M prepared", "batched"),
    "PooledEngineer": ("pgbench batched via pgBouncer, -M extended", "batched"),
    "CopyEngineer": ("psql \\copy", "copy"),
    "StreamEngineer": ("CopyEngineer", "copy engineer"),
}
"""Each strategy's C-client reference (firehose.tools.references) and its kind."""
STREAM_PROFILE_TRACES = 20
"""Traces per engineer in the stream's profile (50 engineers: ~19,000 rows): the SQL profiles' 4 would fill
fewer than one consumer batch of 5,000 rows, and a profile of one batch would not show the path's steady state."""
GOALS = {"NaiveEngineer": 0.80, "BatchedEngineer": 0.85, "PooledEngineer": 0.85, "CopyEngineer": 0.85,
         "StreamEngineer": 0.80}  # fmt: skip
"""Ours / reference that each strategy must reach (issue 12)."""
CONNECTIONS = {"NaiveEngineer": 50, "BatchedEngineer": 20, "PooledEngineer": 20, "CopyEngineer": 2}
"""Connections of each strategy's writer (its defaults), given to its reference too."""
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


@dataclass
class Figure:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict:
        spread = [min(self.values), max(self.values)] if self.values else []
        return {"median": self.median, "spread": spread, "values": self.values}

    def text(self, fmt: str = "{:,.0f}") -> str:
        if not self.values:
            return "n/a"
        low, high = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} ({fmt.format(low)}-{fmt.format(high)})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_empty_arguments(parser)
    parser.add_argument("--pg-dsn", default=None, help="Target server (default: the embedded PostgreSQL).")
    parser.add_argument("--pg-bin", default=None, help="Run the embedded server from these binaries instead "
                        "(e.g. /usr/lib/postgresql/15/bin, built with lz4).")  # fmt: skip
    parser.add_argument("--engineers", type=int, default=100, help="Engineers (x ~1,900 rows) per COPY run.")
    parser.add_argument("--repetitions", type=int, default=3, help="Runs per figure (median reported).")
    parser.add_argument("--strategy-users", type=int, default=50, help="Users of each strategy run.")
    parser.add_argument("--strategy-duration", default="20s", help="Duration of each strategy run.")
    parser.add_argument("--quick", action="store_true", help="A small, fast, single-repetition run (for tests).")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        default=None,
        help="Measure only this part (repeatable; default: all). E.g. --only end_to_end to compare two builds.",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=STRATEGIES,
        default=None,
        help="In the strategies part, run only this strategy and its reference (repeatable; default: all). "
        "StreamEngineer brings CopyEngineer, its reference.",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="Directory of the results files.")
    parser.add_argument(
        "--crash-cost",
        action="store_true",
        help="Also kill -9 a writing worker of each strategy "
        "and tabulate what died with it (firehose.tools.bench.crash_cost; ~1 min per strategy).",
    )


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.engineers, args.repetitions, args.strategy_users, args.strategy_duration = 3, 1, 3, "3s"
    if args.pg_dsn is not None and (refusal := refusal_to_empty(args.pg_dsn, "bench", args.yes)) is not None:
        sys.stderr.write(refusal + "\n")
        return 2
    server = None
    if args.pg_dsn is None:
        server = EmbeddedPostgres(bin_dir=args.pg_bin)
        args.pg_dsn = server.start()
    try:
        results = Bench(args).run()
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
        parts = set(self.args.only or PARTS)
        pools = Pools.build(0)
        results: dict = {"machine": self.machine()}
        if "generator" in parts:
            results["generator"] = self.generator(pools)
        if parts & {"end_to_end", "levers"}:
            with tempfile.TemporaryDirectory(prefix="firehose-bench-") as scratch:
                files, rows = write_copy_files(Path(scratch), pools, self.args.engineers, self.traces)
                results["end_to_end"] = self.end_to_end(files, rows)
        if "client_profile" in parts:
            results["client_profile"] = profile_client(self.dsn, pools, engineers=50 if not self.args.quick else 2)
        if "profiles" in parts:
            results["profiles"] = self.profiles(pools)
        if "strategies" in parts:
            results["strategies"] = self.strategies(pools)
            if "profiles" in results:
                for name, profile in results["profiles"].items():
                    results["strategies"]["client_cpu_us_per_row"][name] = profile["client_cpu_us_per_row"]
        if "levers" in parts:
            results["levers"] = self.levers(results["end_to_end"]["copy_engineer_rows_per_s"])
        if self.args.crash_cost:
            results["crash_cost"] = crash_cost.measure(self.dsn, progress=_progress)
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
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def generator(self, pools: Pools) -> dict:
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

    def end_to_end(self, parts: list[dict[str, Path]], rows: int) -> dict:
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
            "CopyEngineer", self.args.engineers, pg_dsn=self.dsn,
            extra=["--seed", str(BENCH_SEED), "--traces-per-engineer", str(self.traces), *extra],
        )  # fmt: skip
        if not result.ok or result.summary["events"]["lost"]:
            raise RuntimeError(f"CopyEngineer run failed or lost rows:\n{result.output}")
        return result.summary["writes"]["rows_per_s"]

    def strategies(self, pools: Pools) -> dict:
        """Each strategy and its C-client reference, back to back in each repetition, each into emptied
        tables, with the server's counters sampled around every run."""
        seconds = int(parse_duration(self.args.strategy_duration))
        names = picked_strategies(self.args.strategy)
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
                    for name in names:
                        lingering = DEFAULT_POOL_SIZE if name == "PooledEngineer" else 0
                        self.fresh_tables()
                        before, redis_before = cost.sample(), process_cpu_s(redis_server.pid)
                        result = run_headless(
                            name, self.args.strategy_users, pg_dsn=self.dsn, run_time=self.args.strategy_duration,
                            extra=["--continuous", "--seed", str(BENCH_SEED), *services],
                        )  # fmt: skip
                        if not result.ok or result.summary["events"]["lost"]:
                            raise RuntimeError(f"{name} run failed or lost rows:\n{result.output}")
                        written = result.summary["writes"]["rows"]
                        _progress(f"{name}: {result.summary['writes']['rows_per_s']:,.0f} rows/s")
                        costs[name]["ours"].append(
                            cost.per_row(before, cost.sample(before, lingering=lingering), written)
                        )
                        if name == "StreamEngineer":  # the run's Redis is a server too: its CPU beside PostgreSQL's
                            redis_cpu = process_cpu_s(redis_server.pid) - redis_before
                            costs[name]["ours"][-1]["redis_cpu_us_per_row"] = redis_cpu / max(written, 1) * 1e6
                        ours[name].values.append(result.summary["writes"]["rows_per_s"])
                        kind = REFERENCES[name][1]
                        if kind == "copy engineer":
                            reference[name].values.append(ours["CopyEngineer"].values[-1])
                            continue
                        self.fresh_tables()
                        before = cost.sample()
                        if kind == "copy":
                            rate = raw_copy(self.dsn, files, copy_rows_total)
                            claimed, counted = copy_rows_total, count_all(self.dsn)
                        else:
                            run = run_pgbench(
                                self.dsn, kind, rows, clients=CONNECTIONS[name], seconds=seconds,
                                protocol="extended" if name == "PooledEngineer" else "prepared",
                                through=bouncer.dsn if name == "PooledEngineer" else None,
                            )  # fmt: skip
                            rate, claimed, counted = run.rows_per_s, run.rows_claimed, run.rows_counted
                        costs[name]["reference"].append(
                            cost.per_row(before, cost.sample(before, lingering=lingering), counted)
                        )
                        reference[name].values.append(rate)
                        _progress(f"{name}'s reference ({REFERENCES[name][0]}): {rate:,.0f} rows/s")
                        checks[name].append({"rows_claimed": claimed, "rows_counted": counted})
            finally:
                bouncer.stop()
                redis_server.stop()
        return {
            "users": self.args.strategy_users,
            "duration": self.args.strategy_duration,
            "rows_per_s": {name: figure.as_dict() for name, figure in ours.items()},
            "reference": {name: REFERENCES[name][0] for name in names},
            "connections": {name: CONNECTIONS.get(name) for name in names},
            "reference_rows_per_s": {name: figure.as_dict() for name, figure in reference.items()},
            "reference_rows": checks,
            "ratio_to_reference": {name: ours[name].median / reference[name].median for name in names},
            "goal": GOALS,
            "ratio_to_naive": {
                name: ours[name].median / ours["NaiveEngineer"].median for name in names if "NaiveEngineer" in names
            },
            "server_cost": {
                name: {side: median_costs(runs) for side, runs in sides.items()} for name, sides in costs.items()
            },
            "client_cpu_us_per_row": {},
        }

    def profiles(self, pools: Pools) -> dict:
        """Our client's CPU per row of each strategy, in this process, and where it goes."""
        engineers, traces = (50, 4) if not self.args.quick else (4, 2)
        bouncer, redis_server = PgBouncer(self.dsn), LocalRedis()
        try:
            writers = {
                "NaiveEngineer": lambda events: NaiveWriter(self.dsn, events),
                "BatchedEngineer": lambda events: BatchedWriter(self.dsn, events),
                "PooledEngineer": lambda events: PooledWriter(bouncer.start(), events),
                "CopyEngineer": lambda events: CopyWriter(self.dsn, events),
            }
            profiles = {name: profile_writer(self.dsn, make, pools, engineers, traces, values=name != "CopyEngineer")
                        for name, make in writers.items()}  # fmt: skip
            redis_server.start()
            stream_traces = STREAM_PROFILE_TRACES if not self.args.quick else traces
            profiles["StreamEngineer"] = profile_stream(self.dsn, redis_server, pools, engineers, stream_traces)
            return profiles
        finally:
            bouncer.stop()
            redis_server.stop()

    def levers(self, baseline: dict) -> dict:
        lz4 = self.supports_lz4()
        results = {}
        for label, extra in LEVERS:
            if "lz4" in extra and not lz4:
                results[label] = {"skipped": "this server was built without lz4 (try --pg-bin)"}
                continue
            figure = Figure()
            for _ in range(self.args.repetitions):
                self.fresh_tables()
                figure.values.append(self.copy_engineers(extra))
            self.reset_tables()
            results[label] = {**figure.as_dict(), "effect": figure.median / baseline["median"] - 1}
        return results

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


def picked_strategies(picked: list[str] | None) -> list[str]:
    """The strategies to run, in the bench's order: those picked (all by default), and the references they need."""
    wanted = set(picked or STRATEGIES)
    if "StreamEngineer" in wanted:
        wanted.add("CopyEngineer")  # its reference, run in the same repetition
    return [name for name in STRATEGIES if name in wanted]


def profile_client(dsn: str, pools: Pools, engineers: int) -> dict:
    """CPU per row of the COPY path in this process (no Locust), and its steps measured one at a time.

    cProfile cannot split this path: it keeps one call stack per thread, and greenlet switches make a
    suspended COPY look as if it ran what the other greenlets did. So each step runs on its own, timed
    with the process's CPU clock (waiting for the server costs no CPU), next to the whole path.
    """
    whole = _copy_path(dsn, pools, engineers)
    start = time.process_time()
    lines: dict[str, list[str]] = {table: [] for table in TABLES}
    ids = EventIds(3)
    for ordinal in range(1, engineers + 1):
        for rows in EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal)).traces(ids):
            for table in TABLES:
                lines[table] += getattr(rows, table)
    compose = time.process_time() - start
    start = time.process_time()
    batches = [
        (table, "".join(rows[at : at + BATCH]).encode())
        for table, rows in lines.items()
        for at in range(0, len(rows), BATCH)
    ]
    encode = time.process_time() - start
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        start = time.process_time()
        for table, data in batches:
            copy_rows(conn, copy_statement(table), data)
        send = time.process_time() - start
    rows = sum(map(len, lines.values()))
    steps = {
        "compose rows (telemetry.generator)": compose,
        "join + encode batches": encode,
        "COPY through psycopg and libpq": send,
    }
    steps["everything else (buffering, gevent, pool, Locust-free bookkeeping)"] = max(
        whole["cpu_s"] / whole["rows"] * rows - sum(steps.values()), 0.0
    )
    return {
        "rows": whole["rows"],
        "rows_per_s": whole["rows"] / whole["wall_s"],
        "client_cpu_us_per_row": whole["cpu_s"] / whole["rows"] * 1e6,
        "client_cpu_share_of_a_core": whole["cpu_s"] / whole["wall_s"],
        "us_per_row": {label: seconds / rows * 1e6 for label, seconds in steps.items()},
    }


def _copy_path(dsn: str, pools: Pools, engineers: int) -> dict:
    """Engineers' rows through a CopyWriter into emptied tables, as greenlets of this process."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    writer = CopyWriter(dsn, Events())
    ids = EventIds(2)

    def engineer(ordinal: int) -> None:
        for rows in EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal)).traces(ids):
            writer.write(rows)
            gevent.sleep(0)

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(engineer, ordinal) for ordinal in range(1, engineers + 1)])
    writer.close()
    return {
        "rows": sum(writer.tally.acknowledged.values()),
        "cpu_s": time.process_time() - start_cpu,
        "wall_s": time.perf_counter() - start_wall,
    }


def profile_writer(
    dsn: str, make: Callable[[Events], Writer], pools: Pools, engineers: int, traces: int, *, values: bool
) -> dict:
    """CPU per row of one writer's whole path in this process (engineers as greenlets, Locust's stats
    listening to the request events), and its steps timed on their own: composing the rows, turning them
    into values (`values`) or joining and encoding batches, and firing the request events into the stats."""
    empty_tables(dsn)
    events, stats = _listened_events()
    writer = make(events)  # connecting is start-up, not the path: outside the timed part
    ids = EventIds(4)

    def engineer(ordinal: int) -> None:
        for rows in EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal), traces=traces).traces(ids):
            writer.write(rows)
            gevent.sleep(0)

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(engineer, ordinal) for ordinal in range(1, engineers + 1)])
    writer.flush()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    writer.close()
    rows = sum(writer.tally.acknowledged.values())
    requests = stats.total.num_requests
    # The steps, each on its own: the same rows composed again, converted, and as many request events fired.
    start = time.process_time()
    lines = [line for ordinal in range(1, engineers + 1)
             for trace in EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal), traces=traces).traces(ids)
             for _, table_lines in trace.by_table() for line in table_lines]  # fmt: skip
    compose = time.process_time() - start
    start = time.process_time()
    if values:
        for line in lines:
            parse_row(line)
    else:
        for at in range(0, len(lines), BATCH):
            "".join(lines[at : at + BATCH]).encode()
    convert = time.process_time() - start
    start = time.process_time()
    for _ in range(requests):
        events.request.fire(request_type="INSERT", name="spans", response_time=1.0, response_length=3000,
                            exception=None, context={})  # fmt: skip
    fire = time.process_time() - start
    steps = {
        "compose rows (telemetry.generator)": compose,
        "COPY text to values (parse_row)" if values else "join + encode batches": convert,
        f"Locust request events ({requests / max(rows, 1):.3f} per row)": fire,
    }
    return per_row_profile(rows, wall, cpu, steps, "driver, pool, delivery loop, gevent (the rest)")


def profile_stream(dsn: str, redis_server: LocalRedis, pools: Pools, engineers: int, traces: int) -> dict:
    """CPU per row of the stream path in this process (engineers XADDing and the writer's consumers COPYing, as
    greenlets, Locust's stats listening), on the run's own durable Redis; Redis's CPU (from /proc) and
    PostgreSQL's per row beside it. Then each step on its own, as `profile_writer` does: the same rows composed,
    XADDed by a producer-only writer to a stream of their own, read back with XAUTOCLAIM + XREADGROUP in the
    consumers' batches, joined per table, COPYed (into emptied tables), and acknowledged (XACK + XDEL, one MULTI)."""
    empty_tables(dsn)
    events, _ = _listened_events()
    cost = ServerCost(dsn)
    writer = StreamWriter(dsn, events, redis_url=redis_server.url, run_id=1)
    ids = EventIds(5)

    def engineer(ordinal: int) -> None:
        for rows in EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal), traces=traces).traces(ids):
            writer.write(rows)
            gevent.sleep(0)

    server_before, redis_before = cost.sample(), process_cpu_s(redis_server.pid)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(engineer, ordinal) for ordinal in range(1, engineers + 1)])
    writer.flush()  # every entry COPYed and acknowledged
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    redis_cpu = process_cpu_s(redis_server.pid) - redis_before
    writer.close()
    rows = sum(writer.tally.acknowledged.values())
    server = cost.per_row(server_before, cost.sample(server_before), rows)

    # The steps, each on its own.
    start = time.process_time()
    by_engineer = [
        list(EngineerTelemetry(pools, engineer_seed(BENCH_SEED, 0, ordinal), traces=traces).traces(ids))
        for ordinal in range(1, engineers + 1)
    ]
    compose = time.process_time() - start
    producer = StreamWriter(dsn, Events(), redis_url=redis_server.url, run_id=2, consumers=0)

    def produce_traces(traces: list[TraceRows]) -> None:
        for trace in traces:
            producer.write(trace)

    start = time.process_time()  # as many engineers at once as in the whole path: the senders pipeline their XADDs
    gevent.joinall([gevent.spawn(produce_traces, traces) for traces in by_engineer])
    produce = time.process_time() - start
    client = redis.Redis.from_url(redis_server.url)
    batches, per_read, consumer = [], max(1, STREAM_BATCH // ROWS_PER_ENTRY), "profile"
    start = time.process_time()
    while True:
        client.xautoclaim(producer.stream, producer.group, consumer, producer.claim_idle_ms, count=per_read)
        reply = client.xreadgroup(producer.group, consumer, {producer.stream: ">"}, count=per_read)
        if not reply:
            break
        batches.append(reply[0][1])
    read = time.process_time() - start
    start = time.process_time()
    copies = []
    for entries in batches:
        for table in TABLES:
            key = table.encode()
            parts = [fields[key] for _, fields in entries if fields[key]]
            sum(part.count(b"\n") for part in parts)  # the consumer counts each entry's rows too (writers.stream)
            copies.append((table, b"".join(parts)))
    join = time.process_time() - start
    empty_tables(dsn)
    with psycopg.connect(dsn) as conn:
        start = time.process_time()
        for table, data in copies:
            with conn.transaction():
                copy_rows(conn, copy_statement(table), data)
        copy = time.process_time() - start
    start = time.process_time()
    for entries in batches:
        ids_read = [entry_id for entry_id, _ in entries]
        with client.pipeline(transaction=True) as pipe:
            for entry_id in ids_read:
                pipe.xack(producer.stream, producer.group, entry_id)
            pipe.xdel(producer.stream, *ids_read)
            pipe.execute()
    settle = time.process_time() - start
    producer.close()
    client.delete(writer.stream, producer.stream)
    client.close()
    steps = {
        "compose rows (telemetry.generator)": compose,
        "producer: XADDs (pipelined), payloads, round trips, request events": produce,
        "consumer: XAUTOCLAIM + XREADGROUP, replies parsed": read,
        "consumer: join COPY text per table": join,
        "consumer: COPY through psycopg and libpq": copy,
        "consumer: XACK + XDEL (one MULTI)": settle,
    }
    return per_row_profile(rows, wall, cpu, steps, "gevent, pools, delivery loop, tallies (the rest)") | {
        "redis_cpu_us_per_row": redis_cpu / max(rows, 1) * 1e6,
        "server_cpu_us_per_row": server["server_cpu_us_per_row"],
    }


def per_row_profile(rows: int, wall: float, cpu: float, steps: dict[str, float], rest: str) -> dict:
    """Client CPU per row, and per step: each step timed on its own, `rest` what the whole path spent beyond them."""
    steps = steps | {rest: max(cpu - sum(steps.values()), 0.0)}
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "client_cpu_us_per_row": cpu / max(rows, 1) * 1e6,
        "client_cpu_share_of_a_core": cpu / wall,
        "us_per_row": {label: seconds / max(rows, 1) * 1e6 for label, seconds in steps.items()},
    }


def _listened_events() -> tuple[Events, RequestStats]:
    """Events whose request events Locust's stats log, as in a run."""
    events = Events()
    stats = RequestStats()
    events.request.add_listener(
        lambda request_type, name, response_time, response_length, **_: stats.log_request(
            request_type, name, response_time, response_length
        )
    )
    return events, stats


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def median_costs(runs: list[dict]) -> dict:
    """Per-row server costs of several runs: the median of each figure (None where a figure is unknown)."""
    if not runs:
        return {}
    keys = [key for key in runs[0] if key.endswith("_per_row") or key.endswith("_per_1k_rows")]
    return {
        key: statistics.median(values) if (values := [run[key] for run in runs if run[key] is not None]) else None
        for key in keys
    }


def count_all(dsn: str) -> int:
    """Rows in the telemetry tables (a raw \\copy into emptied tables wrote all of them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)


def time_generator(pools: Pools, engineers: int) -> tuple[int, float, float]:
    """Events generated, seconds of CPU on this one core, mean row bytes."""
    ids = EventIds(1)
    events = size = 0
    start = time.process_time()
    for ordinal in range(1, engineers + 1):
        seed = engineer_seed(BENCH_SEED, 0, ordinal)
        for rows in EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids):
            events += len(rows)
            size += sum(map(len, rows.spans)) + sum(map(len, rows.metrics)) + sum(map(len, rows.logs))
    return events, time.process_time() - start, size / events


def time_dict_orjson(pools: Pools, events: int) -> float:
    """The straightforward build: one dict per event, every attribute drawn from its own value list, orjson.

    It draws from the same values our pools hold (no Faker), so the ratio measures only the composition.
    """
    rng = random.Random(BENCH_SEED)
    choices: dict[str, list] = {}
    fragments = [*pools.resources.values(), *pools.headers, *(profile.members for profile in pools.profiles)]
    for fragment in fragments:
        for key, value in orjson.loads("{" + fragment.replace("\\\\", "\\") + "}").items():
            choices.setdefault(key, []).append(value)
    start = time.process_time()
    for n in range(events):
        event = {
            "event_id": n,
            "trace_id": "%032x" % rng.getrandbits(128),
            "span_id": "%016x" % rng.getrandbits(64),
            "service_name": rng.choice(choices["service.name"]),
            "start_time": datetime.datetime.fromtimestamp(ANCHOR_US / 1e6 + n, datetime.UTC).isoformat(),
            "duration_ms": rng.random() * 1000,
            "status_code": 1,
            "attributes": {key: rng.choice(values) for key, values in choices.items()},
        }
        orjson.dumps(event)
    return events / (time.process_time() - start)


def time_faker_per_event(events: int) -> float:
    """Faker called for each event's values (what pools avoid)."""
    fake = Faker("en_US")
    start = time.process_time()
    for _ in range(events):
        event = {
            "user_agent": fake.user_agent(),
            "client": fake.ipv4_public(),
            "request_id": fake.uuid4(),
            "user": fake.user_name(),
            "email": fake.email(),
            "prompt": fake.text(max_nb_chars=600),
            "url": fake.uri(),
        }
        orjson.dumps(event)
    return events / (time.process_time() - start)


def render_markdown(results: dict) -> str:
    """The parts of `results` that were measured, as Markdown."""
    machine = results["machine"]
    settings = ", ".join(f"{name}={value}" for name, value in machine["settings"].items())
    lines = [
        f"## firehose bench, {machine['date']}",
        "",
        f"{machine['cores']} cores, PostgreSQL {machine['postgresql']} ({settings}), Python {machine['python']}; "
        f"median of {machine['repetitions']} (min-max).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    if generator := results.get("generator"):
        lines += [
            f"| generator, events/s on one core | {_fig(generator['events_per_s'])} |",
            f"| generator vs dict + orjson per event | {generator['ratio_to_dict_orjson']:.1f}x |",
            f"| generator vs Faker per event | {generator['ratio_to_faker']:.0f}x |",
        ]
    if e2e := results.get("end_to_end"):
        lines += [
            f"| raw `psql \\copy`, {RAW_CONNECTIONS} connections, rows/s ({e2e['rows']:,} rows) "
            f"| {_fig(e2e['raw_copy_rows_per_s'])} |",
            f"| CopyEngineer through Locust, rows/s (same rows) | {_fig(e2e['copy_engineer_rows_per_s'])} |",
            f"| **end to end / raw \\copy** | **{e2e['ratio']:.2f}** |",
        ]
    if profile := results.get("client_profile"):
        lines += ["", *_profile_lines(profile)]
    if strategies := results.get("strategies"):
        lines += ["", *_strategy_lines(strategies)]
    if profiles := results.get("profiles"):
        for name, profile in profiles.items():
            lines += ["", f"**{name}**: " + _profile_lines(profile)[0], *_profile_lines(profile)[1:]]
    if levers := results.get("levers"):
        lines += ["", "Levers (CopyEngineer, one change at a time, vs the end-to-end figure above):", "",
                  "| lever | rows/s | effect |", "|---|---|---|"]  # fmt: skip
        for label, data in levers.items():
            if "skipped" in data:
                lines.append(f"| {label} | skipped: {data['skipped']} | |")
            else:
                lines.append(f"| {label} | {_fig(data)} | {data['effect']:+.0%} |")
    if costs := results.get("crash_cost"):
        lines += ["", *crash_cost.markdown_lines(costs)]
    return "\n".join(lines) + "\n"


def _fig(data: dict) -> str:
    return Figure(data["values"]).text()


def _strategy_lines(strategies: dict) -> list[str]:
    """Ours vs the C client per strategy, the goal, and what each costs the server per row."""
    lines = [
        f"Strategies against their C-client references ({strategies['users']} users, {strategies['duration']} "
        "each, --continuous; the reference with the strategy's connection count, in the same run):",
        "",
        "| strategy | ours, rows/s | reference | reference, rows/s | ours / reference | goal | client us/row |",
        "|---|--:|---|--:|--:|---|--:|",
    ]
    for name, data in strategies["rows_per_s"].items():
        ratio, goal = strategies["ratio_to_reference"][name], strategies["goal"][name]
        verdict = "met" if ratio >= goal else f"short by {goal - ratio:.2f}"
        cpu = strategies["client_cpu_us_per_row"].get(name)
        lines.append(
            f"| {name} | {_fig(data)} | {strategies['reference'][name]} | "
            f"{_fig(strategies['reference_rows_per_s'][name])} | **{ratio:.2f}** | >= {goal:.2f}: {verdict} | "
            f"{'' if cpu is None else f'{cpu:.0f}'} |"
        )
    lines += [
        "",
        "What each costs the server per row (medians; ours / the reference): WAL bytes, bytes on disk (heap, TOAST,",
        "indexes), the server's CPU (all its processes, from /proc), commits and WAL fsyncs per 1,000 rows:",
        "",
        "| strategy | WAL B/row | disk B/row | server CPU us/row | commits /1k rows | WAL syncs /1k rows |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, sides in strategies["server_cost"].items():
        ours, ref = sides["ours"], sides.get("reference") or {}
        cells = [
            f"{_cost(ours.get(key), digits)} / {_cost(ref.get(key), digits)}"
            for key, digits in (("wal_bytes_per_row", 0), ("disk_bytes_per_row", 0), ("server_cpu_us_per_row", 0),
                                ("commits_per_1k_rows", 1), ("wal_syncs_per_1k_rows", 1))
        ]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if redis_cpu := strategies["server_cost"].get("StreamEngineer", {}).get("ours", {}).get("redis_cpu_us_per_row"):
        lines += [
            "",
            f"StreamEngineer's Redis (append-only file, fsynced per write) spent {redis_cpu:.1f} us of CPU per row.",
        ]
    return lines


def _cost(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _profile_lines(profile: dict) -> list[str]:
    lines = [
        f"Client CPU per row (in-process, {profile['rows']:,} rows at {profile['rows_per_s']:,.0f} "
        f"rows/s): **{profile['client_cpu_us_per_row']:.1f} us/row**, "
        f"{profile['client_cpu_share_of_a_core']:.0%} of one core:",
        "",
        "| step | us/row |",
        "|---|---|",
    ]
    lines += [f"| {label} | {us:.1f} |" for label, us in profile["us_per_row"].items()]
    if "redis_cpu_us_per_row" in profile:
        lines += [
            "",
            f"Beside it, the servers' own CPU per row (user + system time from /proc, same run): Redis "
            f"{profile['redis_cpu_us_per_row']:.1f} us/row, PostgreSQL {_cost(profile['server_cpu_us_per_row'], 1)} "
            "us/row.",
        ]
    return lines
