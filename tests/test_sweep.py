"""The sweep: its table, ratios, CSV and JSON from hand-made summaries, and one real short sweep."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from firehose import cli
from firehose.tools.sweep.main import (
    parse_user_counts,
    plan_from_args,
    redacted_command,
    scrub_log,
)
from firehose.tools.sweep.report import (
    Cell,
    SweepResult,
    best_rows_per_s,
    ratios_to_baseline,
    render_csv,
    render_json,
    render_markdown,
    render_table,
)
from telemetry.durations import parse_duration
from tests.conftest import validate_summary
from tests.readme import readme_tool_command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _summary(rows_per_s: float, lost: int = 0, duplicates: int = 0) -> dict:
    """The parts of a run's summary (firehose.run.summary.RunSummary.as_dict) that a sweep reads."""
    return {
        "run": {"run_id": 1, "seed": 7, "database": "host=db", "elapsed_s": 10.0},
        "events": {
            "generated": int(rows_per_s * 10) + lost,
            "acknowledged": int(rows_per_s * 10),
            "in_database": int(rows_per_s * 10),
            "lost": lost,
            "failed": 0,
            "quarantined": 0,
            "duplicates": duplicates,
        },
        "writes": {"rows": int(rows_per_s * 10), "rows_per_s": rows_per_s, "mb_per_s": rows_per_s * 3e-3},
    }


def _cell(strategy: str, users: int, rows_per_s: float | None, *, returncode: int = 0, lost: int = 0) -> Cell:
    summary = None if rows_per_s is None else _summary(rows_per_s, lost=lost)
    return Cell(strategy, users, returncode, summary, log=f"cells/{strategy}-{users}u.log")


def _seed_like() -> SweepResult:
    """Naive, batched and COPY at 10 and 50 users, COPY losing rows at 50."""
    return SweepResult(
        cells=[
            _cell("NaiveEngineer", 10, 1000),
            _cell("NaiveEngineer", 50, 1200),
            _cell("BatchedEngineer", 10, 2400),
            _cell("BatchedEngineer", 50, 3000),
            _cell("CopyEngineer", 10, 4800),
            _cell("CopyEngineer", 50, 9000, returncode=1, lost=12),
        ],
        machine={"cores": 2, "postgres_version": "18.1"},
        settings={"duration": "20s"},
    )


def _table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]


def test_ratios_to_naive_at_each_user_count():
    ratios = ratios_to_baseline(_seed_like().cells)
    assert ratios[("NaiveEngineer", 10)] == 1.0
    assert ratios[("BatchedEngineer", 10)] == pytest.approx(2.4)
    assert ratios[("BatchedEngineer", 50)] == pytest.approx(2.5)
    assert ratios[("CopyEngineer", 10)] == pytest.approx(4.8)


def test_a_cell_that_lost_rows_counts_toward_neither_best_nor_ratio():
    cells = _seed_like().cells
    assert ("CopyEngineer", 50) not in ratios_to_baseline(cells)
    assert best_rows_per_s(cells) == {"NaiveEngineer": 1200, "BatchedEngineer": 3000, "CopyEngineer": 4800}


def test_table_has_a_row_per_strategy_and_a_column_per_user_count():
    header, rule, *rows = _table_rows(render_table(_seed_like()))
    assert header == ["strategy", "10 users", "50 users", "best", "ratio to naive"]
    assert rule[0] == "---"
    assert rows == [
        ["NaiveEngineer", "1,000", "1,200", "1,200", "1.0"],
        ["BatchedEngineer", "2,400", "3,000", "3,000", "2.5"],
        ["CopyEngineer", "4,800", "9,000 (lost 12)", "4,800", "4.0"],
    ]


def test_failed_and_timed_out_runs_are_marked_not_dropped():
    result = SweepResult(
        cells=[
            _cell("CopyEngineer", 10, 4800),
            _cell("CopyEngineer", 50, None, returncode=2),
            Cell("CopyEngineer", 100, -9, None, timed_out=True, log="cells/CopyEngineer-100u.log"),
        ]
    )
    (_, _, row) = _table_rows(render_table(result))
    assert row == ["CopyEngineer", "4,800", "failed (exit 2: BAD_SETTING)", "timed out", "4,800"]  # no naive: no ratio
    report = render_markdown(result)
    assert "- CopyEngineer at 50 users: failed (exit 2: BAD_SETTING), see cells/CopyEngineer-50u.log" in report
    assert "- CopyEngineer at 100 users: timed out (exit -9)" in report
    assert "Ratio to naive" not in report


