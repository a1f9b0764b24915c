"""The analysts' queries (queries/*.sql) run as written against real telemetry and answer sensibly."""

from pathlib import Path

import psycopg
import pytest
from locust.event import Events

from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.pools import Pools
from writers.copy import CopyWriter

pytestmark = pytest.mark.slow

QUERIES = Path(__file__).resolve().parent.parent / "queries"


@pytest.fixture(scope="module")
def telemetry_dsn(postgres):
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE spans, metrics, logs")
    writer = CopyWriter(postgres.dsn, Events(), batch_size=2000, pool_size=2)
    pools, ids = Pools.build(0), EventIds(21)
    for seed in range(5):
        for rows in EngineerTelemetry(pools, seed).traces(ids):
            writer.write(rows)
    writer.close()
    return postgres.dsn


def run(dsn: str, name: str) -> list[dict]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute((QUERIES / f"{name}.sql").read_text()).fetchall()


def test_there_are_eight_queries():
    assert len(list(QUERIES.glob("*.sql"))) == 8


@pytest.mark.parametrize("path", sorted(QUERIES.glob("*.sql")), ids=lambda path: path.stem)
def test_every_query_returns_rows(telemetry_dsn, path):
    assert run(telemetry_dsn, path.stem)


def test_dependency_map_starts_at_the_gateway(telemetry_dsn):
    edges = {(row["caller"], row["callee"]) for row in run(telemetry_dsn, "service_dependency_map")}
    assert ("api-gateway", "llm-router") in edges
    assert all(caller != callee for caller, callee in edges)


def test_recent_errors_are_errors_newest_first(telemetry_dsn):
    rows = run(telemetry_dsn, "recent_errors")
    assert len(rows) == 50
    assert [row["start_time"] for row in rows] == sorted((row["start_time"] for row in rows), reverse=True)


def test_ai_cost_is_split_by_model_and_team(telemetry_dsn):
    rows = run(telemetry_dsn, "ai_cost_by_model_team")
    assert {row["model"] for row in rows} >= {"gpt-4o", "claude-sonnet-4"}
    assert all(row["team"] for row in rows)
    assert sum(row["cost_usd"] for row in rows) > 0


def test_latency_percentiles_are_ordered(telemetry_dsn):
    for row in run(telemetry_dsn, "latency_percentiles"):
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
