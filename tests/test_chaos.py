"""Writes and reads at once: a real distributed run of CopyEngineer with 8 analysts, and `firehose chaos` with tiny
figures on the test server (its report's structure and every correctness check; no timing is asserted)."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json

import psycopg
import pytest

from firehose.cli import main
from tests.conftest import run_locust, load_summary
from tests.readme import readme_tool_command
from telemetry.layout import TABLES
from users.queries import load_queries

pytestmark = pytest.mark.slow

NAMES = sorted(load_queries())
ANALYSTS = 8
ENGINEERS = 8
"""~15k rows over 2 processes, paced (ENGINEER_RATE): ~4 s of writing, while the 8 analysts query."""
ENGINEER_RATE = "500"
"""Events/s per engineer: the writes last while the analysts query, without the CPU of a run at full speed."""
BATCH_ROWS = 100
"""Small COPY batches: each process commits ~20 times a second, so every query meets commits (the overlap measured;
with 500 rows a batch, 4 commits a second met by queries of ~15 ms, a query might meet none in a run)."""
THINK_S = "0.25"
"""`firehose chaos`'s analysts pause between queries (its figures are not judged here): ~4 queries a second each,
without 8 backends querying back to back. The run above keeps no think time: each query must meet commits."""
RUN_BOUND = "120s"
"""Locust's -t, only a bound: the run must end by itself, when every engineer has emitted its telemetry."""


def test_copy_engineers_and_analysts_in_two_processes(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "Analyst", "--processes", "2", "-u", str(ENGINEERS + ANALYSTS), "-r", "100",
        "--analysts", str(ANALYSTS), "-t", RUN_BOUND, "--copy-batch-size", str(BATCH_ROWS),
        "--engineer-rate", ENGINEER_RATE,
        "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"all {ENGINEERS} engineers have emitted their telemetry" in result.stderr  # ended by itself
    summary = load_summary(path)
    events, queries = summary["events"], summary["queries"]
    assert events["lost"] == 0 and events["duplicates"] == 0
    assert events["generated"] > ENGINEERS * 1900 * 0.9  # every engineer wrote: analysts took none of -u's engineers
    assert sorted(queries) == NAMES
    for name, query in queries.items():
        assert query["failures"] == 0, name
        assert query["count"] >= 3, (name, query)
        assert query["during_writes"] >= 1, (name, query)  # it ran while its process's writers committed rows
    counts = summary["generated_counts"]
    assert counts["traces"] > 0 and sum(counts["spans"].values()) == summary["writes"]["by_table"]["spans"]["generated"]


def chaos(dsn: str, out, *extra: str) -> int:
    """The README's `firehose chaos` line with tiny sizes (the last value of an option wins), on the test's server;
    both runs paced (engineers and analysts), since no figure is judged here."""
    tiny = ["--users", "4", "--duration", "4s", "--prefill", "5000", "--history", "3h"]
    paced = ["--", "--engineer-rate", ENGINEER_RATE, "--analyst-think-time", THINK_S]
    return main([*readme_tool_command("chaos"), *tiny, "--pg-dsn", dsn, "--out", str(out), *extra, *paced])


def test_chaos_reports_both_phases_and_every_check_passes(dsn, tmp_path):
    assert chaos(dsn, tmp_path) == 0
    result = json.loads((tmp_path / "chaos.json").read_text())
    markdown = (tmp_path / "chaos.md").read_text()
    assert "retention" in markdown and "0.58" in markdown and "7,000+" in markdown
    assert result["ok"] and result["retention"] is not None and result["queries_served"] > 0
    assert result["machine"]["cores"] >= 1 and result["queries_per_s"] > 0
    for name, phase in result["phases"].items():
        assert phase["ok"] and phase["events"]["lost"] == 0, name
        assert phase["rows_per_s"] > 0 and phase["tables_before"]["spans"]["rows"] > 0
        assert all(phase["tables_after"][table]["rows"] > phase["tables_before"][table]["rows"] for table in TABLES)
        assert all(size["bytes"] > 0 for size in phase["tables_after"].values())
        checks = phase["checks"]
        assert sorted(checks) == NAMES
        assert [name for name, check in checks.items() if check["ok"] is False] == []
        assert sum(check["ok"] is True for check in checks.values()) == 7  # metric_rollups has no generator count
        assert set(phase["cpu"]["cpu_s"]) and phase["cpu"]["server_measured"]
    assert result["phases"]["alone"]["queries"] == {}
    assert sorted(result["phases"]["with_analysts"]["queries"]) == NAMES
    assert result["phases"]["with_analysts"]["cpu"]["cpu_s"]["server: analysts' backends"] > 0


def test_chaos_refuses_a_database_with_other_tables(dsn, tmp_path, capsys):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE someone_elses (id int)")
    try:
        assert chaos(dsn, tmp_path) == 2
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE someone_elses")
    error = capsys.readouterr().err
    assert "someone_elses" in error and "--yes" in error and len(error.strip().splitlines()) == 1
