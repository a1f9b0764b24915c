"""`firehose optimize`: the analysts' queries before and after schema/indexes.sql, on a dataset of the reference's size.

1. Load 500 engineers' telemetry (~920k rows) spread over --history (3 days: a 1 h window is a small share, so
   time indexes matter), unless `firehose_datasets` records that this shape is already loaded (--reload forces).
2. Drop the firehose_ indexes of the telemetry tables, VACUUM ANALYZE, run each query --repeat times: "before".
3. COPY a fixed sample of fresh rows without the indexes, then delete it.
4. Create schema/indexes.sql's indexes, VACUUM ANALYZE (an index-only scan needs the visibility map), run each
   query again: "after"; COPY the same sample with the indexes, delete it.
Prints, per query, the median before and after, the speedup, the scan nodes with index names and shared buffers
(EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)), whether the results are identical and not empty; each index's size;
the indexes' cost on COPY. Markdown and JSON go to results/optimize-<timestamp>/. Queries are timed with
perf_counter, in microseconds (Locust would round them).

On `--layout partitioned` the dataset's partitions are made before the load, and the same indexes.sql applies: a
CREATE INDEX on a partitioned table makes one on each partition (not CONCURRENTLY, which PostgreSQL refuses there,
so optimize never uses it), DROP INDEX of the parent drops them all; sizes add up the partitions, and a plan's scans
of partitions are named by their table and index, with the number of partitions read.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from datetime import timedelta

import psycopg
from locust.event import Events

from firehose.run.endpoints import RunServices, given_addresses
from firehose.run.preflight import Refused, partition_interval_s
from firehose.tools.database import add_layout_arguments, add_target_arguments, prepare_layout, refusal_to_empty
from firehose.tools.dataset import Dataset, load, own_ids, recorded, sample
from firehose.tools.headless import results_dir
from firehose.tools.machine import machine_info
from firehose.tools.optimize.report import render_markdown
from firehose.tools.results import write_report
from services.postgres import REPO, LayoutMismatch, apply_schema
from telemetry.durations import parse_duration
from telemetry.generator import TRACE_SECONDS
from telemetry.layout import TABLES
from users.queries import DEFAULT_METRIC_NAME, Query, from_epoch_us, latest_error_trace, load_queries, window_parameters
from writers.copy import CopyWriter

INDEXES_SQL = REPO / "schema" / "indexes.sql"
DATASET_NAME = "optimize"
DEFAULT_USERS = 500
"""The reference's optimize dataset: 500 users, ~920k rows."""
DEFAULT_HISTORY = "3d"
"""Three days of history: the 1 h window is ~1/72 of the rows, so a time index has something to skip."""
DEFAULT_REPEAT = 5
DEFAULT_WRITE_SAMPLE = 20_000
"""Rows COPYed with and without the indexes: ~1.5 s of COPY here, long enough to dwarf start-up costs."""
DATASET_SEED = 0
FLOAT_DIGITS = 9
"""Significant digits floats are compared with: a sum over another plan's row order differs in the last bits."""
OUR_INDEXES = "schemaname = current_schema() AND tablename = ANY(%s) AND indexname LIKE 'firehose\\_%%'"
"""pg_indexes' rows of firehose's own indexes on the telemetry tables (bound with TABLES)."""
_INDEX_NAME = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+)", re.IGNORECASE)
PARTITIONS_TOTAL = (
    "SELECT coalesce(sum(%s(relid)), 0)::bigint FROM pg_partition_tree(%%(table)s) WHERE relid <> %%(table)s::regclass"
)
"""The size (by the function named) of a table's or index's partitions, all levels: a partitioned table or index has
no storage of its own, a plain one no partitions."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose optimize`'s options."""
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="Engineers to load (default: %(default)s).")
    parser.add_argument(
        "--history", default=DEFAULT_HISTORY, help="Time the telemetry is spread over (default: %(default)s)."
    )
    parser.add_argument("--window", default="1h", help="The queries' time window (default: %(default)s).")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="Timed runs per query and phase.")
    parser.add_argument(
        "--write-sample", type=int, default=DEFAULT_WRITE_SAMPLE, help="Rows COPYed to measure the indexes' cost."
    )
    parser.add_argument("--reload", action="store_true", help="Load the dataset even if the same shape is there.")
    add_target_arguments(parser)
    add_layout_arguments(parser)
    parser.add_argument("--out", default=None, help="Results directory (default: results/optimize-<timestamp>).")


