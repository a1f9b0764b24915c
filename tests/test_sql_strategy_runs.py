"""Real headless Locust runs of the naive, batched and pgBouncer strategies: each reconciles exactly.

The pgBouncer runs also prove that transaction pooling and psycopg get along: many users, client
connections outnumbering server connections, and not one failed request (a prepared statement
reused across server connections would fail).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import re

import psycopg
import pytest

from services.pgbouncer import PgBouncer
from tests.conftest import load_summary, run_locust

pytestmark = pytest.mark.slow

TRACES = "10"
"""Traces per engineer (~190 events): a few thousand rows per run keep each test within seconds."""


def _run(tmp_path, *args):
    """A Locust run: firehose's summary, Locust's final request stats (one entry per type and name), the process.

    Locust's `--json-file` is written at shutdown, after the writers drained; `--csv` files are
    written before, so they miss the last batches.
    """
    summary, stats = tmp_path / "summary.json", tmp_path / "stats"
    options = ("--traces-per-engineer", TRACES, "--summary-json", str(summary), "--json-file", str(stats))
    result = run_locust(*args, *options)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    requests = json.loads(stats.with_suffix(".json").read_text())  # Locust appends the suffix
    return load_summary(summary), requests, result


def _assert_reconciles(summary, requests, users):
    events = summary["events"]
    assert events["generated"] > users * int(TRACES) * 15  # ~19 events per trace
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0
    assert events["acknowledged"] == events["in_database"] == events["generated"]
    assert {entry["method"] for entry in requests} == {"INSERT"}
    assert {entry["name"] for entry in requests} == {"spans", "metrics", "logs"}
    assert all(entry["num_failures"] == 0 and entry["num_requests"] > 0 for entry in requests)


@pytest.mark.parametrize("user_class", ["NaiveEngineer", "BatchedEngineer"])
def test_insert_strategies_reconcile(dsn, tmp_path, user_class):
    summary, requests, _ = _run(tmp_path, user_class, "-u", "10", "-r", "10", "-t", "20s", "--pg-dsn", dsn)
    _assert_reconciles(summary, requests, users=10)
    if user_class == "NaiveEngineer":  # one INSERT per event
        assert sum(entry["num_requests"] for entry in requests) == summary["events"]["generated"]


def test_pooled_run_starts_and_stops_its_own_pgbouncer(dsn, tmp_path, monkeypatch):
    """No --pgbouncer-dsn: the master starts one; its forked workers get its address with the options.

    Workers build their value pools (~1.7 s) after telling the master they are ready, so they report
    their spawned users after Locust's default 1 s wait; the longer wait below lets the master count
    their engineers before it judges whether all have finished (firehose.run.lifecycle._finish_when_idle).
    """
    monkeypatch.setenv("LOCUST_WAIT_FOR_WORKERS_REPORT_AFTER_RAMP_UP", "30")
    summary, requests, result = _run(
        tmp_path, "PooledEngineer", "--processes", "2", "-u", "10", "-r", "10", "-t", "20s", "--pg-dsn", dsn
    )
    _assert_reconciles(summary, requests, users=10)
    port = re.search(r"pgBouncer \(transaction pooling\) on .*port=(\d+),", result.stderr).group(1)
    with pytest.raises(psycopg.OperationalError):  # stopped with the run
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=firehose", connect_timeout=2)


def test_forty_pooled_users_share_four_server_connections_without_errors(dsn, postgres, tmp_path):
    """Small batches over few client connections: each connection runs each statement often enough that
    psycopg would prepare it (its threshold is 5 runs). With automatic prepared statements on, this run
    had 23 of 384 INSERTs fail (`prepared statement "_pg3_0" already exists`, `... does not exist`)."""
    bouncer = PgBouncer(postgres.dsn, pool_size=4)
    bouncer.start()
    try:
        summary, requests, _ = _run(
            tmp_path, "PooledEngineer", "-u", "40", "-r", "40", "-t", "20s", "--pg-dsn", dsn,
            "--pgbouncer-dsn", bouncer.dsn, "--pooled-pool-size", "8", "--pooled-batch-size", "20",
        )  # fmt: skip
    finally:
        bouncer.stop()
    _assert_reconciles(summary, requests, users=40)
    assert sum(entry["num_requests"] for entry in requests) > 5 * 3 * 8  # past the threshold on every connection
