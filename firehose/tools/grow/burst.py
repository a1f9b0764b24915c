"""The analysts' burst of `firehose grow`: one analyst per query of queries/, each running its query back to back
on a connection of its own for a fixed time, while the writers go on.

One analyst per query (rather than Locust's analysts drawing queries at random) keeps a slow query from taking
every analyst at a large size: each query gets the same time, and its count says how many executions its
percentiles rest on. Every query is bound to a window ending at the newest data: `window_s` (1 h) for the
windowed queries, `dependency_window_s` (24 h) for the dependency map; trace_lookup looks up the newest trace
(picked before the burst, untimed: only the query file's statement is timed). No execution runs past the burst's
end: each runs with the time left as its `statement_timeout`, and one cut by it is counted apart, not timed.
Latencies are perf_counter microseconds (as `firehose optimize`'s).
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import gevent
import psycopg

from users.queries import DEFAULT_METRIC_NAME, load_queries, window_parameters

DEPENDENCY_MAP = "service_dependency_map"
"""The query that gets the long window: the reference's "1.2-second dependency map query", over 24 h."""
APPLICATION_NAME = "firehose grow analysts"
SHORTEST_EXECUTION_S = 0.05
"""An execution is not started with less time left than this."""


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile of `values` (`share` 0.95 for p95); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def run_burst(
    dsn: str, seconds: float, window_end: datetime, trace_id: str | None, window_s: float, dependency_window_s: float
) -> dict:
    """Each query of queries/ run back to back by an analyst of its own for `seconds`; per query its executions,
    those cut by the burst's end, failures, rows of its last result, and p50 / p95 / max in ms."""
    deadline = time.monotonic() + seconds
    queries = load_queries()
    analysts = {
        name: gevent.spawn(
            _analyst,
            dsn,
            query.to_psycopg(),
            window_parameters(
                query,
                window_end,
                dependency_window_s if name == DEPENDENCY_MAP else window_s,
                metric_name=DEFAULT_METRIC_NAME,
                trace_id=trace_id,
            ),
            deadline,
        )
        for name, query in queries.items()
    }
    gevent.joinall(list(analysts.values()))
    results = {}
    for name, analyst in analysts.items():
        latencies_ms, cut, failures, rows, error = analyst.get()
        results[name] = {
            "window_s": dependency_window_s if name == DEPENDENCY_MAP else window_s,
            "count": len(latencies_ms),
            "cut": cut,
            "failures": failures,
            "error": error,
            "rows": rows,
            "p50_ms": _rounded(percentile(latencies_ms, 0.50)),
            "p95_ms": _rounded(percentile(latencies_ms, 0.95)),
            "max_ms": _rounded(max(latencies_ms, default=None)),
        }
    return results


def _analyst(dsn: str, sql: str, values: dict, deadline: float) -> tuple[list[float], int, int, int | None, str | None]:
    """(latencies in ms, executions cut by the deadline, failures, rows of the last result, first error)."""
    latencies_ms: list[float] = []
    cut = failures = 0
    rows, error = None, None
    with psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
        while (left := deadline - time.monotonic()) > SHORTEST_EXECUTION_S:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(left * 1000)}ms"])
            started = time.perf_counter()
            try:
                rows = len(conn.execute(sql, values).fetchall())
            except psycopg.errors.QueryCanceled:
                cut += 1
                continue
            except psycopg.Error as exc:  # a query that fails fails each time: counted once, its reason kept
                failures += 1
                error = error or str(exc).strip().splitlines()[0]
                break
            latencies_ms.append((time.perf_counter() - started) * 1000)
    return latencies_ms, cut, failures, rows, error


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
