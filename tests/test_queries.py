"""The analysts' queries (queries/*.sql), bound to a window, return what an independent Python computation over
the same generated rows says they must, on both layouts (the same rows loaded into plain and partitioned tables);
on the partitioned layout, each windowed query's plan scans only the partitions of its window."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import re
import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from math import floor

import orjson
import psycopg
import pytest
from locust.event import Events
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from services.postgres import apply_schema, bundled_bin_dir, create_partitions
from telemetry.generator import TRACE_SECONDS, EngineerTelemetry, EventIds
from users.queries import (
    DEFAULT_METRIC_NAME,
    QUERIES_DIR,
    latest_error_trace,
    load_queries,
    window_parameters,
)
from writers.copy import CopyWriter

pytestmark = pytest.mark.slow

ANCHOR = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
"""The newest data's time: fixed, so the dataset (and every expected figure) is the same at every run."""
HISTORY_S = 3 * 3600
"""Three hours of history and a one-hour query window: the time filter selects about a third of the rows."""
WINDOW_S = 3600
ENGINEERS = 10
"""~1,000 traces: ~2,800 spans in the window, ~85 of them errors, so recent_errors' LIMIT 50 really cuts."""
STRADDLING_TRACES = 30
"""Traces of one more engineer starting within TRACE_SECONDS around the window's start: many of their children fall
in the window with a parent before it, which the dependency map's bound on the parents must keep."""
PARTITION = timedelta(hours=1)
"""Hourly partitions from a day before ANCHOR to an hour after it: a 1 h window needs 2 of the 25 per table."""
DATABASES = {"plain": "firehose_queries_plain", "partitioned": "firehose_queries_partitioned"}
"""Databases of this module's own on the session's server, one per layout, loaded once per session: no other test
empties them between two of ours (tests run in the order of their durations, modules mixed), and the hourly
partitions never meet another test's partitions of other sizes (conftest's partitioned database keeps them all)."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


WINDOW_START_US, WINDOW_END_US = epoch_us(ANCHOR) - WINDOW_S * 1_000_000, epoch_us(ANCHOR)

_COPY_ESCAPE = re.compile(r"\\(.)")
_COPY_CHARS = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def copy_fields(line: str) -> list[str | None]:
    """One COPY text row's columns: `\\N` is NULL, backslash escapes undone."""
    return [
        None if part == "\\N" else _COPY_ESCAPE.sub(lambda m: _COPY_CHARS.get(m[1], m[1]), part)
        for part in line.rstrip("\n").split("\t")
    ]


def timestamp_us(text: str) -> int:
    """Microseconds since the epoch of a COPY timestamptz (`2025-06-01 11:00:00.123456+00`)."""
    return epoch_us(datetime.fromisoformat(text))


def in_window(moment_us: int) -> bool:
    return WINDOW_START_US < moment_us <= WINDOW_END_US


class Generated:
    """The generated rows, parsed from their COPY text on our own: the expected answers come from here."""

    def __init__(self, spans: list[str], metrics: list[str], logs: list[str]) -> None:
        self.spans = []
        for line in spans:
            f = copy_fields(line)
            self.spans.append(
                {
                    "event_id": int(f[0]),
                    "trace_id": f[1],
                    "span_id": f[2],
                    "parent_span_id": f[3],
                    "service_name": f[4],
                    "name": f[5],
                    "start_us": timestamp_us(f[7]),
                    "duration_ms": float(f[9]),
                    "status_code": int(f[10]),
                    "status_message": f[11],
                    "attributes": orjson.loads(f[12]),
                }
            )
        self.metrics = []
        for line in metrics:
            f = copy_fields(line)
            self.metrics.append(
                {"name": f[1], "service_name": f[2], "time_us": timestamp_us(f[3]), "value": float(f[4])}
            )
        self.logs = []
        for line in logs:
            f = copy_fields(line)
            self.logs.append(
                {
                    "time_us": timestamp_us(f[1]),
                    "severity_text": f[3],
                    "service_name": f[4],
                    "trace_id": f[5],
                    "span_id": f[6],
                }
            )

    def window_spans(self) -> list[dict]:
        return [span for span in self.spans if in_window(span["start_us"])]


