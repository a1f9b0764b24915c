"""`firehose capacity`: how many engineers (at E events a day each) a PostgreSQL serves, per strategy.

For each strategy (--strategies), a search (firehose.tools.capacity.search) of short runs ("probes") of
`locust <Strategy> --population N -u USERS -t DURATION` (users/population.py: the users are gateways offering
N x E / 86,400 events/s): from --start it doubles N while a probe holds, then bisects, no finer than --precision
or the run-to-run spread of the saturated probes' ceilings. A probe holds when its p99 lag behind schedule is under
--lag-bound (users/pacing.py), its freshness p99 (hand-over to commit) under --freshness-bound, it lost no row and
exited 0. Each probe starts on emptied tables; who used the CPU is sampled as chaos does
(firehose.tools.cpu_usage), and the first probe that failed names what ran out: the client's CPU (a Locust
process near a whole core), the server's (PostgreSQL's processes near the cores the client left), or neither.

Writes results/capacity-<timestamp>/ (capacity.md, capacity.json, capacity.png: achieved vs offered, lag vs
population): per strategy "serves N engineers at E events/day (peak X events/s), limited by ...", every probe's
figures, and the ceiling in the reference's units (rows/s). Exit 1 when a strategy held at no population.
"""

from __future__ import annotations

import argparse
import datetime
import sys

from firehose.run.endpoints import FLAGS, RunServices, given_addresses
from firehose.strategies import strategy_named
from firehose.tools.capacity.report import render_chart, render_markdown
from firehose.tools.capacity.search import Probe, SearchResult, search
from firehose.tools.cpu_usage import CLIENT_CLASS, SERVER_CLASSES, CpuUsage
from firehose.tools.database import add_target_arguments, empty_tables, refusal_to_empty
from firehose.tools.headless import RUN_OVERHEAD_S, passed_to_locust, results_dir, run_headless
from firehose.tools.machine import machine_info
from firehose.tools.results import write_report
from services.postgres import redact
from telemetry.durations import parse_duration
from users import CopyEngineer
from users.population import DAY_SHAPES, EVENTS_PER_ENGINEER_DAY, daily_rate

DEFAULT_STRATEGIES = CopyEngineer.__name__
"""The reference's fastest strategy; `make capacity` adds batched and naive."""
DEFAULT_START = 100_000
"""~2,200 events/s at 1,900 events/day: under every strategy's ceiling here, so doubling brackets in a few probes."""
DEFAULT_DURATION = "15s"
"""Long enough for three 5-s lag steps and a few COPY batches per table; short enough for ~10 probes a strategy."""
DEFAULT_USERS = 8
"""Gateways: enough to keep a strategy's connections busy (COPY's 2, batched's 20 with several batches each)."""
LAG_BOUND_S = 1.0
FRESHNESS_BOUND_S = 30.0
"""Freshness includes the wait for a batch to fill (5,000 rows for COPY: ~10 s for the logs table at 2,000
events/s), so only a bound well above that catches a server that falls behind rather than a slow trickle."""
MACHINE_FULL_SHARE = 0.95
"""Every core this busy (other processes included) with neither side near its own share: the machine ran out."""
PRECISION = 0.1
MAX_PROBES = 10
CPU_FULL_SHARE = 0.8
"""A CPU counts as run out at this share of what it could use (samples every 0.5 s miss a little; start-up and
the drain are in the wall time)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose capacity`'s options; what follows `--` goes to every Locust run as is."""
    parser.add_argument(
        "--strategies", default=DEFAULT_STRATEGIES, help="Engineer classes, comma-separated (default: %(default)s)."
    )
    parser.add_argument(
        "--events-per-engineer-day",
        type=float,
        default=EVENTS_PER_ENGINEER_DAY,
        help="Events each engineer sends a day (default: %(default)g).",
    )
    parser.add_argument("--day-shape", choices=sorted(DAY_SHAPES), default="flat", help="flat or office (peak hour).")
    parser.add_argument("--start", type=int, default=DEFAULT_START, help="First population probed (%(default)s).")
    parser.add_argument("--duration", default=DEFAULT_DURATION, help="Run time of each probe (default: %(default)s).")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Gateways (Locust users) of each probe.")
    parser.add_argument("--processes", type=int, default=0, help="Locust --processes of each probe (default: one).")
    parser.add_argument("--lag-bound", type=float, default=LAG_BOUND_S, help="p99 lag (s) a probe may have.")
    parser.add_argument(
        "--freshness-bound", type=float, default=FRESHNESS_BOUND_S, help="Freshness p99 (s) a probe may have."
    )
    parser.add_argument(
        "--precision", type=float, default=PRECISION, help="Bisect until served/failed is within this (0.1: 10 %%)."
    )
    parser.add_argument("--max-probes", type=int, default=MAX_PROBES, help="Probes per strategy at most.")
    add_target_arguments(parser)
    parser.add_argument("--out", default=None, help="Results directory (default: results/capacity-<timestamp>).")
    parser.add_argument(
        "locust_args", nargs=argparse.REMAINDER, help="After `--`: options for every Locust run, e.g. `-- --seed 1`."
    )


