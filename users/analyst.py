"""Analysts: Locust users that fire the 8 queries of queries/ while engineers write.

Each query is one Locust request (`request_type` "SQL", `name` = the query file's stem), so the web UI,
`--csv` and `--html` show count, failures and percentiles per query. The per-process state, a connection
pool of the analysts' own (never the writers') and per-query statistics with microsecond HDR histograms
(Locust rounds response times to ~2 significant digits), is a `QueryRunner`: a part of the process's run
(users.run.Part), built once per process by the first analyst that asks for it.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
from hdrh.histogram import HdrHistogram
from locust import task
from locust.event import Events
from locust.exception import StopUser
from psycopg_pool import PoolClosed

from telemetry.durations import parse_duration
from telemetry.pools import METRIC_KINDS
from users.queries import (
    DEFAULT_WINDOW_S,
    Query,
    from_epoch_us,
    latest_error_trace,
    load_queries,
    window_parameters,
)
from users.run import Part, Run, RunUser
from writers.delivery import open_pool

POOL_SIZE = 8
"""Connections per process: one per query, so 8 analysts (the reference's "8 analytical queries") never wait."""
LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 3_600_000_000
"""An HDR histogram's range, in microseconds: 1 us to an hour, far beyond any query's time."""
LATENCY_DIGITS = 3
"""Significant digits the histogram keeps: 0.1 % error, where Locust's own figures keep about 2 digits."""
RECOVERY_CONFLICT = "40001"
"""SQLSTATE of a query a hot standby cancelled to replay WAL that conflicts with it (counted apart)."""
PERCENTILE_METHOD = "HdrHistogram (3 significant digits), merged across processes"
APPLICATION_NAME = "firehose analysts"
"""The analysts' connections' application_name: pg_stat_activity (and `firehose chaos`'s CPU accounting) tells
readers from writers by it."""


def parse_weights(text: str, names: list[str]) -> dict[str, float]:
    """`name=weight,...` as a weight per query: a query left out weighs 1, a weight of 0 leaves it out."""
    weights = dict.fromkeys(names, 1.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in weights:
            raise ValueError(f"unknown query {name.strip()!r} in --query-weights: choose from {', '.join(names)}")
        weights[name.strip()] = float(value)
    if any(weight < 0 for weight in weights.values()) or not any(weights.values()):
        raise ValueError(f"--query-weights must be >= 0 and leave at least one query: {text!r}")
    return weights


@dataclass
class QueryStats:
    """One query's executions in one process: count (failures included), failures, rows, latency histogram."""

    count: int = 0
    failures: int = 0
    rows: int = 0
    during_writes: int = 0
    """Executions while this process's writers committed rows (more were acknowledged after than before)."""
    conflicts: int = 0
    """Failures that were recovery conflicts: a hot standby cancelled the query (SQLSTATE 40001) so as to replay."""
    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_DIGITS)
    )