def fresh_database(postgres, layout: str) -> str:
    """The DSN of a new database of the session's server with the tables in `layout` (hourly partitions over the
    day before ANCHOR and the hour after it)."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASES[layout]} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASES[layout]}")
    dsn = make_conninfo(postgres.dsn, dbname=DATABASES[layout])
    apply_schema(dsn, layout)
    if layout == "partitioned":
        create_partitions(dsn, ANCHOR - timedelta(days=1), ANCHOR + PARTITION, PARTITION.total_seconds())
    return dsn


@pytest.fixture(scope="session")
def loaded(postgres, pools) -> tuple[dict[str, str], Generated]:
    """ENGINEERS engineers' telemetry over HISTORY_S before ANCHOR, plus STRADDLING_TRACES across the window's
    start, loaded with CopyWriter into a database of each layout (the same rows), and parsed."""
    targets = {layout: fresh_database(postgres, layout) for layout in DATABASES}
    writers = [CopyWriter(dsn, Events(), batch_size=2000, pool_size=2) for dsn in targets.values()]
    ids = EventIds(21)
    engineers = [
        EngineerTelemetry(pools, seed, anchor_us=epoch_us(ANCHOR), window_s=HISTORY_S) for seed in range(ENGINEERS)
    ]
    engineers.append(
        EngineerTelemetry(
            pools,
            ENGINEERS,
            anchor_us=WINDOW_START_US + TRACE_SECONDS * 500_000,
            window_s=TRACE_SECONDS,
            traces=STRADDLING_TRACES,
        )
    )
    spans, metrics, logs = [], [], []
    for telemetry in engineers:
        for rows in telemetry.traces(ids):
            for writer in writers:
                writer.write(rows)
            spans += rows.spans
            metrics += rows.metrics
            logs += rows.logs
    for writer in writers:
        writer.close()
    return targets, Generated(spans, metrics, logs)


@pytest.fixture(params=["plain", "partitioned"])
def dataset(request, loaded) -> tuple[str, Generated]:
    """The loaded dataset in one layout: its DSN and the generated rows."""
    targets, generated = loaded
    return targets[request.param], generated


def run(dsn: str, name: str, **values: object) -> list[dict]:
    """The query through the loader, its window ending at ANCHOR, its parameters bound."""
    query = load_queries()[name]
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query.to_psycopg(), window_parameters(query, ANCHOR, WINDOW_S, **values)).fetchall()


def with_start_us(row: dict) -> dict:
    """A result row with its start_time as microseconds since the epoch, as the generated rows have it."""
    return {**row, "start_us": epoch_us(row["start_time"])}


def pick(row: dict, columns: tuple[str, ...]) -> tuple:
    return tuple(row[column] for column in columns)


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def round_half_up(value: Decimal, places: int) -> Decimal:
    """numeric's round(): halves away from zero (all our values are >= 0)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def test_the_window_selects_a_fraction(dataset):
    _dsn, generated = dataset
    assert 0.2 < len(generated.window_spans()) / len(generated.spans) < 0.5


def test_ai_cost_by_model_team(dataset):
    dsn, generated = dataset
    expected: dict[tuple, dict] = defaultdict(lambda: {"calls": 0, "input": 0, "output": 0, "cost": Decimal(0)})
    for span in generated.window_spans():
        attributes = span["attributes"]
        if "ai.cost_usd" in attributes:
            group = expected[attributes["gen_ai.request.model"], attributes["team"]]
            group["calls"] += 1
            group["input"] += attributes["gen_ai.usage.input_tokens"]
            group["output"] += attributes["gen_ai.usage.output_tokens"]
            group["cost"] += Decimal(repr(attributes["ai.cost_usd"]))  # the %.6f text, exactly
    rows = run(dsn, "ai_cost_by_model_team")
    assert {(row["model"], row["team"]): row for row in rows}.keys() == expected.keys()
    for row in rows:
        group = expected[row["model"], row["team"]]
        assert (row["calls"], row["input_tokens"], row["output_tokens"]) == (
            group["calls"],
            group["input"],
            group["output"],
        )
        assert row["cost_usd"] == round_half_up(group["cost"], 2)
    costs = [row["cost_usd"] for row in rows]
    assert costs == sorted(costs, reverse=True)