def run(args: argparse.Namespace) -> int:
    """Search each strategy, write the results, print the report; 2 when refused, 1 when one held at no population."""
    try:
        parse_duration(args.duration)
        strategies = [strategy_named(name.strip()).name for name in args.strategies.split(",") if name.strip()]
    except ValueError as error:
        sys.stderr.write(f"firehose capacity: {error}\n")
        return 2
    if args.start < 1 or args.users < 1 or args.precision <= 0 or args.max_probes < 1:
        sys.stderr.write("firehose capacity: --start, --users, --max-probes must be at least 1, --precision above 0\n")
        return 2
    out = results_dir(args.out, "capacity")
    locust_args = passed_to_locust(args.locust_args)
    services = RunServices(
        given_addresses(args), embedded_port=args.embedded_port, embedded_data_dir=args.embedded_data_dir
    )
    try:
        dsn = services.start_postgres()
        if (refusal := refusal_to_empty(dsn, "capacity", args.yes)) is not None:
            sys.stderr.write(refusal + "\n")
            return 2
        results = {}
        for strategy in strategies:
            needed = [name for name in strategy_named(strategy).services if FLAGS[name] not in locust_args]
            addresses = services.start(needed)
            service_args = [arg for name in needed for arg in (FLAGS[name], addresses[name])]
            results[strategy] = search_strategy(dsn, strategy, args, [*service_args, *locust_args])
        machine = machine_info(dsn)
    finally:
        services.stop()
    document = as_document(results, args, locust_args, dsn, machine)
    out.mkdir(parents=True, exist_ok=True)
    render_chart(document, out / "capacity.png")
    write_report(out, "capacity", render_markdown(document), document)
    return 0 if all(result.served for result in results.values()) else 1


def search_strategy(dsn: str, strategy: str, args: argparse.Namespace, locust_args: list[str]) -> SearchResult:
    """The search for one strategy, each probe printed as it ends (a search takes minutes)."""

    def printed(probe: Probe) -> None:
        figures = probe.figures
        verdict = "holds" if probe.held else "fails: " + "; ".join(figures["why_not"])
        print(
            f"{strategy} {probe.population:,} engineers: offered {probe.offered_per_s:,.0f} events/s, achieved "
            f"{probe.achieved_per_s:,.0f}, lag p99 {_s(figures['lag_p99_s'])} s: {verdict}",
            flush=True,
        )

    return search(
        lambda population: run_probe(dsn, strategy, population, args, locust_args),
        args.start,
        precision=args.precision,
        max_probes=args.max_probes,
        on_probe=printed,
    )


def run_probe(dsn: str, strategy: str, population: int, args: argparse.Namespace, locust_args: list[str]) -> Probe:
    """One run of `strategy` at `population` on emptied tables, with who used the CPU."""
    empty_tables(dsn)
    extra = [
        "--population", str(population), "--events-per-engineer-day", str(args.events_per_engineer_day),
        "--day-shape", args.day_shape, "--lag-bound", str(args.lag_bound), *locust_args,
    ]  # fmt: skip
    cpu = CpuUsage(dsn)
    cpu.start()
    try:
        outcome = run_headless(
            strategy,
            args.users,
            pg_dsn=dsn,
            run_time=args.duration,
            processes=args.processes,
            extra=extra,
            timeout=parse_duration(args.duration) + RUN_OVERHEAD_S,
        )
    finally:
        cpu.stop()
    return judge(population, outcome.summary, outcome.returncode, cpu.as_dict(), args)


