"""Analysts: Locust users that fire the 8 queries of queries/ while engineers write.

Each query is one Locust request (`request_type` "SQL", `name` = the query file's stem), so the web UI,
`--csv` and `--html` show count, failures and percentiles per query. The per-process state, a connection
pool of the analysts' own (never the writers') and per-query statistics with microsecond HDR histograms
(Locust rounds response times to ~2 significant digits), is a `QueryRunner`, built once per process through
the run's `shared`.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import gevent
from hdrh.histogram import HdrHistogram
from locust import User, task
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
from writers.delivery import open_pool


class Run(Protocol):
    """What an analyst needs of the run's per-process side (firehose.run.process_run.ProcessRun)."""

    conninfo: str
    addresses: Mapping[str, str]
    anchor_us: int
    seed: int
    process_index: int
    options: argparse.Namespace
    events: Events
    closing: bool

    def rows_acknowledged(self) -> int:
        """Rows this process's writers have seen committed so far."""
        ...


POOL_SIZE = 8
"""Connections per process: one per query, so 8 analysts (the reference's "8 analytical queries") never wait."""
LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 3_600_000_000
"""An HDR histogram's range, in microseconds: 1 us to an hour, far beyond any query's time."""
LATENCY_DIGITS = 3
"""Significant digits the histogram keeps: 0.1 % error, where Locust's own figures keep about 2 digits."""
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
    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_DIGITS)
    )


class QueryRunner:
    """Runs the analysts' queries of one process through a pool of its own, and keeps their statistics."""

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
        """The runner of this process of `run`, set up from the run's options (the factory for `run.shared`)."""
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
                "histogram": stats.histogram.encode().decode("ascii"),
            }
            for name, stats in self.stats.items()
        }

    def close(self) -> None:
        """Close the pool; the statistics stay readable for the summary."""
        self.closed = True
        self._pool.close()


def merge_reports(reports: list[dict]) -> dict:
    """Processes' `QueryRunner.report()`s as one: per query count, failures, rows and p50/p95/p99 in ms."""
    merged: dict[str, dict] = {}
    histograms: dict[str, HdrHistogram] = {}
    for report in reports:
        for name, part in report.items():
            total = merged.setdefault(name, {"count": 0, "failures": 0, "rows": 0, "during_writes": 0})
            for key in total:
                total[key] += part[key]
            histogram = histograms.setdefault(name, HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_DIGITS))
            histogram.decode_and_add(part["histogram"].encode("ascii"))
    for name, total in merged.items():
        histogram = histograms[name]
        for percentile in (50, 95, 99):
            us = histogram.get_value_at_percentile(percentile) if histogram.get_total_count() else None
            total[f"p{percentile}_ms"] = None if us is None else us / 1000
        total["percentile_method"] = PERCENTILE_METHOD
    return dict(sorted(merged.items()))


class Analyst(User):
    """An analyst firing the 8 queries of queries/ (weighted by --query-weights), each a Locust request."""

    abstract = False

    def wait_time(self) -> float:
        """No think time by default (like the reference's query loop): --analyst-think-time seconds otherwise."""
        return self.environment.firehose.process_run.options.analyst_think_time

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The analysts' options; the run lifecycle calls this from Locust's parser hook."""
        QueryRunner.add_arguments(parser)

    @classmethod
    def configure(cls, options: argparse.Namespace) -> None:
        """Apply --analysts before any spawn: Locust's dispatcher gives a class with a `fixed_count` exactly that
        many users, and the rest of -u to the others by weight (the run lifecycle calls this at init)."""
        cls.fixed_count = max(getattr(options, "analysts", 0), 0)

    @task
    def query(self) -> None:
        run = self.environment.firehose.process_run
        if run.closing:
            raise StopUser()
        runner = run.shared(QueryRunner.for_run)
        if runner.execute(runner.pick()) is None and run.closing:
            raise StopUser()