def test_error_rates(dataset):
    dsn, generated = dataset
    spans, errors = Counter(), Counter()
    for span in generated.window_spans():
        spans[span["service_name"]] += 1
        errors[span["service_name"]] += span["status_code"] == 2
    rows = run(dsn, "error_rates")
    assert {row["service_name"]: (row["spans"], row["errors"]) for row in rows} == {
        service: (spans[service], errors[service]) for service in spans
    }
    for row in rows:
        assert row["error_rate"] == round_half_up(Decimal(row["errors"]) / Decimal(row["spans"]), 4)
    rates = [row["error_rate"] for row in rows]
    assert rates == sorted(rates, reverse=True)


def test_latency_percentiles(dataset):
    dsn, generated = dataset
    durations = defaultdict(list)
    for span in generated.window_spans():
        durations[span["service_name"]].append(span["duration_ms"])
    rows = run(dsn, "latency_percentiles")
    assert {row["service_name"] for row in rows} == durations.keys()
    for row in rows:
        values = durations[row["service_name"]]
        assert row["spans"] == len(values)
        for column, fraction in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            assert row[column] == pytest.approx(percentile_cont(values, fraction), rel=1e-12)
    p95s = [row["p95_ms"] for row in rows]
    assert p95s == sorted(p95s, reverse=True)


def test_log_severity(dataset):
    dsn, generated = dataset
    expected = Counter(
        (log["severity_text"], log["service_name"]) for log in generated.logs if in_window(log["time_us"])
    )
    rows = run(dsn, "log_severity")
    assert {(row["severity_text"], row["service_name"]): row["records"] for row in rows} == expected
    counts = [row["records"] for row in rows]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("metric_name", [DEFAULT_METRIC_NAME, "process.cpu.utilization"])
def test_metric_rollups(dataset, metric_name):
    dsn, generated = dataset
    buckets = defaultdict(list)
    for point in generated.metrics:
        if point["name"] == metric_name and in_window(point["time_us"]):
            minute_us = point["time_us"] - point["time_us"] % 60_000_000
            buckets[minute_us, point["name"], point["service_name"]].append(point["value"])
    rows = run(dsn, "metric_rollups", metric_name=metric_name)
    keys = [(epoch_us(row["minute"]), row["name"], row["service_name"]) for row in rows]
    assert keys == sorted(buckets, key=lambda key: (-key[0], key[1], key[2]))
    for key, row in zip(keys, rows, strict=True):
        values = buckets[key]
        assert row["points"] == len(values)
        assert row["avg_value"] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert row["max_value"] == max(values)


def test_recent_errors(dataset):
    dsn, generated = dataset
    errors = [span for span in generated.window_spans() if span["status_code"] == 2]
    assert len(errors) > 50  # the LIMIT really cuts
    newest = sorted(errors, key=lambda span: (span["start_us"], span["event_id"]), reverse=True)[:50]
    columns = ("start_us", "service_name", "name", "trace_id", "span_id", "status_message", "duration_ms")
    rows = [with_start_us(row) for row in run(dsn, "recent_errors")]
    assert [pick(row, columns) for row in rows] == [pick(span, columns) for span in newest]


