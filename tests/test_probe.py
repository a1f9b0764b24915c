"""The migration-lock probe: a held lock makes it fail by lock_timeout; a run's summary reports what it saw."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json

import psycopg
import pytest

from firehose.run.probe import MigrationProbe, merge_probe_reports, render_probe
from tests.conftest import load_summary, run_locust

pytestmark = pytest.mark.slow


def test_a_lock_held_by_a_writer_fails_the_probe_by_lock_timeout(dsn):
    probe = MigrationProbe(dsn, interval_s=3600, lock_timeout_ms=100)
    probe.close()  # its greenlet never ran: the attempts below are ours
    with psycopg.connect(dsn) as writer:
        writer.execute("LOCK TABLE metrics IN ROW EXCLUSIVE MODE")  # what an open INSERT transaction holds
        probe.try_once("metrics")
        probe.try_once("logs")  # another table: not blocked
        writer.rollback()
    report = merge_probe_reports([probe.report()])
    assert report["attempts"] == 2 and report["failed"] == 1 and report["failures"] == {"lock_timeout": 1}
    assert report["lock_wait_ms"]["count"] == 1 and report["connect_ms"]["count"] == 2
    assert "1 failed (lock_timeout 1)" in render_probe(report)
    (_, failed_on, no_wait, failure), (_, got_on, wait, no_failure) = report["timeline"]  # by time
    assert (failed_on, no_wait, failure) == ("metrics", None, "lock_timeout")
    assert (got_on, no_failure) == ("logs", None) and wait == pytest.approx(report["lock_wait_ms"]["max"], abs=1e-3)


def test_the_probe_reaches_the_summary_of_a_run(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "NaiveEngineer", "-u", "4", "-r", "4", "-t", "30s", "--traces-per-engineer", "10", "--pg-dsn", dsn,
        "--summary-json", str(path), "--migration-probe", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(path)  # the schema holds the probe's timeline too
    probe = summary["migration_probe"]
    assert probe["attempts"] >= 1  # the first at test start, then every 0.2 s until the drain
    assert probe["attempts"] == probe["failed"] + probe["lock_wait_ms"]["count"] == len(probe["timeline"])
    assert probe["lock_timeout_ms"] == 2000 and probe["interval_s"] == 0.2
    assert "migration probe (LOCK TABLE ... ACCESS EXCLUSIVE every 0.2 s" in result.stdout
    assert summary["events"]["lost"] == 0


def test_without_the_option_there_is_no_probe(dsn, tmp_path):
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "2", "-r", "2", "-t", "30s", "--traces-per-engineer", "5", "--pg-dsn", dsn,
        "--summary-json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(path.read_text())["migration_probe"] is None
    assert "migration probe" not in result.stdout