def judge(population: int, summary: dict | None, returncode: int, cpu: dict, args: argparse.Namespace) -> Probe:
    """A probe's verdict and figures from its run's summary (None: it wrote none)."""
    summary = summary or {}
    model = summary.get("open_model") or {}
    lost = summary.get("events", {}).get("lost")
    freshness = [row["p99_ms"] for row in summary.get("freshness", {}).get("by_class", {}).values() if row["p99_ms"]]
    freshness_p99_s = max(freshness) / 1000 if freshness else None
    why_not = []
    if returncode != 0 or not summary:
        why_not.append(f"exit code {returncode}" + ("" if summary else ", no summary"))
    if lost:
        why_not.append(f"lost {lost:,} rows")
    lag_p99 = model.get("lag_p99_s")
    if lag_p99 is None or lag_p99 >= args.lag_bound:
        why_not.append(f"lag p99 {_s(lag_p99)} s >= {args.lag_bound:g} s")
    if freshness_p99_s is not None and freshness_p99_s >= args.freshness_bound:
        why_not.append(f"freshness p99 {freshness_p99_s:.1f} s >= {args.freshness_bound:g} s")
    return Probe(
        population=population,
        held=not why_not,
        offered_per_s=model.get("offered_per_s") or 0.0,
        achieved_per_s=model.get("achieved_per_s") or 0.0,
        figures={
            "target_per_s": daily_rate(population, args.events_per_engineer_day, args.day_shape),
            "lag_p50_s": model.get("lag_p50_s"),
            "lag_p99_s": lag_p99,
            "lag_max_s": model.get("lag_max_s"),
            "freshness_p99_s": freshness_p99_s,
            "lost": lost,
            "rows_per_s": summary.get("writes", {}).get("rows_per_s"),
            "returncode": returncode,
            "cpu": cpu,
            "limit": limiting_resource(cpu, args.processes),
            "why_not": why_not,
        },
    )


def limiting_resource(cpu: dict, processes: int) -> str:
    """What ran out in a run, from who used the CPU: the client's (a Locust process near one core: Python runs on
    one), the server's (PostgreSQL near the cores the client left), or neither (waits: I/O, locks, round trips)."""
    wall = cpu["wall_s"] or 1.0
    client = cpu["cpu_s"][CLIENT_CLASS] / wall
    server = sum(cpu["cpu_s"][kind] for kind in SERVER_CLASSES) / wall
    cores = cpu["cores"] or 1
    per_process = client / max(processes, 1)  # with --processes, the workers write; their master mostly waits
    if per_process >= CPU_FULL_SHARE:
        return f"the client's CPU (Locust {per_process:.2f} of a core per process; server {server:.2f} cores)"
    if server >= CPU_FULL_SHARE * max(cores - client, 1e-9):
        return f"the server's CPU (PostgreSQL {server:.2f} of the {cores - client:.2f} cores the client left)"
    busy = cpu.get("machine_busy_share")
    if busy is not None and busy >= MACHINE_FULL_SHARE:
        return (
            f"the machine's CPU ({busy:.0%} busy, other work included: client {client:.2f}, server {server:.2f} "
            f"of {cores} cores)"
        )
    return (
        f"neither CPU (client {client:.2f}, server {server:.2f} of {cores} cores, machine {_share(busy)} busy): "
        "waits on I/O, locks or round trips"
    )


def as_document(
    results: dict[str, SearchResult], args: argparse.Namespace, locust_args: list[str], dsn: str, machine: dict
) -> dict:
    """capacity.json: the settings, the machine and, per strategy, the verdict and every probe."""
    per_engineer = daily_rate(1, args.events_per_engineer_day, args.day_shape)
    strategies = {}
    for strategy, result in results.items():
        failed = next((p for p in result.probes if p.population == result.failed), None)
        saturated = [probe.achieved_per_s for probe in result.probes if probe.saturated]
        strategies[strategy] = {
            "served": result.served,
            "served_per_s": result.served * per_engineer,
            "failed": result.failed,
            "bracket": result.bracket,
            "precision": result.precision,
            "spread": result.spread,
            "resolution": result.resolution,
            "exhausted": result.exhausted,
            "limit": failed.figures["limit"] if failed else "nothing failed up to the largest probe",
            "ceiling_rows_per_s": max(saturated) if saturated else None,
            "probes": [
                {
                    "population": probe.population,
                    "held": probe.held,
                    "offered_per_s": probe.offered_per_s,
                    "achieved_per_s": probe.achieved_per_s,
                    "saturated": probe.saturated,
                    **probe.figures,
                }
                for probe in result.probes
            ],
        }
    return {
        "settings": {
            "events_per_engineer_day": args.events_per_engineer_day,
            "day_shape": args.day_shape,
            "peak_factor": DAY_SHAPES[args.day_shape],
            "start": args.start,
            "duration": args.duration,
            "users": args.users,
            "processes": args.processes,
            "lag_bound_s": args.lag_bound,
            "freshness_bound_s": args.freshness_bound,
            "precision": args.precision,
            "max_probes": args.max_probes,
            "locust_args": locust_args,
            "database": redact(dsn),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "machine": machine,
        "strategies": strategies,
    }


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