def test_service_dependency_map(dataset):
    dsn, generated = dataset
    by_id = {(span["trace_id"], span["span_id"]): span for span in generated.spans}
    edges, early_parents = defaultdict(list), 0
    for child in generated.window_spans():
        parent = by_id.get((child["trace_id"], child["parent_span_id"]))
        if parent is not None and parent["service_name"] != child["service_name"]:
            edges[parent["service_name"], child["service_name"]].append(child)
            early_parents += parent["start_us"] <= WINDOW_START_US
    assert early_parents > 0  # children whose parent started before the window: the parents' bound must keep them
    rows = run(dsn, "service_dependency_map")
    assert {(row["caller"], row["callee"]) for row in rows} == edges.keys()
    for row in rows:
        children = edges[row["caller"], row["callee"]]
        assert row["calls"] == len(children)
        assert row["avg_ms"] == pytest.approx(
            sum(child["duration_ms"] for child in children) / len(children), rel=1e-12
        )
        assert row["errors"] == sum(child["status_code"] == 2 for child in children)
    calls = [row["calls"] for row in rows]
    assert calls == sorted(calls, reverse=True)


def test_trace_lookup_of_the_latest_error(dataset):
    dsn, generated = dataset
    errors = [span for span in generated.window_spans() if span["status_code"] == 2]
    latest = max(errors, key=lambda span: (span["start_us"], span["event_id"]))
    spans = sorted(
        (span for span in generated.spans if span["trace_id"] == latest["trace_id"]),
        key=lambda span: (span["start_us"], span["event_id"]),
    )
    logs = Counter((log["trace_id"], log["span_id"]) for log in generated.logs)
    expected = [{**span, "logs": logs[span["trace_id"], span["span_id"]]} for span in spans]
    with psycopg.connect(dsn) as conn:
        trace_id = latest_error_trace(conn, ANCHOR, WINDOW_S)
    assert trace_id == latest["trace_id"]
    rows = [with_start_us(row) for row in run(dsn, "trace_lookup", trace_id=trace_id)]
    columns = ("start_us", "service_name", "name", "span_id", "parent_span_id", "duration_ms", "status_code", "logs")
    assert [pick(row, columns) for row in rows] == [pick(span, columns) for span in expected]
    assert sum(row["logs"] for row in rows) > 0


