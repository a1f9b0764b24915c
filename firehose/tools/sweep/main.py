"""Every write strategy at every user count, one fresh headless Locust run per cell (`firehose sweep`).

A sweep is the reference benchmark's table: strategies x engineers, rows/s in each cell. Each cell is a
real `locust -f locustfile.py <Strategy> --headless --continuous` subprocess that writes for the same
duration into the same emptied tables of one PostgreSQL (the embedded server, started once, when no
DSN is given). The services a strategy's writer declares (pgBouncer, Redis) are started once too
(firehose.run.endpoints) and handed to each run as options. A cell whose run failed, lost rows or stored
duplicates is marked, never dropped, and does not count toward a strategy's best or its ratios.

The results (`firehose.tools.sweep.report`) go to the output directory: `sweep.md`, `sweep.csv`, `sweep.json`
and `sweep.png`, with each cell's summary and log in `cells/`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import psycopg
from psycopg.conninfo import conninfo_to_dict

from firehose.run.budget import SHRINK_FLAG
from firehose.run.endpoints import FLAGS, RunServices, given_addresses
from firehose.run.preflight import Refused, partition_interval_s
from firehose.strategies import all_strategies, available_strategies, resolve_strategies, strategy_named
from firehose.tools.database import (
    DEFAULT_PARTITION_INTERVAL,
    add_empty_arguments,
    add_layout_arguments,
    empty_tables,
    layout_arguments,
    prepare_layout,
    refusal_to_empty,
)
from firehose.tools.headless import RUN_OVERHEAD_S, locust_command, passed_to_locust, results_dir, run_bounded
from firehose.tools.machine import machine_info
from firehose.tools.references import run_reference
from firehose.tools.server_cost import ServerCost
from firehose.tools.sweep.report import BASELINE, Cell, SweepResult, render_table, write_results
from services.pgbouncer import DEFAULT_POOL_SIZE
from services.postgres import EMBEDDED_PORT, LayoutMismatch, add_embedded_arguments, redact
from telemetry.durations import parse_duration
from telemetry.pools import CATALOGUE_SEED, Pools
from users.engineer import Engineer

logger = logging.getLogger("firehose")

DEFAULT_USERS = "10,50,100"
DEFAULT_DURATION = "20s"
"""What a cell writes; every cell starts with these empty (runs and writer keys are bookkeeping, kept)."""
SCALE_USERS = 50
"""Engineers of a connection-scale cell: enough to keep batches coming; the connections are the variable."""
CONNECTIONS_POLL_S = 0.5
"""How often a cell samples the server's client backends (for `server_connections`)."""


def parse_user_counts(text: str) -> list[int]:
    """`10,50,100` as sorted, distinct, positive user counts."""
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise ValueError(f"user counts must be positive integers: {text!r}")
    return counts


@dataclass
class SweepPlan:
    """What to run: strategies x user counts, each cell for `duration` with the same extra Locust options."""

    strategies: list[str]
    user_counts: list[int]
    duration: str
    out: Path
    dsn: str | None = None
    processes: int = 0
    locust_args: list[str] = field(default_factory=list)
    cell_timeout_s: float | None = None
    embedded_port: int = EMBEDDED_PORT
    embedded_data_dir: str | None = None
    connections: list[int] = field(default_factory=list)
    """Client-connection counts of the connection-scale axis (empty: no axis)."""
    references: bool = True
    """Run each strategy's C-client reference once (the database's own ratio)."""
    layout: str = "plain"
    """The telemetry tables' layout (--layout): the cells' runs get it, the references' rows get partitions."""
    partition_interval: str = DEFAULT_PARTITION_INTERVAL


