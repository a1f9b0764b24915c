"""`firehose chaos`: a writer alone, then the same writer while 8 analysts query; retention and correct results.

On one PostgreSQL, twice, from the same starting point:
1. empty the tables and prefill --prefill rows with COPY (whole traces over --history, ending at a fixed anchor,
   so the analysts' one-hour window falls in them), counting them with the generator's own counts;
2. run `locust <Strategy> --headless --continuous -u USERS -t DURATION` ("alone"), then, after the same emptying
   and prefill, `<Strategy> Analyst -u USERS+8 --analysts 8` ("with analysts": one analyst per query, no think
   time, the reference's "8 analytical queries");
3. after each run, run every query once more over a window covering all the data and check its counts against
   the prefill's counts plus the run's `generated_counts` (only meaningful with lost = 0 and nothing quarantined).
With --replica, a third phase after the same emptying and prefill: the analysts on a streaming replica of the
embedded server (services.replica, given to Locust as --analyst-dsn: measured as a replica), its retention beside
the primary-only figure, its lag and visible freshness, its processes' CPU apart, and the checks run on the replica
once it replayed everything.
Prints and writes (results/chaos-<timestamp>/chaos.md, chaos.json): rows/s alone and with analysts, the retention
ratio, queries served per second of writing, per query count, during_writes and p50/p95/p99 ms (HDR), each
check, table sizes before and after, who used the CPU (firehose.tools.cpu_usage), the machine's cores, and the
reference's figures beside ours. Exit 1 when a check fails, a run failed, or rows were lost. With --layout
partitioned, the prefill's partitions are made before it, and both runs get --layout (they make their own).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
from locust.event import Events
from psycopg.rows import dict_row

from firehose.run.endpoints import FLAGS, RunServices, given_addresses
from firehose.run.preflight import Refused, partition_interval_s
from firehose.strategies import strategy_named
from firehose.tools.chaos.report import render_markdown
from firehose.tools.cpu_usage import CpuUsage
from firehose.tools.database import (
    add_layout_arguments,
    add_target_arguments,
    empty_tables,
    layout_arguments,
    prepare_layout,
    refusal_to_empty,
)
from firehose.tools.dataset import own_ids
from firehose.tools.headless import RUN_OVERHEAD_S, passed_to_locust, results_dir, run_headless
from firehose.tools.machine import machine_info
from firehose.tools.results import write_report
from services.postgres import LayoutMismatch, redact
from services.replica import wait_caught_up
from telemetry.counts import GeneratedCounts, merge_counts
from telemetry.durations import parse_duration
from telemetry.generator import TRACE_SECONDS, EngineerTelemetry, EventIds, TraceRows, engineer_seed
from telemetry.layout import TABLES
from telemetry.pools import CATALOGUE_SEED, Pools
from users import CopyEngineer
from users.queries import from_epoch_us, latest_error_trace, load_queries, window_parameters
from writers.copy import CopyWriter

DEFAULT_STRATEGY = CopyEngineer.__name__
"""The reference benchmark's chaos test streamed COPY."""
DEFAULT_USERS = 50
DEFAULT_DURATION = "30s"
DEFAULT_PREFILL = 200_000
"""Rows in the tables before each run: ~100 engineers' worth, so the queries read more than the run's own rows."""
DEFAULT_HISTORY = "3h"
"""Prefill and run spread over 3 h: the analysts' 1 h window selects about a third of the rows."""
ANALYSTS = 8
"""One analyst per query of queries/, like the reference's "8 analytical queries"."""
PREFILL_SEED = 0
RUN_SEED = 1
"""Fixed seeds: both phases prefill the same rows and their engineers compose the same telemetry."""
CHECK_MARGIN_S = 24 * 3600
"""The check's window reaches this far beyond the data on both sides: it must cover every row."""
RECENT_ERRORS_LIMIT = 50
"""recent_errors' LIMIT (queries/recent_errors.sql)."""
TRACE_SPANS = (5, 12)
"""Spans a trace has (telemetry.pools' topologies): what trace_lookup must find."""
CATCH_UP_S = 120
"""How long the replica may take to replay the prefill (or a run's tail) before a phase, or its checks, go on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose chaos`'s options; what follows `--` goes to both Locust runs as is."""
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, help="Engineer class (default: %(default)s).")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Engineers (default: %(default)s).")
    parser.add_argument("--duration", default=DEFAULT_DURATION, help="Run time of each phase (default: %(default)s).")
    parser.add_argument("--prefill", type=int, default=DEFAULT_PREFILL, help="Rows loaded before each phase.")
    parser.add_argument("--history", default=DEFAULT_HISTORY, help="Time the data spans (default: %(default)s).")
    parser.add_argument("--analysts", type=int, default=ANALYSTS, help="Analysts of the second phase (default: 8).")
    parser.add_argument("--processes", type=int, default=0, help="Locust --processes of each run (default: one).")
    add_target_arguments(parser)
    add_layout_arguments(parser)
    parser.add_argument(
        "--replica",
        action="store_true",
        help="A third phase: the analysts on a streaming replica of the embedded PostgreSQL (Locust's --replica, "
        "given as --analyst-dsn), beside the primary-only figures.",
    )
    parser.add_argument("--replica-port", type=int, default=None, help="Port of the replica (default: a free one).")
    parser.add_argument("--replica-data-dir", default=None, help="The replica's data directory (default: beside).")
    parser.add_argument("--out", default=None, help="Results directory (default: results/chaos-<timestamp>).")
    parser.add_argument(
        "locust_args",
        nargs=argparse.REMAINDER,
        help="After `--`: options for both Locust runs, e.g. `-- --analyst-think-time 0.1`.",
    )