def test_markdown_has_the_ratio_table_when_naive_ran():
    report = render_markdown(_seed_like())
    assert "2 cores, PostgreSQL 18.1" in report
    ratios = report.split("Ratio to naive at each user count:")[1].split("Marked cells:")[0].strip()
    assert _table_rows(ratios)[2:] == [
        ["NaiveEngineer", "1.0", "1.0"],
        ["BatchedEngineer", "2.4", "2.5"],
        ["CopyEngineer", "4.8", ""],
    ]
    assert "- CopyEngineer at 50 users: lost rows (exit 1: LOST_OR_DUPLICATED)" in report


def test_csv_and_json_have_every_cell():
    result = _seed_like()
    rows = list(csv.DictReader(io.StringIO(render_csv(result))))
    assert [(row["strategy"], row["users"], row["status"]) for row in rows][-2:] == [
        ("CopyEngineer", "10", "ok"),
        ("CopyEngineer", "50", "lost rows"),
    ]
    assert rows[4]["ratio_to_naive"] == "4.8" and rows[5]["ratio_to_naive"] == "" and rows[5]["lost"] == "12"
    document = json.loads(render_json(result))
    assert document["machine"]["cores"] == 2
    assert len(document["cells"]) == 6 and document["cells"][5]["summary"]["events"]["lost"] == 12


def test_database_ratio_cost_scale_and_probe_tables():
    result = _seed_like()
    result.references = {
        "NaiveEngineer": {"kind": "naive", "rows_per_s": 5000.0, "clients": 50, "rows_counted": 1, "rows_claimed": 1},
        "CopyEngineer": {"kind": "copy", "rows_per_s": 15000.0, "clients": 2, "rows_counted": 1, "rows_claimed": 1},
    }
    cost = {"wal_bytes_per_row": 2500.0, "disk_bytes_per_row": 2600.0, "server_cpu_us_per_row": 80.0,
            "commits_per_1k_rows": 2.0, "wal_syncs_per_1k_rows": 1.0}  # fmt: skip
    result.cells[0].server_cost = cost
    result.references["NaiveEngineer"]["server_cost"] = cost | {"server_cpu_us_per_row": 60.0}
    probe = {"interval_s": 5, "lock_timeout_ms": 2000, "attempts": 4, "failed": 1, "failures": {"lock_timeout": 1},
             "connect_ms": {"count": 4, "p50": 3.0, "p95": 4.0, "max": 4.0},
             "lock_wait_ms": {"count": 3, "p50": 10.0, "p95": 90.0, "max": 90.0}}  # fmt: skip
    result.cells[0].summary["migration_probe"] = probe
    result.cells.append(Cell("PooledEngineer", 50, 0, _summary(4000), connections=1000, server_connections=21))
    result.cells.append(Cell("BatchedEngineer", 50, 2, None, connections=1000, server_connections=499))
    header, _, *rows = _table_rows(render_table(result))
    assert header[-1] == "database's ratio"
    assert [row[-1] for row in rows] == ["1.0", "", "3.0"]
    assert [row[0] for row in rows] == ["NaiveEngineer", "BatchedEngineer", "CopyEngineer"]  # scale cells apart
    report = render_markdown(result)
    assert "| NaiveEngineer | 10 | 2,500 / 2,500 | 2,600 / 2,600 | 80 / 60 | 2.0 / 2.0 | 1.0 / 1.0 |" in report
    assert "| PooledEngineer | 4,000, 21 server connections |" in report
    assert "| BatchedEngineer | failed (exit 2: BAD_SETTING), 499 server connections |" in report
    assert "| NaiveEngineer | 10 | 4 | 1 | 3.0 | 10.0 | 90.0 | 90.0 |" in report
    rows = list(csv.DictReader(io.StringIO(render_csv(result))))
    assert rows[0]["server_cpu_us_per_row"] == "80.0" and rows[0]["probe_failed"] == "1"
    assert rows[-1]["connections"] == "1000" and rows[-1]["server_connections"] == "499"
    assert json.loads(render_json(result))["references"]["CopyEngineer"]["rows_per_s"] == 15000.0