def run(args: argparse.Namespace) -> int:
    """Measure, write the results, print the table; 2 when refused, 1 when a result changed or came back empty."""
    try:
        history_s, window_s = parse_duration(args.history), parse_duration(args.window)
        partition_interval_s(args)
    except (ValueError, Refused) as error:
        sys.stderr.write(f"firehose optimize: {error}\n")
        return 2
    out = results_dir(args.out, "optimize")
    given = given_addresses(args)
    services = RunServices(
        given, embedded_port=args.embedded_port, embedded_data_dir=args.embedded_data_dir, layout=args.layout
    )
    try:
        dsn = services.start_postgres()
        if (refusal := refusal_to_empty(dsn, "optimize", args.yes)) is not None:
            sys.stderr.write(refusal + "\n")
            return 2
        result = measure(dsn, args, history_s, window_s)
    except (LayoutMismatch, Refused) as error:  # the tables in the other layout
        sys.stderr.write(f"firehose optimize: {error}\n")
        return 2
    finally:
        services.stop()
    write_report(out, "optimize", render_markdown(result), result)
    return 0 if all(query["identical"] and query["non_empty"] for query in result["queries"].values()) else 1


def measure(dsn: str, args: argparse.Namespace, history_s: int, window_s: int) -> dict:
    """The whole comparison, as the JSON document written to optimize.json."""
    repeat, write_sample = args.repeat, args.write_sample
    dataset, reused = ensure_dataset(dsn, args, history_s)
    window_end = from_epoch_us(dataset.anchor_us)
    queries = load_queries()
    with psycopg.connect(dsn, autocommit=True) as conn:
        drop_indexes(conn)
        conn.execute("VACUUM ANALYZE")
        values = {"metric_name": DEFAULT_METRIC_NAME, "trace_id": latest_error_trace(conn, window_end, window_s)}
        parameters = {name: window_parameters(query, window_end, window_s, **values) for name, query in queries.items()}
        parents = partition_parents(conn)
        before = {name: time_query(conn, query, parameters[name], repeat, parents) for name, query in queries.items()}
    copy_without = timed_sample_copy(dsn, dataset, write_sample)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(INDEXES_SQL.read_text())
        create_s = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
        parents = partition_parents(conn)  # the indexes' partitions too
        after = {name: time_query(conn, query, parameters[name], repeat, parents) for name, query in queries.items()}
        indexes = index_sizes(conn)
        table_bytes = {table: table_size(conn, table) for table in TABLES}
    copy_with = timed_sample_copy(dsn, dataset, write_sample)
    return {
        "dataset": {
            "users": dataset.users,
            "history_s": dataset.history_s,
            "seed": dataset.seed,
            "newest_data": window_end.isoformat(),
            "rows": {table: getattr(dataset, table) for table in TABLES},
            "table_bytes": table_bytes,
            "reused": reused,
            "layout": args.layout,
            "partition_interval": args.partition_interval if args.layout == "partitioned" else None,
        },
        "machine": machine_info(dsn),
        "settings": {"repeat": repeat, "window_s": window_s, **values},
        "queries": {name: compare(before[name], after[name]) for name in queries},
        "indexes": indexes,
        "create_indexes_s": round(create_s, 3),
        "writes": {
            "sample_rows": copy_without["rows"],
            "without_indexes_rows_s": copy_without["rows_s"],
            "with_indexes_rows_s": copy_with["rows_s"],
            "ratio": round(copy_with["rows_s"] / copy_without["rows_s"], 3),
        },
    }


def ensure_dataset(dsn: str, args: argparse.Namespace, history_s: int) -> tuple[Dataset, bool]:
    """The recorded dataset of this shape, or a fresh load; and whether it was reused. The tables are in the
    layout asked for first (LayoutMismatch otherwise), with partitions for the dataset's times."""
    apply_schema(dsn, args.layout)  # the layout checked before anything is read
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = recorded(conn, DATASET_NAME)
    if found is not None and found.same_shape(args.users, history_s, DATASET_SEED) and not args.reload:
        return found, True
    anchor_us = int(time.time()) * 1_000_000
    newest = from_epoch_us(anchor_us)
    earliest, latest = newest - timedelta(seconds=history_s), newest + timedelta(seconds=TRACE_SECONDS)
    prepare_layout(dsn, args.layout, args.partition_interval, earliest, latest)
    return load(dsn, DATASET_NAME, args.users, history_s, DATASET_SEED, anchor_us), False


def drop_indexes(conn: psycopg.Connection) -> None:
    """Drop schema/indexes.sql's indexes and any other firehose_ index of the telemetry tables: a clean "before"."""
    names = set(_INDEX_NAME.findall(INDEXES_SQL.read_text()))
    names |= {
        row[0]
        for row in conn.execute(
            f"SELECT indexname FROM pg_indexes WHERE {OUR_INDEXES}",
            [list(TABLES)],
        )
    }
    for name in sorted(names):
        conn.execute(f'DROP INDEX IF EXISTS "{name}"')