def run(args: argparse.Namespace) -> int:
    """Measure, write the results, print the table; 2 when refused, 1 when a check failed or rows were lost."""
    try:
        parse_duration(args.duration)
        history_s = parse_duration(args.history)
        partition_interval_s(args)
        strategy_named(args.strategy)
    except (ValueError, Refused) as error:
        sys.stderr.write(f"firehose chaos: {error}\n")
        return 2
    out = results_dir(args.out, "chaos")
    locust_args = passed_to_locust(args.locust_args)
    services = RunServices(
        given_addresses(args),
        embedded_port=args.embedded_port,
        embedded_data_dir=args.embedded_data_dir,
        layout=args.layout,
    )
    try:
        dsn = services.start_postgres()
        if (refusal := refusal_to_empty(dsn, "chaos", args.yes)) is not None:
            sys.stderr.write(refusal + "\n")
            return 2
        replica_dsn = None
        if args.replica:
            if services.embedded is None:
                sys.stderr.write("firehose chaos: --replica makes a replica of the embedded PostgreSQL: no --pg-dsn\n")
                return 2
            replica_dsn = services.start_replica(args.replica_port, args.replica_data_dir)
        needed = [name for name in strategy_named(args.strategy).services if FLAGS[name] not in locust_args]
        addresses = services.start(needed)  # once for both phases, like the sweep
        service_args = [arg for name in needed for arg in (FLAGS[name], addresses[name])]
        result = measure(dsn, args, history_s, [*service_args, *locust_args], replica_dsn)
    except (LayoutMismatch, Refused) as error:  # the tables in the other layout
        sys.stderr.write(f"firehose chaos: {error}\n")
        return 2
    finally:
        services.stop()
    write_report(out, "chaos", render_markdown(result), result)
    return 0 if result["ok"] else 1


def measure(
    dsn: str, args: argparse.Namespace, history_s: int, locust_args: list[str], replica_dsn: str | None = None
) -> dict:
    """Both phases (three with a replica), as the JSON document written to chaos.json."""
    anchor_us = int(time.time()) * 1_000_000
    newest = from_epoch_us(anchor_us)
    earliest, latest = newest - timedelta(seconds=history_s), newest + timedelta(seconds=TRACE_SECONDS)
    prepare_layout(dsn, args.layout, args.partition_interval, earliest, latest)  # the prefill's
    phases = {}
    plan = [("alone", 0, None), ("with_analysts", args.analysts, None)]
    if replica_dsn is not None:
        plan.append(("with_analysts_on_replica", args.analysts, replica_dsn))
    for phase, analysts, replica in plan:
        phases[phase] = result = run_phase(dsn, args, history_s, anchor_us, analysts, locust_args, replica)
        failed = [name for name, check in result["checks"].items() if check["ok"] is False]
        print(  # at once, even into a pipe (make): a phase takes a minute
            f"{phase}: {result['rows_per_s']:,.0f} rows/s, lost {result['events'].get('lost', '?')}, "
            f"checks {'failed: ' + ', '.join(failed) if failed else 'passed' if result['checks'] else 'not run'}",
            flush=True,
        )
    alone, mixed = phases["alone"], phases["with_analysts"]
    retention = mixed["rows_per_s"] / alone["rows_per_s"] if alone["rows_per_s"] else None
    queries = mixed["queries"]
    total_queries = sum(query["count"] for query in queries.values())
    on_replica = phases.get("with_analysts_on_replica")
    replica_figures = None
    if on_replica is not None:
        served = sum(query["count"] for query in on_replica["queries"].values())
        replica_figures = {
            "retention": round(on_replica["rows_per_s"] / alone["rows_per_s"], 3) if alone["rows_per_s"] else None,
            "queries_served": served,
            "queries_per_s": round(served / on_replica["writing_s"], 1) if on_replica["writing_s"] else None,
        }
    return {
        "settings": {
            "strategy": args.strategy,
            "users": args.users,
            "analysts": args.analysts,
            "duration": args.duration,
            "prefill_rows": args.prefill,
            "history_s": history_s,
            "processes": args.processes,
            "layout": args.layout,
            "locust_args": locust_args,
            "database": redact(dsn),
            "newest_prefill_data": from_epoch_us(anchor_us).isoformat(),
        },
        "machine": machine_info(dsn),
        "phases": phases,
        "retention": round(retention, 3) if retention is not None else None,
        "queries_served": total_queries,
        "queries_per_s": round(total_queries / mixed["writing_s"], 1) if mixed["writing_s"] else None,
        "on_replica": replica_figures,
        "ok": all(phase["ok"] for phase in phases.values()),
    }


