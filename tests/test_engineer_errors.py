"""An engineer whose telemetry raises: Locust reports the error (exit code 5, FAILURES), the fixed-volume run still
ends by itself, and what the writers were handed reconciles."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import subprocess
import sys

import pytest

from firehose.run.exit_codes import ExitCode
from tests.conftest import REPO, load_summary

pytestmark = pytest.mark.slow


def test_a_fixed_volume_run_with_a_failing_engineer_ends_by_itself(dsn, tmp_path):
    path = tmp_path / "summary.json"
    command = [
        *(sys.executable, "-m", "locust", "-f", "tests/locustfiles/failing_engineer.py", "--headless"),
        *("CopyEngineer", "FailingEngineer", "-u", "4", "-r", "4", "-t", "5m", "--traces-per-engineer", "10"),
        *("--pg-dsn", dsn, "--summary-json", str(path), "--only-summary"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert "all 4 engineers have emitted their telemetry: ending the run" in output, output[-3000:]
    assert "--run-time limit reached" not in output
    assert result.returncode == ExitCode.FAILURES, output[-3000:]
    assert output.count("ValueError: this engineer's third trace cannot be composed") >= 2  # both failing engineers
    events = load_summary(path)["events"]
    assert events["in_database"] == events["acknowledged"] > 0
    assert events["lost"] == 0 and events["duplicates"] == 0  # the failing traces never reached a writer