class QueryRunner(Part):
    """Runs the analysts' queries of one process through a pool of its own, and keeps their statistics."""

    name = "queries"

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        window_end_us: int,
        window_s: float = DEFAULT_WINDOW_S,
        pool_size: int = POOL_SIZE,
        weights: dict[str, float] | None = None,
        seed: int | None = None,
        rows_written: Callable[[], int] | None = None,
    ) -> None:
        self.events = events
        self.queries = load_queries()
        self.window_end = from_epoch_us(window_end_us)
        self.window_s = window_s
        self.weights = weights or dict.fromkeys(self.queries, 1.0)
        self.stats = {name: QueryStats() for name in self.queries}
        self._random = random.Random(seed)
        self._rows_written = rows_written or (lambda: 0)
        self.closed = False
        # autocommit: read-only statements need no COMMIT round trip after each
        self._pool = open_pool(conninfo, pool_size, "QueryRunner", autocommit=True, application_name=APPLICATION_NAME)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The analysts' options (their group in `locust --help`)."""
        group = parser.add_argument_group("Analysts")
        group.add_argument(
            "--analysts",
            type=int,
            default=0,
            help="Exactly this many of -u are analysts (Locust's fixed_count), the rest the other classes. "
            "Default 0: Locust's weights decide.",
        )
        group.add_argument(
            "--analyst-pool-size", type=int, default=POOL_SIZE, help="Analysts' connections per process."
        )
        group.add_argument(
            "--analyst-think-time", type=float, default=0.0, help="Seconds an analyst waits between two queries."
        )
        group.add_argument(
            "--query-weights",
            default="",
            help="Relative weights, e.g. recent_errors=5,service_dependency_map=0 (a query left out weighs 1).",
        )
        group.add_argument(
            "--query-window",
            default="1h",
            help="The time window the queries look at, ending at the newest data (e.g. 15m, 1h, 1d).",
        )

    @classmethod
    def for_run(cls, run: Run) -> QueryRunner:
        """The runner of this process of `run`, set up from the run's options."""
        options = run.options
        return cls(
            run.addresses.get("analysts", run.conninfo),  # --analyst-dsn, e.g. a read-only role
            run.events,
            window_end_us=run.anchor_us,
            window_s=parse_duration(options.query_window),
            pool_size=options.analyst_pool_size,
            weights=parse_weights(options.query_weights, sorted(load_queries())),
            seed=hash((run.seed, run.process_index)),
            rows_written=run.rows_acknowledged,
        )

    def pick(self) -> str:
        """A query's name, drawn by weight."""
        names = list(self.weights)
        return self._random.choices(names, weights=[self.weights[name] for name in names])[0]

    def execute(self, name: str) -> int | None:
        """Run the query once, as one Locust request; returns its row count, or None when it failed or the runner
        was closed (the run is over: a query that had not started by then is not run, and not counted)."""
        query = self.queries[name]
        written_before = self._rows_written()
        # In a greenlet of its own: Locust kills analysts mid-task when a run ends, and a query killed mid-flight
        # would hand its connection back to the pool busy (psycopg then warns and discards it).
        outcome = gevent.spawn(self._run, query).get()
        if outcome is None:
            return None
        rows, error, elapsed_us = outcome
        stats = self.stats[name]
        stats.count += 1
        stats.during_writes += self._rows_written() > written_before
        if error is None:
            stats.rows += rows
            stats.histogram.record_value(min(elapsed_us, LATENCY_HIGHEST_US))
        else:
            stats.failures += 1
            stats.conflicts += getattr(error, "sqlstate", None) == RECOVERY_CONFLICT
        self.events.request.fire(
            request_type="SQL",
            name=name,
            response_time=elapsed_us / 1000,
            response_length=rows,
            exception=error,
            context={},
        )
        return None if error else rows

    def _run(self, query: Query) -> tuple[int, Exception | None, int] | None:
        """(rows, error, microseconds) of one execution; None when the runner was closed before it started."""
        rows, error, started = 0, None, time.perf_counter()
        try:
            with self._pool.connection() as conn:
                # The wait for a pooled connection is the client's queue, not the query: time from here.
                started = time.perf_counter()
                rows = len(conn.execute(query.to_psycopg(), self._parameters(query, conn)).fetchall())
        except PoolClosed:
            if self.closed:
                return None
            raise
        except Exception as exc:  # every failure is the request's outcome, reported to Locust by `execute`
            error = exc
        return rows, error, max(round((time.perf_counter() - started) * 1_000_000), LATENCY_LOWEST_US)

    def _parameters(self, query: Query, conn) -> dict[str, object]:
        """The query's bound values: the window, a metric name drawn at random, and for a trace lookup the trace
        of the window's latest error (picked on the same connection, timed with the lookup: it is the analyst's
        question; with no error in the window the lookup binds NULL and finds nothing)."""
        values: dict[str, object] = {}
        if "metric_name" in query.parameters:
            values["metric_name"] = self._random.choice(METRIC_KINDS)[0]
        if "trace_id" in query.parameters:
            values["trace_id"] = latest_error_trace(conn, self.window_end, self.window_s)
        return window_parameters(query, self.window_end, self.window_s, **values)

    def report(self) -> dict:
        """Per query: count, failures, rows, and the latency histogram encoded (HdrHistogram's base64 text)."""
        return {
            name: {
                "count": stats.count,
                "failures": stats.failures,
                "rows": stats.rows,
                "during_writes": stats.during_writes,
                "conflicts": stats.conflicts,
                "histogram": stats.histogram.encode().decode("ascii"),
            }
            for name, stats in self.stats.items()
        }

    def close(self) -> None:
        """Close the pool; the statistics stay readable for the summary."""
        self.closed = True
        self._pool.close()

    @staticmethod
    def merge(reports: list[dict]) -> dict:
        return merge_reports(reports)

    @staticmethod
    def render(section: dict) -> list[str]:
        return render_queries(section)