def run_phase(
    dsn: str,
    args: argparse.Namespace,
    history_s: int,
    anchor_us: int,
    analysts: int,
    locust_args: list[str],
    replica_dsn: str | None = None,
) -> dict:
    """Empty, prefill, run the writer (with `analysts` analysts, on the replica when one is given), then check every
    query's counts (on the replica, once it replayed the run)."""
    empty_tables(dsn)
    prefill_counts = prefill(dsn, args.prefill, history_s, anchor_us)
    before = table_sizes(dsn)
    user_classes = [args.strategy, *(["Analyst"] if analysts else [])]
    extra = ["--continuous", "--history", args.history, "--seed", str(RUN_SEED), *layout_arguments(args), *locust_args]
    if analysts:
        extra += ["--analysts", str(analysts)]
    if replica_dsn is not None:
        wait_caught_up(dsn, replica_dsn, CATCH_UP_S)  # the analysts start on the same prefill
        extra += ["--analyst-dsn", replica_dsn]
    cpu = CpuUsage(dsn, replica_dsn)
    cpu.start()
    try:
        outcome = run_headless(
            user_classes,
            args.users + analysts,
            pg_dsn=dsn,
            run_time=args.duration,
            processes=args.processes,
            extra=extra,
            timeout=parse_duration(args.duration) + RUN_OVERHEAD_S,
        )
    finally:
        cpu.stop()
    after = table_sizes(dsn)
    summary = outcome.summary or {}
    events = summary.get("events", {})
    expected = merge_counts([prefill_counts, summary.get("generated_counts", {})])
    window = (anchor_us - (history_s + CHECK_MARGIN_S) * 1_000_000, int((time.time() + CHECK_MARGIN_S) * 1_000_000))
    behind_at_checks = wait_caught_up(dsn, replica_dsn, CATCH_UP_S) if replica_dsn is not None else None
    checks = check_queries(replica_dsn or dsn, expected, window) if outcome.ok else {}
    clean = outcome.ok and events.get("lost") == 0 and not events.get("quarantined") and not events.get("duplicates")
    return {
        "user_classes": user_classes,
        "returncode": outcome.returncode,
        "output_tail": None if outcome.ok else outcome.output[-2000:],
        "rows_per_s": summary.get("writes", {}).get("rows_per_s", 0.0),
        "writing_s": summary.get("run", {}).get("writing_s", 0.0),
        "events": events,
        "queries": summary.get("queries", {}),
        "tables_before": before,
        "tables_after": after,
        "cpu": cpu.as_dict(),
        "replica": summary.get("replica"),
        "replica_behind_at_checks_bytes": behind_at_checks,
        "checks": checks,
        "ok": clean and bool(checks) and all(check["ok"] is not False for check in checks.values()),
    }


def prefill_traces(rows: int, history_s: int, anchor_us: int, ids: EventIds) -> Iterator[TraceRows]:
    """Whole traces of PREFILL_SEED's engineers, one after the other, until at least `rows` rows."""
    pools = Pools.cached(CATALOGUE_SEED)
    total, ordinal = 0, 0
    while total < rows:
        ordinal += 1
        telemetry = EngineerTelemetry(
            pools, engineer_seed(PREFILL_SEED, 0, ordinal), anchor_us=anchor_us, window_s=history_s
        )
        for trace in telemetry.traces(ids):
            yield trace
            total += len(trace)
            if total >= rows:
                return


