"""Analysts: weights, the per-process QueryRunner (a part of the ProcessRun), Locust requests per query, and the
HDR-histogram reports merged across processes."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import time
from types import SimpleNamespace

import gevent
import pytest
from hdrh.histogram import HdrHistogram
from locust.env import Environment
from locust.event import Events

from firehose.run.records import open_run
from firehose.run.messages import RunStart
from firehose.run.process_run import ProcessRun
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.pools import Pools
from users.analyst import PERCENTILE_METHOD, Analyst, QueryRunner, merge_reports, parse_weights
from users.queries import load_queries
from writers.copy import CopyWriter

NAMES = sorted(load_queries())
ANCHOR_US = 1_748_779_200_000_000
"""2025-06-01 12:00 UTC: the newest data's time, fixed so the window holds the same rows at every run."""
OBSERVATION_TIMEOUT_S = 60
"""How long a test waits for state it expects (queries counted): far beyond the ~1 s it takes here."""


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    QueryRunner.add_arguments(parser)
    return parser.parse_args(argv)


def wait_until(condition, timeout: float = OBSERVATION_TIMEOUT_S) -> None:
    """Yield to the greenlets until `condition()` holds (observed state, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the expected state was not reached in time"
        gevent.sleep(0.01)


def histogram_of(*values_us: int) -> str:
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in values_us:
        histogram.record_value(value)
    return histogram.encode().decode("ascii")


def test_weights_default_to_equal_and_name_known_queries():
    assert parse_weights("", NAMES) == dict.fromkeys(NAMES, 1.0)
    weights = parse_weights("recent_errors=5, service_dependency_map=0", NAMES)
    assert weights["recent_errors"] == 5 and weights["service_dependency_map"] == 0 and weights["error_rates"] == 1
    with pytest.raises(ValueError, match="unknown query 'nope'"):
        parse_weights("nope=1", NAMES)
    with pytest.raises(ValueError, match="at least one"):
        parse_weights(",".join(f"{name}=0" for name in NAMES), NAMES)


def test_options_and_their_defaults():
    parsed = options()
    assert (parsed.analyst_pool_size, parsed.analyst_think_time, parsed.query_weights, parsed.query_window) == (
        8,
        0.0,
        "",
        "1h",
    )


def test_reports_merge_counts_and_histograms_across_processes():
    one = {
        "recent_errors": {
            "count": 3,
            "failures": 1,
            "rows": 100,
            "during_writes": 2,
            "histogram": histogram_of(1000, 2000),
        }
    }
    two = {
        "recent_errors": {
            "count": 2,
            "failures": 0,
            "rows": 100,
            "during_writes": 1,
            "histogram": histogram_of(3000, 4000),
        }
    }
    merged = merge_reports([one, two])["recent_errors"]
    assert (merged["count"], merged["failures"], merged["rows"], merged["during_writes"]) == (5, 1, 200, 3)
    assert merged["p50_ms"] == pytest.approx(2.0, rel=1e-3)
    assert merged["p99_ms"] == pytest.approx(4.0, rel=1e-3)
    assert merged["percentile_method"] == PERCENTILE_METHOD


@pytest.fixture(scope="module")
def telemetry(postgres, pools) -> str:
    """Three engineers' telemetry in the hour before ANCHOR_US."""
    writer = CopyWriter(postgres.dsn, Events(), batch_size=2000, pool_size=2)
    ids = EventIds(31)
    for seed in range(3):
        for rows in EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids):
            writer.write(rows)
    writer.close()
    return postgres.dsn


def process_run(dsn: str, pools: Pools, events: Events, *argv: str) -> ProcessRun:
    """A real ProcessRun (it records a writer key in the database), anchored at ANCHOR_US."""
    run = RunStart(open_run(dsn, seed=7, label="Analyst"), 7, ANCHOR_US, {"postgres": dsn})
    environment = Environment(events=events)
    return ProcessRun(run, "firehose test", 0, pools, options(*argv), environment, on_fatal=print)


@pytest.mark.slow
def test_the_runner_is_built_once_per_process_and_closed_at_drain(telemetry, pools):
    run = process_run(telemetry, pools, Events())
    built = []

    class CountedRunner(QueryRunner):
        @classmethod
        def for_run(cls, run: ProcessRun) -> QueryRunner:
            built.append(run)
            return super().for_run(run)  # connecting yields to the other greenlets

    greenlets = [gevent.spawn(run.part, CountedRunner) for _ in range(10)]
    gevent.joinall(greenlets, raise_error=True)
    assert len(built) == 1 and {greenlet.value for greenlet in greenlets} == {run.part(CountedRunner)}
    runner = run.part(CountedRunner)
    assert runner.execute("error_rates") > 0
    run.drain()
    assert runner.execute("error_rates") is None  # the run is over: not run, not counted
    assert runner.report()["error_rates"]["count"] == 1  # statistics outlive the pool, for the summary


@pytest.mark.slow
def test_analysts_fire_every_query_as_a_locust_request(telemetry, pools, monkeypatch):
    events = Events()
    fired = []
    events.request.add_listener(lambda **request: fired.append(request))
    run = process_run(telemetry, pools, events, "--analyst-pool-size", "4")
    environment = Environment(user_classes=[Analyst], events=events, parsed_options=run.options)
    process = SimpleNamespace(process_run=run, options=run.options, wait_for_run=lambda timeout: None)
    monkeypatch.setattr(Analyst, "process", process)  # as the lifecycle sets it
    runner = environment.create_local_runner()
    runner.start(8, spawn_rate=100)
    wait_until(lambda: all(environment.stats.get(name, "SQL").num_requests >= 3 for name in NAMES))
    run.drain()  # the analysts stop at their next task (run.closing), the pool closes
    runner.quit()

    assert {request["name"] for request in fired} == set(NAMES)
    assert [request["exception"] for request in fired if request["exception"]] == []
    assert all(request["request_type"] == "SQL" and request["exception"] is None for request in fired)
    assert all(request["response_length"] > 0 for request in fired)  # the window holds errors, traces, metrics
    report = run.part(QueryRunner).report()
    counted = {name: sum(request["name"] == name for request in fired) for name in NAMES}
    assert {name: part["count"] for name, part in report.items()} == counted
    assert {name: part["rows"] for name, part in report.items()} == {
        name: sum(request["response_length"] for request in fired if request["name"] == name) for name in NAMES
    }
    merged = merge_reports([report])
    assert all(0 < merged[name]["p50_ms"] <= merged[name]["p95_ms"] <= merged[name]["p99_ms"] for name in NAMES)


@pytest.mark.slow
def test_weights_steer_the_mix(telemetry, pools):
    run = process_run(telemetry, pools, Events(), "--query-weights", ",".join(f"{name}=0" for name in NAMES[1:]))
    runner = run.part(QueryRunner)
    assert {runner.pick() for _ in range(50)} == {NAMES[0]}
    run.drain()