def test_durations_and_user_counts_parse_like_locust():
    assert parse_duration("20s") == 20 and parse_duration("2m") == 120 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert parse_user_counts("100, 10,50,10") == [10, 50, 100]
    with pytest.raises(ValueError):
        parse_user_counts("0,10")


def test_arguments_after_double_dash_go_to_locust():
    args = cli.build_parser().parse_args(
        ["sweep", "--strategies", "CopyEngineer", "--users", "2", "--", "--traces-per-engineer", "5"]
    )
    assert plan_from_args(args).locust_args == ["--traces-per-engineer", "5"]
    with pytest.raises(ValueError, match="unknown strategies NoSuchEngineer"):
        plan_from_args(cli.build_parser().parse_args(["sweep", "--strategies", "NoSuchEngineer"]))


def test_a_sweep_never_shrinks_pools():
    """A shrunk pool is another strategy: a cell past max_connections is refused, never shrunk (firehose.run.budget)."""
    args = cli.build_parser().parse_args(["sweep", "--strategies", "CopyEngineer", "--", "--shrink-pools"])
    with pytest.raises(ValueError, match="--shrink-pools has no place in a sweep: a shrunk pool is another strategy"):
        plan_from_args(args)


def test_passwords_stay_out_of_commands_and_logs(tmp_path):
    command = ["locust", "--pg-dsn", "host=db password=s3cret", "--redis-url", "redis://:hunter2@cache:6379/0"]
    assert "s3cret" not in " ".join(redacted_command(command))
    assert "hunter2" not in " ".join(redacted_command(command))
    assert redacted_command(["--redis-url", "redis://cache:6379/0"]) == ["--redis-url", "redis://cache:6379/0"]
    log = tmp_path / "run.log"
    log.write_text('connection to "db" failed for password=s3cret and hunter2\n')
    scrub_log(log, command)
    assert "s3cret" not in log.read_text() and "hunter2" not in log.read_text()


@pytest.mark.slow
def test_a_short_sweep_writes_every_result_file(dsn, tmp_path):
    """The README's `firehose sweep` line (NaiveEngineer and CopyEngineer) with tiny sizes."""
    out = tmp_path / "sweep"
    exit_code = cli.main(
        [
            *readme_tool_command("sweep"), "--users", "2,4", "--duration", "1s", "--pg-dsn", dsn,
            "--out", str(out), "--", "--traces-per-engineer", "5",
        ]
    )  # fmt: skip
    assert exit_code == 0, (out / "cells" / "CopyEngineer-2u.log").read_text()[-3000:]
    header, _, *rows = _table_rows((out / "sweep.md").read_text().split("\n\n")[2])
    assert header == ["strategy", "2 users", "4 users", "best", "ratio to naive", "database's ratio"]
    assert [row[0] for row in rows] == ["NaiveEngineer", "CopyEngineer"]
    for row in rows:
        assert all(value.replace(",", "").isdigit() for value in row[1:4]) and float(row[5]) > 0, row
    cells = list(csv.DictReader((out / "sweep.csv").open()))
    assert sorted((cell["strategy"], cell["users"], cell["status"]) for cell in cells) == [
        (strategy, users, "ok") for strategy in ("CopyEngineer", "NaiveEngineer") for users in ("2", "4")
    ]
    assert all(float(cell["rows_per_s"]) > 0 and cell["lost"] == "0" for cell in cells)
    document = json.loads((out / "sweep.json").read_text())
    assert document["machine"]["cores"] == os.cpu_count() and document["machine"]["postgres_version"]
    assert [cell["summary"]["events"]["lost"] for cell in document["cells"]] == [0, 0, 0, 0]
    for cell in document["cells"]:
        validate_summary(cell["summary"])
    assert "--traces-per-engineer" in document["cells"][0]["command"]
    assert all(cell["server_cost"]["wal_bytes_per_row"] > 0 for cell in document["cells"])
    references = document["references"]
    assert set(references) == {"NaiveEngineer", "CopyEngineer"}
    assert all(0 < ref["rows_claimed"] <= ref["rows_counted"] for ref in references.values())
    assert (out / "sweep.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_default_sweep_runs_the_valve_beside_the_stream_and_copy():
    """Every strategy of the table is in the default sweep's grid (its table and chart), the valve included."""
    strategies = plan_from_args(cli.build_parser().parse_args(["sweep"])).strategies
    assert {"CopyEngineer", "StreamEngineer", "ValveEngineer"} <= set(strategies)
