"""Live counters merged across processes, the files a run leaves (--html, --csv), and the open model, through
real headless Locust runs; plus the pieces that need no database."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import csv

import psycopg
import pytest

from firehose.report.live import LiveTelemetry, Sample, merge
from firehose.report.progress import progress_line
from tests.conftest import load_summary, run_locust


def _snapshot(acknowledged: int, received: int) -> dict:
    counters = {"spans": acknowledged, "metrics": 0, "logs": 0}
    return {
        "run_id": 1,
        "engineers": [2, 1],
        "writers": {
            "CopyWriter": {
                "received": {"spans": received},
                "acknowledged": counters,
                "acknowledged_bytes": {"spans": acknowledged * 3000},
                "failed": {},
                "quarantined": {},
                "retries": {},
                "blocked_s": {},
                "freshness": {},
                "round_trips": {},
                "gauges": {},
            }
        },
    }


def test_merge_sums_processes_and_computes_buffered():
    view = merge([_snapshot(100, 150), _snapshot(50, 50)], {"CopyWriter": "CopyEngineer"})
    assert view["total"]["acknowledged"] == 150 and view["total"]["buffered"] == 50
    assert view["by_class"]["CopyEngineer"]["received"] == 200 and view["engineers"] == [4, 2]


def test_rate_now_is_over_the_window_and_the_progress_line_says_it():
    live = LiveTelemetry()
    live.begin(1, {})
    for second in range(12):
        rows = {"spans": 1000 * second, "metrics": 0, "logs": 0}
        live.history.append(Sample(100.0 + second, rows, {t: 3000 * n for t, n in rows.items()}))
    rate = live.rate()
    assert rate["from"] == 101.0 and rate["to"] == 111.0 and rate["rows_per_s"] == pytest.approx(1000)
    view = merge([_snapshot(11000, 11500)]) | {"rate": rate}
    line = progress_line(view, live.started_at)
    assert "1,000 rows/s now" in line and "11,000 rows acknowledged" in line and "500 buffered" in line


@pytest.mark.slow
def test_processes_2_live_totals_equal_each_workers_acknowledged_and_the_database(dsn, tmp_path):
    summary_path, html_path, prefix = tmp_path / "summary.json", tmp_path / "report.html", tmp_path / "run"
    result = run_locust(
        "CopyEngineer", "--processes", "2", "-u", "6", "-r", "6", "-t", "60s", "--traces-per-engineer", "50",
        "--pg-dsn", dsn, "--summary-json", str(summary_path), "--html", str(html_path), "--csv", str(prefix),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(summary_path)
    live, processes = summary["live"], summary["processes"]
    assert live["processes"] == 2 and len(processes) == 2
    assert live["acknowledged"] == sum(p["acknowledged"] for p in processes) == summary["events"]["in_database"]
    assert min(p["acknowledged"] for p in processes) > 0  # both workers wrote
    with psycopg.connect(dsn) as conn:
        counted = sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in live["by_table"])
    assert counted == live["acknowledged"]
    assert live["by_table"] == {t: row["in_database"] for t, row in summary["writes"]["by_table"].items()}
    # --html: Locust's report holds the telemetry table; --csv: the telemetry history.
    report = html_path.read_text()
    assert 'id="firehose-telemetry"' in report and 'class="firehose-telemetry"' in report
    assert f"<td>{summary['events']['in_database']:,}</td>" in report and "<svg" in report
    with (tmp_path / "run_telemetry_history.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {row["table"] for row in rows} == {"spans", "metrics", "logs", "total"}
    assert int(rows[-1]["rows_acknowledged"]) == live["acknowledged"]


@pytest.mark.slow
@pytest.mark.usefixtures("rate_priority")  # a rate compared while other tests share the cores
def test_engineer_rate_below_capacity_is_achieved_without_lag(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "4", "-r", "4", "-t", "60s", "--engineer-rate", "200", "--traces-per-engineer", "30",
        "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_summary(path)["open_model"]
    assert model["offered_per_s"] == pytest.approx(800, rel=0.01)  # 4 engineers x 200 events/s
    assert model["achieved_per_s"] == pytest.approx(model["offered_per_s"], rel=0.05)
    assert model["lag_p99_s"] < 1.0
    assert "open model: offered 800 events/s" in result.stdout


@pytest.mark.slow
def test_engineer_rate_far_above_capacity_shows_lag_growing(dsn, tmp_path):  # far behind on any share of the cores
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "20", "-r", "20", "-t", "60s", "--engineer-rate", "20000",
        "--traces-per-engineer", "200", "--ramp-step", "0.5", "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(path)
    model = summary["open_model"]
    assert summary["events"]["lost"] == 0
    assert model["achieved_per_s"] < 0.5 * model["offered_per_s"]
    assert model["lag_p99_s"] > 1.0
    seen = [step["lag_seen_p99_s"] for step in model["steps"] if step["lag_seen_p99_s"] is not None]
    assert len(seen) >= 3 and seen[-1] > seen[0] + 0.5, seen  # behind schedule, more and more
    assert "lag behind schedule over the run" in result.stdout