def merge_reports(reports: list[dict]) -> dict:
    """Processes' `QueryRunner.report()`s as one: per query count, failures, rows and p50/p95/p99 in ms."""
    merged: dict[str, dict] = {}
    histograms: dict[str, HdrHistogram] = {}
    for report in reports:
        for name, part in report.items():
            total = merged.setdefault(name, {"count": 0, "failures": 0, "rows": 0, "during_writes": 0, "conflicts": 0})
            for key in total:
                total[key] += part.get(key, 0)
            histogram = histograms.setdefault(name, HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_DIGITS))
            histogram.decode_and_add(part["histogram"].encode("ascii"))
    for name, total in merged.items():
        histogram = histograms[name]
        for percentile in (50, 95, 99):
            us = histogram.get_value_at_percentile(percentile) if histogram.get_total_count() else None
            total[f"p{percentile}_ms"] = None if us is None else us / 1000
        total["percentile_method"] = PERCENTILE_METHOD
    return dict(sorted(merged.items()))


def render_queries(queries: dict) -> list[str]:
    """The merged queries as the summary's table: per query count, failures, rows and percentiles."""
    lines = [f"{'query':<24}{'count':>8}{'failed':>8}{'rows':>12}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for name, query in queries.items():
        p50, p95, p99 = (query[f"p{p}_ms"] for p in (50, 95, 99))
        lines.append(
            f"{name:<24}{query['count']:>8,}{query['failures']:>8,}{query['rows']:>12,}"
            f"{_ms(p50):>10}{_ms(p95):>10}{_ms(p99):>10}"
        )
    lines.append(f"query percentiles: {next(iter(queries.values()))['percentile_method']}")
    if conflicts := sum(query["conflicts"] for query in queries.values()):
        lines.append(
            f"recovery conflicts (queries the replica cancelled, SQLSTATE 40001; among the failed): {conflicts:,}"
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


class Analyst(RunUser):
    """An analyst firing the 8 queries of queries/ (weighted by --query-weights), each a Locust request."""

    abstract = False

    def wait_time(self) -> float:
        """No think time by default (like the reference's query loop): --analyst-think-time seconds otherwise."""
        return self.process.options.analyst_think_time

    @classmethod
    def configure(cls, options: argparse.Namespace) -> None:
        """Apply --analysts before any spawn: Locust's dispatcher gives a class with a `fixed_count` exactly that
        many users, and the rest of -u to the others by weight (the run lifecycle calls this at init)."""
        cls.fixed_count = max(getattr(options, "analysts", 0), 0)

    @task
    def query(self) -> None:
        run = self.process.process_run
        if run is None or run.closing:  # the run could not open here (reported), or it is over
            raise StopUser()
        runner = run.part(QueryRunner)
        if runner.execute(runner.pick()) is None and run.closing:
            raise StopUser()
