"""`firehose bench --quick` runs every section against a real server and writes well-formed results.

No figure is asserted: benchmarks are measured by `make bench`, not judged by tests. The whole quick bench runs
once (a module fixture); what it picks with --only and --strategy is checked without measuring again.
"""

import json
from pathlib import Path

import psycopg
import pytest

from firehose.cli import main
from firehose.tools.bench.main import picked_strategies

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(postgres, tmp_path_factory) -> Path:
    """The JSON results of one `firehose bench --quick` on the session's server (its tables emptied first)."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE spans, metrics, logs, quarantine")
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--pg-dsn", postgres.dsn, "--out", str(out)]) == 0
    [json_path] = out.glob("*.json")
    return json_path


def test_quick_bench_writes_results(quick_bench):
    json_path = quick_bench
    results = json.loads(json_path.read_text())
    assert results["machine"]["cores"] >= 1
    assert results["generator"]["events_per_s"]["median"] > 0
    e2e = results["end_to_end"]
    assert e2e["rows"] > 0 and e2e["raw_copy_rows_per_s"]["values"] and e2e["copy_engineer_rows_per_s"]["values"]
    strategies = results["strategies"]
    names = {"NaiveEngineer", "BatchedEngineer", "PooledEngineer", "CopyEngineer", "StreamEngineer", "ValveEngineer"}
    assert set(strategies["rows_per_s"]) == set(strategies["reference_rows_per_s"]) == names
    assert all(figure["values"] for figure in strategies["rows_per_s"].values())
    assert all(figure["values"] for figure in strategies["reference_rows_per_s"].values())
    assert set(strategies["ratio_to_reference"]) == set(strategies["goal"]) == names
    # Each C-client reference wrote at least the rows it claims (counted in the database afterwards).
    for name in names - {"StreamEngineer", "ValveEngineer"}:  # their reference is CopyEngineer's run
        [check] = strategies["reference_rows"][name]
        assert 0 < check["rows_claimed"] <= check["rows_counted"], name
    for name in names:
        assert strategies["server_cost"][name]["ours"]["wal_bytes_per_row"] > 0
        assert strategies["server_cost"][name]["ours"]["disk_bytes_per_row"] > 0
    assert set(strategies["client_cpu_us_per_row"]) == set(results["profiles"]) == names
    # The stream's own server, Redis, is measured beside PostgreSQL, in the Locust run and in the profile.
    assert strategies["server_cost"]["StreamEngineer"]["ours"]["redis_cpu_us_per_row"] >= 0  # 10 ms ticks of /proc
    assert strategies["traces_per_user"] == 10 and strategies["duration"] is None  # --quick: fixed volumes
    stream = results["profiles"]["StreamEngineer"]
    assert stream["rows"] > 0 and stream["server_cpu_us_per_row"] > 0
    assert (
        stream["redis_cpu_us_per_row"] >= 0
    )  # read from /proc (None would fail): 10 ms ticks, a quick run may spend less
    assert stream["us_per_row"]["producer: XADDs (pipelined), payloads, round trips, request events"] > 0
    # The valve's Redis too (its pointers), and its own profile: the spool's steps and the chunks' wait.
    assert strategies["server_cost"]["ValveEngineer"]["ours"]["redis_cpu_us_per_row"] >= 0
    valve = results["profiles"]["ValveEngineer"]
    assert valve["rows"] > 0 and valve["spool_chunks"] > 0 and valve["spool_ms_per_chunk"] > 0
    assert valve["us_per_row"]["consumer: rows read from the spool files"] > 0
    assert all("median" in lever or "skipped" in lever for lever in results["levers"].values())
    assert results["client_profile"]["client_cpu_us_per_row"] > 0
    layouts = results["layouts"]  # COPY into partitioned tables against plain ones, the same rows, both counted
    assert layouts["rows"] > 0 and layouts["partitions_written"] >= 1 and layouts["ratio"] > 0
    assert all(len(layouts["rows_per_s"][layout]["values"]) == 1 for layout in ("plain", "partitioned"))
    assert results["client_profile"]["us_per_row"]["compose rows (telemetry.generator)"] > 0
    markdown = json_path.with_suffix(".md").read_text()
    assert "end to end / raw" in markdown and "| CopyEngineer |" in markdown
    assert "| **COPY into partitioned / plain tables** (same rows) |" in markdown and "| partitioned | " in markdown
    assert (
        "| NaiveEngineer | " in markdown
        and "pgbench naive, -M prepared" in markdown
        and "server CPU us/row" in markdown
    )


def test_strategy_picks_the_strategies_run_with_the_references_they_need(quick_bench):
    def names(picked: list[str] | None) -> list[str]:
        return [row.name for row in picked_strategies(picked)]

    assert names(["StreamEngineer"]) == ["CopyEngineer", "StreamEngineer"]  # CopyEngineer: its reference
    assert names(["NaiveEngineer"]) == ["NaiveEngineer"]
    assert names(None) == list(json.loads(quick_bench.read_text())["strategies"]["rows_per_s"])


def test_only_measures_the_parts_asked_for(dsn, tmp_path):
    """--only generator: the cheapest part (no server work), and nothing else measured or rendered."""
    assert main(["bench", "--quick", "--only", "generator", "--pg-dsn", dsn, "--out", str(tmp_path)]) == 0
    [json_path] = tmp_path.glob("*.json")
    assert set(json.loads(json_path.read_text())) == {"machine", "generator"}
    markdown = json_path.with_suffix(".md").read_text()
    assert "generator, events/s on one core" in markdown and "end to end / raw" not in markdown


@pytest.mark.parametrize("tool", ["bench", "sweep"])
def test_tools_that_empty_tables_refuse_a_database_with_other_tables(dsn, tmp_path, capsys, tool):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE someone_elses (id int)")
    try:
        assert main([tool, "--pg-dsn", dsn, "--out", str(tmp_path)]) == 2
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE someone_elses")
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"firehose {tool}: ") and "someone_elses" in error and "--yes" in error
    assert len(error.splitlines()) == 1