def run_sweep(plan: SweepPlan, progress: Callable[[str], None] | None = None) -> SweepResult:
    """Run every cell, one after the other, on one server; report each as it ends through `progress`."""
    engineers = resolve_strategies(plan.strategies)
    progress = progress or _print_flushed
    timeout = plan.cell_timeout_s or parse_duration(plan.duration) + RUN_OVERHEAD_S
    (plan.out / "cells").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    services = RunServices(
        _given(plan), embedded_port=plan.embedded_port, embedded_data_dir=plan.embedded_data_dir, layout=plan.layout
    )
    try:
        dsn = services.start_postgres()
        now = datetime.datetime.now(datetime.UTC)  # the references write rows of their last hour; a sweep: hours
        later = now + datetime.timedelta(days=1)
        prepare_layout(dsn, plan.layout, plan.partition_interval, now - datetime.timedelta(hours=2), later)
        result = SweepResult(cells=[], machine=machine_info(dsn), settings=_settings(plan, dsn))
        scale = [row for row in all_strategies() if row.scale_option is not None and plan.connections]
        total = len(engineers) * len(plan.user_counts) + len(scale) * len(plan.connections)
        for strategy, engineer in zip(plan.strategies, engineers, strict=True):
            service_args = _service_args(services, engineer, plan)
            for users in plan.user_counts:
                empty_tables(dsn)
                cell = run_cell(strategy, users, plan, dsn, [*service_args, *plan.locust_args], timeout)
                result.cells.append(cell)
                progress(f"[{len(result.cells)}/{total}] {strategy} x {users} users: {cell.label()}")
        for row in scale:
            service_args = _service_args(services, row.user_class, plan)
            for count in plan.connections:
                empty_tables(dsn)
                extra = [*service_args, row.scale_option, str(count), *plan.locust_args]
                cell = run_cell(row.name, SCALE_USERS, plan, dsn, extra, timeout, connections=count)
                result.cells.append(cell)
                progress(f"[{len(result.cells)}/{total}] {row.name} x {count} client connections: {cell.label()}")
        if plan.references:
            result.references = run_references(plan, services, dsn, progress)
    finally:
        services.stop()
    result.settings["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _service_args(services: RunServices, engineer: type[Engineer], plan: SweepPlan) -> list[str]:
    """The services the strategy writes through, started once and handed to every run of it."""
    needed = [name for name in engineer.writer_class.services if FLAGS[name] not in plan.locust_args]
    addresses = services.start(needed)
    return [arg for name in needed for arg in (FLAGS[name], addresses[name])]


def run_references(
    plan: SweepPlan, services: RunServices, dsn: str, progress: Callable[[str], None]
) -> dict[str, dict]:
    """Each strategy's C-client reference, once per kind, into emptied tables, with its cost to the server."""
    pools = Pools.cached(CATALOGUE_SEED)
    seconds = max(1, int(parse_duration(plan.duration)))
    kinds = {strategy: strategy_named(strategy).reference for strategy in dict.fromkeys([BASELINE, *plan.strategies])}
    runs: dict[str, dict] = {}
    cost = ServerCost(dsn)
    with tempfile.TemporaryDirectory(prefix="firehose-sweep-") as scratch:
        for kind in dict.fromkeys(kinds.values()):
            bouncer = services.start(["pgbouncer"])["pgbouncer"] if kind == "pooled" else None
            empty_tables(dsn)
            before = cost.sample()
            run = run_reference(kind, dsn, pools, seconds, scratch=Path(scratch), bouncer_dsn=bouncer)
            after = cost.sample(before, lingering=DEFAULT_POOL_SIZE if kind == "pooled" else 0)
            runs[kind] = run.as_dict() | {"server_cost": cost.per_row(before, after, run.rows_counted)}
            progress(f"reference {kind} ({run.protocol}, {run.clients} connections): {run.rows_per_s:,.0f} rows/s")
    empty_tables(dsn)
    return {strategy: runs[kind] for strategy, kind in kinds.items()}


def run_cell(
    strategy: str,
    users: int,
    plan: SweepPlan,
    dsn: str,
    extra: list[str],
    timeout: float,
    *,
    connections: int | None = None,
) -> Cell:
    """One headless Locust run, in a process group of its own, killed whole if it outlives `timeout` s; the
    server's counters sampled around it and its client backends while it runs."""
    name = f"{strategy}-{users}u" + (f"-{connections}c" if connections else "")
    summary_path, log_path = plan.out / "cells" / f"{name}.json", plan.out / "cells" / f"{name}.log"
    summary_path.unlink(missing_ok=True)  # a reused --out must not lend a failed run an old summary
    command = locust_command(
        strategy, "-u", str(users), "-r", str(users), "-t", plan.duration, "--continuous",
        "--pg-dsn", dsn, "--summary-json", str(summary_path), *extra, processes=plan.processes,
    )  # fmt: skip
    cost = ServerCost(dsn)
    before = cost.sample()
    most = [0]
    poller = gevent.spawn(_count_backends, dsn, most)
    try:
        with open(log_path, "w") as log:
            returncode, timed_out = run_bounded(command, timeout, log, subprocess.STDOUT)
    finally:
        poller.kill()
    scrub_log(log_path, command)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and not timed_out else None
    lingering = DEFAULT_POOL_SIZE if "pgbouncer" in resolve_strategies([strategy])[0].writer_class.services else 0
    rows = summary["writes"]["rows"] if summary is not None else 0
    return Cell(
        strategy,
        users,
        returncode,
        summary,
        timed_out,
        str(log_path.relative_to(plan.out)),
        redacted_command(command),
        server_cost=cost.per_row(before, cost.sample(before, lingering=lingering), rows) if rows else None,
        connections=connections,
        server_connections=most[0] or None,
    )


def _count_backends(dsn: str, most: list[int]) -> None:
    """Keep in most[0] the most client backends the server had at once (until killed)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()[0]
                most[0] = max(most[0], count)
                gevent.sleep(CONNECTIONS_POLL_S)
    except psycopg.OperationalError:
        return  # the server is gone or full: the figure stays what it was


def redacted_command(command: list[str]) -> list[str]:
    """The command with the password of every DSN or URL option's value masked."""
    return [redact(arg) if prev.endswith(("-dsn", "-url")) else arg for prev, arg in pairwise(["", *command])]


def scrub_log(log_path: Path, command: list[str]) -> None:
    """Mask in a run's log the password of every DSN or URL on its command line (libpq errors may quote them)."""
    secrets = set()
    for option, value in pairwise(command):
        if option.endswith(("-dsn", "-url")):
            try:
                secrets.add(urlsplit(value).password if "://" in value else conninfo_to_dict(value).get("password"))
            except (psycopg.ProgrammingError, ValueError):
                continue  # not a DSN after all: nothing to mask
    secrets -= {None, ""}
    if secrets:
        text = log_path.read_text(errors="replace")
        for secret in secrets:
            text = text.replace(str(secret), "***")
        log_path.write_text(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose sweep`'s options; what follows `--` goes to every Locust run as is."""
    add_empty_arguments(parser)
    parser.add_argument(
        "--strategies",
        default=",".join(available_strategies()),
        help="Comma-separated engineer classes (default: all of them, %(default)s).",
    )
    parser.add_argument("--users", default=DEFAULT_USERS, help="Comma-separated user counts (default: %(default)s).")
    parser.add_argument("--duration", default=DEFAULT_DURATION, help="Run time of each cell (default: %(default)s).")
    parser.add_argument(
        "--pg-dsn",
        default=None,
        help="Target PostgreSQL. Default: the PG* variables when set, else the embedded server, started once.",
    )
    add_embedded_arguments(parser)
    parser.add_argument("--out", default=None, help="Results directory (default: results/sweep-<timestamp>).")
    parser.add_argument("--processes", type=int, default=0, help="Locust --processes of each run (default: one).")
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=None,
        help=f"Seconds after which a cell's run is killed and marked (default: duration + {RUN_OVERHEAD_S}).",
    )
    parser.add_argument(
        "--connections",
        default="",
        help=f"Client-connection counts of a connection-scale axis, e.g. 20,200,1000: {_scale_axis()}, "
        f"{SCALE_USERS} engineers each (default: no axis).",
    )
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="Skip the C-client references (pgbench, psql \\copy) and so the database's own ratio.",
    )
    parser.add_argument(
        "--migration-probe",
        type=float,
        default=0,
        metavar="SECONDS",
        help="Run the migration-lock probe every SECONDS in every cell (Locust's --migration-probe).",
    )
    add_layout_arguments(parser)
    parser.add_argument(
        "locust_args",
        nargs=argparse.REMAINDER,
        help="After `--`: options for every Locust run, e.g. `-- --traces-per-engineer 5`.",
    )


def _scale_axis() -> str:
    """The strategies of the connection-scale axis, as --help names them."""
    return " and ".join(
        f"{row.name} through pgBouncer ({DEFAULT_POOL_SIZE} server connections)"
        if "pgbouncer" in row.services
        else f"{row.name} directly"
        for row in all_strategies()
        if row.scale_option is not None
    )


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """The sweep the command line asks for; a ValueError says what is wrong with it."""
    plan = SweepPlan(
        strategies=[name.strip() for name in args.strategies.split(",") if name.strip()],
        user_counts=parse_user_counts(args.users),
        duration=args.duration,
        out=results_dir(args.out, "sweep"),
        dsn=args.pg_dsn,
        processes=args.processes,
        locust_args=passed_to_locust(args.locust_args),
        cell_timeout_s=args.cell_timeout,
        embedded_port=args.embedded_port,
        embedded_data_dir=args.embedded_data_dir,
        connections=parse_user_counts(args.connections) if args.connections.strip() else [],
        references=not args.no_references,
        layout=args.layout,
        partition_interval=args.partition_interval,
    )
    if args.migration_probe:
        plan.locust_args += ["--migration-probe", str(args.migration_probe)]
    plan.locust_args += layout_arguments(args)
    partition_interval_s(args)
    parse_duration(plan.duration)
    resolve_strategies(plan.strategies)
    if SHRINK_FLAG in plan.locust_args:
        raise ValueError(f"{SHRINK_FLAG} has no place in a sweep: a shrunk pool is another strategy")
    return plan


def run(args: argparse.Namespace) -> int:
    """Run the sweep, write its results, print the table; 0 when every cell of the grid is clean."""
    try:
        plan = plan_from_args(args)
    except (ValueError, Refused) as error:
        sys.stderr.write(f"firehose sweep: {error}\n")
        return 2
    given = _given(plan).get("postgres")  # the embedded server holds firehose's tables only
    if given is not None and (refusal := refusal_to_empty(given, "sweep", args.yes)) is not None:
        sys.stderr.write(refusal + "\n")
        return 2
    try:
        result = run_sweep(plan)
    except (LayoutMismatch, Refused) as error:  # the tables in the other layout
        sys.stderr.write(f"firehose sweep: {error}\n")
        return 2
    paths = write_results(result, plan.out)
    sys.stdout.write("\n" + render_table(result) + "\n\n" + "\n".join(str(path) for path in paths.values()) + "\n")
    # A connection-scale cell may fail by design (direct connections past max_connections): it is marked, not an error.
    return 0 if all(cell.ok for cell in result.grid) else 1


def _given(plan: SweepPlan) -> dict[str, str]:
    """The PostgreSQL the plan names (else the PG* variables'); the embedded server's when neither does."""
    given = given_addresses(argparse.Namespace())
    if plan.dsn is not None:
        given["postgres"] = plan.dsn
    return given


def _settings(plan: SweepPlan, dsn: str) -> dict:
    return {
        "strategies": plan.strategies,
        "users": plan.user_counts,
        "duration": plan.duration,
        "processes": plan.processes,
        "locust_args": plan.locust_args,
        "connections": plan.connections,
        "layout": plan.layout,
        "scale_users": SCALE_USERS,
        "bouncer_pool_size": DEFAULT_POOL_SIZE,
        "database": redact(dsn),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _print_flushed(line: str) -> None:
    print(line, flush=True)  # at once, even into a pipe (make, CI): a sweep runs for minutes