@pytest.mark.parametrize("name", sorted(load_queries()))
def test_every_file_runs_in_psql_with_its_variables(dataset, postgres, name):
    """The files stay runnable as written: psql -v name=value -f queries/x.sql returns the rows Python gets."""
    dsn, _generated = dataset
    query = load_queries()[name]
    values = {"metric_name": DEFAULT_METRIC_NAME}
    if "trace_id" in query.parameters:
        with psycopg.connect(dsn) as conn:
            values["trace_id"] = latest_error_trace(conn, ANCHOR, WINDOW_S)
    variables = []
    for key, value in window_parameters(query, ANCHOR, WINDOW_S, **values).items():
        variables += ["-v", f"{key}={value.isoformat() if isinstance(value, datetime) else value}"]
    target = make_conninfo(dsn, host="127.0.0.1", port=postgres.port)
    psql = subprocess.run(
        [
            str(bundled_bin_dir() / "psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            *variables,
            "-f",
            str(QUERIES_DIR / f"{name}.sql"),
            target,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(psql.stdout.splitlines()) == len(run(dsn, name, **values)) > 0


def test_the_dependency_maps_bound_on_parents_is_the_longest_trace(loaded):
    """The parents' window is the children's widened by TRACE_SECONDS, and no generated trace lasts longer: a
    parent starts at most that long before its child, so the bound loses none."""
    _targets, generated = loaded
    sql = load_queries()["service_dependency_map"].sql
    assert f":'window_start'::timestamptz - interval '{TRACE_SECONDS} seconds'" in sql
    starts = defaultdict(list)
    for span in generated.spans:
        starts[span["trace_id"]].append(span["start_us"])
    assert max(max(times) - min(times) for times in starts.values()) < TRACE_SECONDS * 1_000_000


def normalised(rows: list[dict]) -> list[str]:
    """Result rows comparable across plans: floats to 12 significant digits (a sum over another row order differs
    in the last bits), as sorted text (ORDER BY ties may come in either order)."""
    return sorted(
        repr({key: float(f"{value:.12g}") if isinstance(value, float) else value for key, value in row.items()})
        for row in rows
    )


def query_values(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn) as conn:
        return {"metric_name": DEFAULT_METRIC_NAME, "trace_id": latest_error_trace(conn, ANCHOR, WINDOW_S)}


@pytest.mark.parametrize("name", sorted(load_queries()))
def test_both_layouts_return_identical_results(loaded, name):
    targets, _generated = loaded
    plain, partitioned = (
        run(targets[layout], name, **query_values(targets[layout])) for layout in ("plain", "partitioned")
    )
    assert plain and normalised(plain) == normalised(partitioned)


def scanned_partitions(dsn: str, name: str) -> dict[str, set[str]]:
    """The partitions the plan of `name` reads, by the alias of the table in the query (EXPLAIN, no ANALYZE: the
    partitions pruned at planning or at executor start-up, which EXPLAIN runs, are not in it)."""
    query = load_queries()[name]
    with psycopg.connect(dsn) as conn:
        values = window_parameters(query, ANCHOR, WINDOW_S, **query_values(dsn))
        (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {query.to_psycopg()}", values).fetchone()[0]
    scanned: dict[str, set[str]] = defaultdict(set)

    def walk(node: dict) -> None:
        if "Relation Name" in node:  # a partition's alias is the query's, numbered: child_1, spans_2
            scanned[re.sub(r"_\d+$", "", node["Alias"])].add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return dict(scanned)


def partitions_of(dsn: str, table: str, low: datetime | None = None, high: datetime | None = None) -> set[str]:
    """The partitions of `table` that hold some time of (low, high] (every one when no bound is given)."""
    with psycopg.connect(dsn) as conn:
        names = [row[0] for row in conn.execute("SELECT relid::text FROM pg_partition_tree(%s) WHERE isleaf", [table])]
    lowers = {name: datetime.strptime(name.split("_p")[1], "%Y%m%d_%H%M").replace(tzinfo=UTC) for name in names}
    if low is None or high is None:
        return set(names)
    return {name for name, lower in lowers.items() if lower <= high and lower + PARTITION > low}


WINDOWED = {
    "ai_cost_by_model_team": ("spans",),
    "error_rates": ("spans",),
    "latency_percentiles": ("spans",),
    "log_severity": ("logs",),
    "metric_rollups": ("metrics",),
    "recent_errors": ("spans",),
}


@pytest.mark.parametrize("name", sorted(WINDOWED))
def test_a_windowed_query_scans_only_its_windows_partitions(loaded, name):
    targets, _generated = loaded
    dsn, (table,) = targets["partitioned"], WINDOWED[name]
    window = partitions_of(dsn, table, ANCHOR - timedelta(seconds=WINDOW_S), ANCHOR)
    assert len(window) == 2 and len(partitions_of(dsn, table)) == 25
    assert scanned_partitions(dsn, name) == {table: window}


def test_the_dependency_map_scans_only_the_partitions_of_its_two_windows(loaded):
    dsn = loaded[0]["partitioned"]
    window_start = ANCHOR - timedelta(seconds=WINDOW_S)
    children = partitions_of(dsn, "spans", window_start, ANCHOR)
    parents = partitions_of(dsn, "spans", window_start - timedelta(seconds=TRACE_SECONDS), ANCHOR)
    assert len(children) == 2 and len(parents) == 3  # the parents' window reaches back into the hour before
    assert scanned_partitions(dsn, "service_dependency_map") == {"child": children, "parent": parents}


def test_trace_lookup_has_no_window_and_scans_every_partition(loaded):
    """Documented (docs/queries.md): a trace id says nothing of time, so no partition is pruned."""
    dsn = loaded[0]["partitioned"]
    assert scanned_partitions(dsn, "trace_lookup") == {
        "s": partitions_of(dsn, "spans"),
        "logs": partitions_of(dsn, "logs"),
    }
