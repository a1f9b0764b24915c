"""Runs kept and compared (docs/runs.md): the local store, `firehose runs`, `firehose compare`, `--check`,
`--baseline`/`--max-regression`, `--junit`, `firehose run --repeat` and the web UI's Runs page.

The logic runs in process on a real summary (tests/data/summary.json, from a CopyEngineer run with two analysts)
with its rates scaled; real Locust runs show what only they can: two labelled groups kept in the store and the
database, compared; a failed check's exit code and line; a check of an unknown figure refused (exit 2).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import statistics
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from xml.dom import minidom

import psycopg
import pytest

from firehose import cli
from firehose.report import checks, store
from firehose.report.figures import figures
from firehose.run import kept
from firehose.run.exit_codes import ExitCode
from firehose.run.preflight import Refused, check_options
from tests.conftest import REPO, load_summary, run_locust, validate_summary

FIXTURE = REPO / "tests" / "data" / "summary.json"


def real_summary(label: str = "", scale: float = 1.0, run_id: int = 1, minute: int = 0) -> dict:
    """The fixture summary under `label`, its rates times `scale`, started at 16:`minute`."""
    summary = validate_summary(json.loads(FIXTURE.read_text()))
    summary["run"]["run_id"] = run_id
    summary["context"]["label"] = label
    summary["context"]["started_at"] = f"2026-12-03T16:{minute:02d}:00+00:00"
    writes = summary["writes"]
    for row in (writes, *writes["by_table"].values()):
        row["rows_per_s"] *= scale
        row["mb_per_s"] *= scale
    return summary


def options(**given) -> Namespace:
    return Namespace(**{"check": [], "baseline": None, "max_regression": "10%", **given})


def test_figures_are_read_from_the_summary():
    summary = real_summary()
    found = figures(summary)
    assert found["rows_per_s"] == summary["writes"]["rows_per_s"]
    assert found["mb_per_s[spans]"] == summary["writes"]["by_table"]["spans"]["mb_per_s"]
    assert found["query_p95_ms[trace_lookup]"] == summary["queries"]["trace_lookup"]["p95_ms"]
    worst = max(row["p99_ms"] for row in summary["freshness"]["by_table"].values())
    assert found["freshness_p99_ms"] == worst
    assert found["lost"] == 0
    assert "lag_p99_s" not in found and "replica_lag_p95_ms" not in found  # an unpaced run on the primary


def test_a_paced_run_on_a_replica_has_its_lags_as_figures(capsys):
    """The lag behind schedule (--engineer-rate, --population) and the replica's replay lag and visible freshness
    are figures to compare and check, where a run has them."""
    first, second = real_summary("paced"), real_summary("paced later", minute=1)
    for summary, lag_p99_s, replay_p95_ms in ((first, 0.2, 40.0), (second, 0.5, 90.0)):
        summary["open_model"] = {"lag_p50_s": 0.01, "lag_p99_s": lag_p99_s, "lag_max_s": 2 * lag_p99_s}
        summary["replica"] = {"lag": {"replay_ms": {"p95": replay_p95_ms}}, "visible_freshness": {"p95_ms": None}}
    found = figures(first)
    assert (found["lag_p99_s"], found["lag_max_s"], found["replica_lag_p95_ms"]) == (0.2, 0.4, 40.0)
    assert "replica_visible_p95_ms" not in found  # no sample: absent, not 0
    assert checks.Check.parse("lag_p99_s <= 1").judge(found)["passed"]
    assert not checks.Check.parse("replica_lag_p95_ms <= 30").judge(found)["passed"]
    for summary in (first, second):
        store.save(summary)
    assert cli.main(["compare", "paced", "paced later", "--json"]) == 0
    rows = {row["figure"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    lag = rows["lag_p99_s"]["deltas"][1]
    assert lag["abs"] == pytest.approx(0.3) and lag["pct"] == pytest.approx(150.0) and not lag["better"]
    assert rows["replica_lag_p95_ms"]["deltas"][1]["abs"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    "check",
    [
        "rows_per_sec >= 15000",  # no such figure
        "query_p95_ms[no_such_query] <= 800",
        "query_p95_ms <= 800",  # a query figure needs its query
        "rows_per_s[no_such_table] >= 1",
        "rows_per_s = 15000",  # not an operator
        "rows_per_s >= fast",
    ],
)
def test_a_check_that_names_no_figure_is_refused_before_start(check):
    with pytest.raises(Refused) as refusal:
        check_options(options(check=[check]))
    assert refusal.value.option == "check" and "--check" in str(refusal.value)


def test_the_issue_s_checks_are_accepted():
    given = ["rows_per_s >= 15000", "freshness_p99_ms <= 3000", "query_p95_ms[service_dependency_map] <= 800"]
    check_options(options(check=given))
    assert [check.figure for check in kept.parsed_checks(options(check=given))] == [
        "rows_per_s",
        "freshness_p99_ms",
        "query_p95_ms[service_dependency_map]",
    ]


def test_each_check_is_one_line_with_its_figure_and_verdict():
    summary = real_summary()
    rate = summary["writes"]["rows_per_s"]
    results = kept.judge(summary, options(check=[f"rows_per_s >= {rate * 2:.0f}", "lost == 0"]))
    assert [result["passed"] for result in results] == [True, False, True]  # lost == 0 is always first
    assert results[1]["line"].startswith(f"check FAIL: rows_per_s >= {rate * 2:.0f}: rows_per_s = {rate:,.0f}")
    assert kept.judge(summary, options()) == []  # no checks asked: none judged


def test_baseline_with_double_the_rate_fails_and_half_passes():
    store.save(real_summary("doubled", scale=2.0, run_id=7))
    store.save(real_summary("halved", scale=0.5, run_id=8))
    summary = real_summary()
    doubled = kept.judge(summary, options(baseline="doubled"))[-1]
    halved = kept.judge(summary, options(baseline="halved"))[-1]
    assert not doubled["passed"] and doubled["line"].startswith("check FAIL: rows_per_s vs baseline doubled")
    assert halved["passed"] and halved["line"].startswith("check PASS: rows_per_s vs baseline halved")
    run_ref = store.resolve("8")[0].ref  # a run id names the newest kept run with it
    assert kept.judge(summary, options(baseline=run_ref))[-1]["passed"]


def test_baseline_is_judged_against_its_spread():
    for n, scale in enumerate((0.8, 1.0, 1.2)):
        store.save(real_summary("spread", scale=scale, run_id=10 + n, minute=n))
    store.save(real_summary("single", scale=1.0, run_id=20))
    # 10 % below the slowest of the spread (0.8): 0.72 of the fixture's rate
    assert kept.judge(real_summary(scale=0.75), options(baseline="spread"))[-1]["passed"]
    assert not kept.judge(real_summary(scale=0.7), options(baseline="spread"))[-1]["passed"]
    # one run: 10 % below it
    assert not kept.judge(real_summary(scale=0.85), options(baseline="single"))[-1]["passed"]
    assert kept.judge(real_summary(scale=0.95), options(baseline="single"))[-1]["passed"]


def test_a_baseline_removed_during_the_run_fails_its_check(runs_store):
    store.save(real_summary("gone", run_id=5))
    check_options(options(baseline="gone"))  # at start: it is there
    for path in runs_store.iterdir():
        path.unlink()
    results = kept.judge(real_summary(), options(baseline="gone"))
    assert [result["passed"] for result in results] == [True, False]
    assert results[-1]["line"].startswith("check FAIL: baseline: --baseline gone names no stored run")


@pytest.mark.parametrize("given", [{"baseline": "no-such-label"}, {"max_regression": "a lot"}])
def test_a_baseline_that_names_no_run_or_a_bad_regression_is_refused(given):
    with pytest.raises(Refused) as refusal:
        check_options(options(**given))
    assert refusal.value.option in ("baseline", "max_regression")


def test_junit_has_one_case_per_check(tmp_path):
    results = checks.judge_all(
        real_summary(),
        [checks.Check.parse("rows_per_s >= 1"), checks.Check.parse("query_p95_ms[trace_lookup] <= 0.001")],
        None,
    )
    checks.write_junit(tmp_path / "checks.xml", results, "run1")
    assert_junit(tmp_path / "checks.xml", ["lost == 0", "rows_per_s >= 1", "query_p95_ms[trace_lookup] <= 0.001"], 1)


def assert_junit(path: Path, names: list[str], failures: int) -> None:
    """`path` parses as XML (a real parser), with one test case per check name and `failures` failed."""
    document = minidom.parse(str(path))
    cases = document.getElementsByTagName("testcase")
    assert [case.getAttribute("name") for case in cases] == names
    failed = [case for case in cases if case.getElementsByTagName("failure")]
    assert len(failed) == failures
    suite = document.getElementsByTagName("testsuite")[0]
    assert (suite.getAttribute("tests"), suite.getAttribute("failures")) == (str(len(names)), str(failures))


def test_compare_prints_deltas_computed_from_the_summaries(capsys):
    first, second = real_summary("before", 1.0, 1), real_summary("after", 1.5, 2, minute=1)
    second["queries"]["trace_lookup"]["p95_ms"] *= 0.5
    for summary in (first, second):
        store.save(summary)
    assert cli.main(["compare", "before", "after", "--json"]) == 0
    rows = {row["figure"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    expected = second["writes"]["rows_per_s"] - first["writes"]["rows_per_s"]
    assert rows["rows_per_s"]["deltas"][1]["abs"] == pytest.approx(expected)
    assert rows["rows_per_s"]["deltas"][1]["pct"] == pytest.approx(50.0)
    assert rows["rows_per_s"]["deltas"][1]["better"]
    trace_lookup = rows["query_p95_ms[trace_lookup]"]["deltas"][1]
    assert trace_lookup["pct"] == pytest.approx(-50.0) and trace_lookup["better"]  # lower is better
    assert cli.main(["compare", "before", "after"]) == 0
    text = capsys.readouterr().out
    assert "before" in text and "after (delta to first)" in text
    rate_line = next(line for line in text.splitlines() if line.startswith("rows_per_s "))
    assert 1 <= expected < 100 and f"+{expected:,.2f} +50.0% (better)" in rate_line  # 2 decimals between 1 and 100


def test_a_difference_between_groups_is_judged_against_their_spreads(capsys):
    """Three groups of three runs: a rate twice as high with ranges apart is beyond the spread; one whose range
    overlaps the first group's is within it, however its median moved."""
    scales = {"base": (0.95, 1.0, 1.05), "doubled": (1.9, 2.0, 2.1), "overlapping": (1.0, 1.04, 1.2)}
    run_id = 0
    for label, group in scales.items():
        for scale in group:
            run_id += 1
            store.save(real_summary(label, scale, run_id, minute=run_id))
    assert cli.main(["compare", "base", "doubled", "overlapping", "--json"]) == 0
    rate = next(row for row in json.loads(capsys.readouterr().out)["rows"] if row["figure"] == "rows_per_s")
    base = real_summary()["writes"]["rows_per_s"]
    assert [value["median"] for value in rate["values"]] == pytest.approx([base, 2 * base, 1.04 * base])
    assert [value["runs"] for value in rate["values"]] == [3, 3, 3]
    doubled, overlapping = rate["deltas"][1:]
    assert doubled["beyond_spread"] is True and doubled["better"]
    assert overlapping["beyond_spread"] is False and overlapping["pct"] == pytest.approx(4.0)
    assert cli.main(["compare", "base", "doubled", "overlapping"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("rows_per_s "))
    assert "+100.0% (better, beyond spread)" in line and "+4.0% (better, within spread)" in line, line


def test_compare_warns_where_settings_differ(capsys):
    first, second = real_summary("a"), real_summary("b", minute=1)
    second["context"]["server"]["settings"]["shared_buffers"] = "1GB"
    second["context"]["indexes"] = ["firehose_spans_start_time"]
    for summary in (first, second):
        store.save(summary)
    assert cli.main(["compare", "a", "b"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: indexes differs: none (a); firehose_spans_start_time (b)",
        "warning: server.settings.shared_buffers differs: 512MB (a); 1GB (b)",
    ]
    assert cli.main(["compare", "a", "nothing-by-that-name"]) == 2


def test_runs_lists_newest_first_with_filters(capsys, runs_store):
    store.save(real_summary("x", run_id=1, minute=1))
    store.save(real_summary("y", run_id=2, minute=2))
    store.save(real_summary("x", run_id=3, minute=3))
    assert cli.main(["runs", "--format", "json"]) == 0
    assert [row["ref"] for row in json.loads(capsys.readouterr().out)] == [
        "20261203T160300-run3",
        "20261203T160200-run2",
        "20261203T160100-run1",
    ]
    assert cli.main(["runs", "--label", "x", "--since", "2026-12-03T16:02", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ref,started_at,label,classes") and len(lines) == 2 and "run3" in lines[1]
    assert cli.main(["runs", "--class", "NoSuchEngineer"]) == 0
    assert "no runs kept" in capsys.readouterr().out
    assert sorted(path.name for path in runs_store.iterdir()) == [
        "20261203T160100-run1.json",
        "20261203T160200-run2.json",
        "20261203T160300-run3.json",
    ]


@pytest.mark.slow
def test_an_unknown_figure_in_a_check_exits_2_before_start(dsn):
    result = run_locust("CopyEngineer", "-u", "1", "--pg-dsn", dsn, "--check", "query_p95_ms[no_such_query] <= 800")
    assert result.returncode == ExitCode.BAD_SETTING
    refusal = result.stderr.strip().splitlines()[-1]
    assert refusal.startswith("firehose: --check \"query_p95_ms[no_such_query] <= 800\": unknown query 'no_such_query'")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_labelled_runs_are_kept_compared_and_checked(dsn, tmp_path, capsys):
    """`firehose run --repeat 2` under one label, a run under another with a check that fails: both kept in the
    store and the database, compared with their deltas, the failed check's exit code, line and JUnit case."""
    small = ["CopyEngineer", "-u", "1", "-r", "1", "--traces-per-engineer", "2", "-t", "60s", "--pg-dsn", dsn]
    repeated = subprocess.run(
        [sys.executable, "-m", "firehose.cli", "run", "--repeat", "2", "--label", "before", "--", *small],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert repeated.returncode == 0, repeated.stdout[-2000:] + repeated.stderr[-2000:]
    assert "before (2 runs)" in repeated.stdout
    after_json, junit = tmp_path / "after.json", tmp_path / "checks.xml"
    result = run_locust(
        *small, "--label", "after", "--summary-json", str(after_json), "--junit", str(junit),
        "--check", "rows_per_s >= 1000000000", "--check", "lost == 0",
    )  # fmt: skip
    assert result.returncode == ExitCode.CHECKS_FAILED, result.stdout[-2000:] + result.stderr[-2000:]
    after = load_summary(after_json)
    rate = after["writes"]["rows_per_s"]
    assert f"check FAIL: rows_per_s >= 1000000000: rows_per_s = {rate:,.3g}" in result.stdout
    assert [check["passed"] for check in after["checks"]] == [True, False, True]
    assert_junit(junit, ["lost == 0", "rows_per_s >= 1000000000", "lost == 0"], 1)

    before = [run.summary for run in store.resolve("before")]
    assert len(before) == 2 and {run.label for run in store.load_all()} == {"before", "after"}
    with psycopg.connect(dsn) as conn:
        kept_there = conn.execute(
            "SELECT summary FROM firehose_run_summaries WHERE run_id = %s", [after["run"]["run_id"]]
        ).fetchone()[0]
    assert kept_there == after

    assert cli.main(["compare", "before", "after", "--json"]) == 0
    rows = {row["figure"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    median = statistics.median(summary["writes"]["rows_per_s"] for summary in before)
    assert rows["rows_per_s"]["values"][0]["median"] == pytest.approx(median)
    assert rows["rows_per_s"]["deltas"][1]["abs"] == pytest.approx(rate - median)
    assert rows["rows_per_s"]["deltas"][1]["pct"] == pytest.approx(100 * (rate - median) / median)

    # the database's copy reads back the same (its references: run<id>)
    assert cli.main(["runs", "--pg-dsn", dsn, "--label", "after", "--format", "json"]) == 0
    assert [row["ref"] for row in json.loads(capsys.readouterr().out)] == [f"run{after['run']['run_id']}"]
    assert cli.main(["compare", "--pg-dsn", dsn, "before", "after", "--json"]) == 0
    from_database = {row["figure"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert from_database["rows_per_s"] == rows["rows_per_s"]


@pytest.mark.slow
def test_the_runs_page_lists_runs_and_compares_them(dsn, runs_store):
    """The Runs page of Locust's web UI, in headless Chromium: both kept runs listed, both ticked, compared."""
    from tests.test_webui import ARTIFACTS, WAIT_S, By, WebDriverWait, chromium, locust_web_ui

    first, second = store.save(real_summary("before", 1.0, 1)), store.save(real_summary("after", 1.25, 2, minute=1))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with locust_web_ui(dsn, log_name="runs_page.log") as url, chromium() as driver:
        driver.get(f"{url}/runs")
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=run]")) == 2)
        listed = driver.find_element(By.ID, "runs").text
        assert first.ref in listed and second.ref in listed and "before" in listed and "after" in listed
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart circle")) == 2
        for box in driver.find_elements(By.CSS_SELECTOR, "input[name=run]"):
            box.click()
        driver.find_element(By.ID, "compare").click()
        wait.until(lambda d: "rows_per_s" in d.find_element(By.ID, "comparison").text)
        rate_row = next(
            row.text
            for row in driver.find_elements(By.CSS_SELECTOR, "#comparison tr")
            if row.text.startswith("rows_per_s ")
        )
        driver.save_screenshot(str(ARTIFACTS / "runs_page.png"))
    # newest first: "after" (1.25 x) is the first column, "before" (1 x) compared with it: -20 %
    after_rate, before_rate = (run.summary["writes"]["rows_per_s"] for run in (second, first))
    assert rate_row.startswith(f"rows_per_s {after_rate:,.0f} {before_rate:,.0f} (")
    assert rate_row.endswith(", -20.0%)")