def prefill(dsn: str, rows: int, history_s: int, anchor_us: int) -> dict:
    """COPY the prefill into the (emptied) tables; the generator's own counts of what was loaded."""
    counts = GeneratedCounts(Pools.cached(CATALOGUE_SEED).topologies)
    writer = CopyWriter(dsn, Events())
    for trace in prefill_traces(rows, history_s, anchor_us, own_ids(dsn, PREFILL_SEED, "chaos prefill")):
        counts.add(trace.facts)
        writer.write(trace)
    writer.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")  # both phases start with the same statistics
    return counts.as_dict()


def table_sizes(dsn: str) -> dict[str, dict[str, int]]:
    """Rows and pg_total_relation_size (table, TOAST and indexes; a partitioned table's partitions added up) of each
    telemetry table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            table: {
                "rows": conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0],
                "bytes": conn.execute(
                    "SELECT pg_total_relation_size(%(table)s) + (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)"
                    " FROM pg_partition_tree(%(table)s) WHERE relid <> %(table)s::regclass)::bigint",
                    {"table": table},
                ).fetchone()[0],
            }
            for table in TABLES
        }


def check_queries(dsn: str, expected: dict, window: tuple[int, int]) -> dict[str, dict]:
    """Each query once over `window` (covering every row), its counts against the generator's (`expected`).

    Per query: what is compared (`checked`), whether it matched (`ok`; None when the generator keeps no count it
    could be checked against) and, when it did not, the differences.
    """
    window_end, window_s = from_epoch_us(window[1]), (window[1] - window[0]) / 1_000_000
    queries = load_queries()
    with psycopg.connect(dsn, autocommit=True) as conn:
        trace = latest_error_trace(conn, window_end, window_s)

        def result(name: str, **values: object) -> list[dict]:
            query, cursor = queries[name], conn.cursor(row_factory=dict_row)
            return cursor.execute(
                query.to_psycopg(), window_parameters(query, window_end, window_s, **values)
            ).fetchall()

        errors = result("error_rates")
        latency = result("latency_percentiles")
        severity = result("log_severity")
        cost = result("ai_cost_by_model_team")
        dependencies = result("service_dependency_map")
        recent = result("recent_errors")
        lookup = result("trace_lookup", trace_id=trace)
        rollups = result("metric_rollups", metric_name="llm.cost")
    total_errors = sum(expected.get("error_spans", {}).values())
    return {
        "error_rates": _compare(
            "spans and error spans per service",
            {row["service_name"]: [row["spans"], row["errors"]] for row in errors},
            {
                service: [spans, expected.get("error_spans", {}).get(service, 0)]
                for service, spans in expected.get("spans", {}).items()
            },
        ),
        "latency_percentiles": _compare(
            "spans per service",
            {row["service_name"]: row["spans"] for row in latency},
            expected.get("spans", {}),
        ),
        "log_severity": _compare(
            "records per severity and service",
            _nest((row["severity_text"], row["service_name"], row["records"]) for row in severity),
            expected.get("logs", {}),
        ),
        "ai_cost_by_model_team": _compare(
            "model calls per model and team",
            _nest((row["model"], row["team"], row["calls"]) for row in cost),
            expected.get("model_calls", {}),
        ),
        "service_dependency_map": _compare(
            "calls and errors per caller and callee",
            _nest((row["caller"], row["callee"], [row["calls"], row["errors"]]) for row in dependencies),
            {
                caller: {
                    callee: [calls, expected.get("service_call_errors", {}).get(caller, {}).get(callee, 0)]
                    for callee, calls in callees.items()
                }
                for caller, callees in expected.get("service_calls", {}).items()
            },
        ),
        "recent_errors": _compare(
            f"rows = min({RECENT_ERRORS_LIMIT}, error spans), all errors",
            [len(recent), all(row["status_message"] is not None for row in recent)],
            [min(RECENT_ERRORS_LIMIT, total_errors), True],
        ),
        "trace_lookup": _compare(
            f"the latest error's trace: {TRACE_SPANS[0]}-{TRACE_SPANS[1]} spans, one of them an error",
            [TRACE_SPANS[0] <= len(lookup) <= TRACE_SPANS[1], any(row["status_code"] == 2 for row in lookup)],
            [True, True],
        ),
        "metric_rollups": {
            "checked": "not against counts: the generator keeps no per-metric count (its cost, telemetry.counts)",
            "ok": None,
            "rows": len(rollups),
        },
    }


def _nest(rows: Iterator[tuple]) -> dict:
    nested: dict = {}
    for outer, inner, value in rows:
        nested.setdefault(outer, {})[inner] = value
    return nested


def _compare(checked: str, got: object, expected: object) -> dict:
    ok = got == expected
    return {"checked": checked, "ok": ok, **({} if ok else {"got": got, "expected": expected})}
