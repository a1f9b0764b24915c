"""Real Locust runs, headless, standalone and with --processes: every run reconciles with lost = 0."""

import pytest

from tests.conftest import load_summary, run_locust

pytestmark = pytest.mark.slow


def _summary(result, path):
    assert result.returncode == 0 and path.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    return load_summary(path)


def test_headless_copy_run_reconciles(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust("CopyEngineer", "-u", "6", "-r", "6", "-t", "60s", "--pg-dsn", dsn, "--summary-json", str(path))
    summary = _summary(result, path)
    events = summary["events"]
    assert events["generated"] > 6 * 1900 * 0.9  # every engineer's whole volume: the run ended by itself
    assert events["lost"] == 0 and events["duplicates"] == 0
    assert events["acknowledged"] == events["in_database"] == events["generated"]
    assert summary["writes"]["rows_per_s"] > 0
    assert set(summary["writes"]["by_table"]) == {"spans", "metrics", "logs"}
    assert "reconciliation: lost = 0" in result.stdout


def test_distributed_run_with_processes_reconciles(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "--processes", "2", "-u", "4", "-r", "4", "-t", "60s",
        "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    events = _summary(result, path)["events"]
    assert events["generated"] > 4 * 1900 * 0.9
    assert events["lost"] == 0 and events["acknowledged"] == events["in_database"]


def test_continuous_engineers_write_until_the_time_limit(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "2", "-r", "2", "-t", "6s", "--continuous", "--engineer-rate", "1000",
        "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    summary = _summary(result, path)
    assert summary["events"]["lost"] == 0
    assert summary["run"]["elapsed_s"] >= 5.5
    assert summary["events"]["generated"] > 2 * 1900