def time_query(conn: psycopg.Connection, query: Query, values: dict, repeat: int, parents: dict[str, str]) -> dict:
    """One untimed run (its result kept, and caches warmed), `repeat` timed runs, and the plan with buffers (its
    partitions named by their parents: `partition_parents`)."""
    sql = query.to_psycopg()
    result = conn.execute(sql, values).fetchall()
    runs_ms = []
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(sql, values).fetchall()
        runs_ms.append(round((time.perf_counter() - started) * 1000, 3))  # microsecond resolution
    plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", values).fetchone()[0][0]["Plan"]
    return {
        "median_ms": round(statistics.median(runs_ms), 3),
        "runs_ms": runs_ms,
        "rows": len(result),
        "scans": by_parent(scan_nodes(plan, parents)),
        "shared_hit": plan.get("Shared Hit Blocks", 0),
        "shared_read": plan.get("Shared Read Blocks", 0),
        "result": normalised(result),
    }


def scan_nodes(plan: dict, parents: dict[str, str]) -> list[tuple[str, bool]]:
    """Each scan node of a plan, e.g. "Index Only Scan firehose_logs_time_severity on logs", and whether it reads a
    partition (named here by its table and the table's index)."""
    nodes = []
    if plan["Node Type"].endswith("Scan"):
        index = f" {parents.get(plan['Index Name'], plan['Index Name'])}" if "Index Name" in plan else ""
        relation = plan.get("Relation Name")
        on = f" on {parents.get(relation, relation)}" if relation else ""
        nodes.append((f"{plan['Node Type']}{index}{on}", relation in parents))
    for child in plan.get("Plans", []):
        nodes += scan_nodes(child, parents)
    return nodes


def by_parent(nodes: list[tuple[str, bool]]) -> list[str]:
    """The scans in plan order, those of partitions once per table and index with the number of partitions read."""
    counts = Counter(node for node, partition in nodes if partition)
    shown, seen = [], set()
    for node, partition in nodes:
        if not partition:
            shown.append(node)
        elif node not in seen:
            seen.add(node)
            shown.append(f"{node} ({counts[node]} partition{'s' if counts[node] > 1 else ''})")
    return shown


def partition_parents(conn: psycopg.Connection) -> dict[str, str]:
    """Each partition of a table, and each partition's index, by name: its parent's name (plans name partitions)."""
    return dict(conn.execute("SELECT inhrelid::regclass::text, inhparent::regclass::text FROM pg_inherits").fetchall())


def table_size(conn: psycopg.Connection, table: str) -> int:
    """Bytes of a table with its TOAST and indexes, its partitions' added up (a partitioned table has none itself)."""
    return conn.execute(
        f"SELECT pg_total_relation_size(%(table)s) + ({PARTITIONS_TOTAL % 'pg_total_relation_size'})", {"table": table}
    ).fetchone()[0]


def normalised(rows: list[tuple]) -> list[list]:
    """Rows as JSON-able lists, floats to FLOAT_DIGITS significant digits (see FLOAT_DIGITS)."""
    return [
        [float(f"{value:.{FLOAT_DIGITS}g}") if isinstance(value, float) else value for value in row] for row in rows
    ]


def compare(before: dict, after: dict) -> dict:
    """A query's two phases side by side; results are compared as multisets (ORDER BY ties may swap)."""
    same = sorted(map(repr, before.pop("result"))) == sorted(map(repr, after.pop("result")))
    return {
        "before": before,
        "after": after,
        "speedup": round(before["median_ms"] / after["median_ms"], 2) if after["median_ms"] else None,
        "identical": same,
        "non_empty": before["rows"] > 0,
    }


def index_sizes(conn: psycopg.Connection) -> dict[str, dict]:
    """Each firehose_ index of the telemetry tables: its table, size and definition."""
    rows = conn.execute(
        f"SELECT indexname, tablename, indexdef FROM pg_indexes WHERE {OUR_INDEXES} ORDER BY tablename, indexname",
        [list(TABLES)],
    ).fetchall()
    size = f"SELECT pg_relation_size(%(table)s) + ({PARTITIONS_TOTAL % 'pg_relation_size'})"
    return {
        name: {"table": table, "bytes": conn.execute(size, {"table": name}).fetchone()[0], "definition": definition}
        for name, table, definition in rows
    }


def timed_sample_copy(dsn: str, dataset: Dataset, rows: int) -> dict:
    """COPY a sample of fresh rows (numbered from a writer key of their own) into the tables, then delete them."""
    ids = own_ids(dsn, dataset.seed, "optimize write sample")
    traces = sample(dataset.seed, dataset.anchor_us, dataset.history_s, rows, ids)
    writer = CopyWriter(dsn, Events())  # its pool opens here, before the clock starts
    started = time.perf_counter()
    for trace in traces:
        writer.write(trace)
    writer.close()
    elapsed = time.perf_counter() - started
    written = sum(len(trace) for trace in traces)
    low, high = ids.writer_key << 32, (ids.writer_key + 1) << 32
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DELETE FROM {table} WHERE event_id >= %s AND event_id < %s", [low, high])
        conn.execute(f"VACUUM {', '.join(TABLES)}")  # the deleted rows must not weigh on the next phase
    return {"rows": written, "rows_s": round(written / elapsed)}
