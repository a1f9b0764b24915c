"""docs/extending.md's example strategy, run as written: its writer, its engineer and its row of the table, added to
firehose's own locustfile, write a fixed volume through a real Locust run that reconciles exactly."""

import re
import subprocess
import sys

import pytest

from firehose.tools.headless import LOCUSTFILE, REPO, run_bounded
from tests.conftest import load_summary

pytestmark = pytest.mark.slow

PAGE = REPO / "docs" / "extending.md"
USERS, TRACES = 3, 5


def code_blocks() -> list[str]:
    """The page's Python code blocks, in order: the writer, the engineer, the row."""
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def example_locustfile() -> str:
    """firehose's locustfile, preceded by the page's three pieces (the row appended to the table)."""
    writer, engineer, table = code_blocks()
    [row] = [line.strip().rstrip(",") for line in table.splitlines() if line.strip().startswith("Strategy(")]
    return "\n".join(
        [
            "import locust  # noqa: F401  (gevent patches first)",
            "from firehose import strategies",
            "from firehose.strategies import Strategy",
            writer,
            engineer,
            f"strategies.STRATEGIES.append({row})",
            LOCUSTFILE.read_text(),
        ]
    )


def test_the_page_has_the_three_pieces():
    writer, engineer, table = code_blocks()
    assert "class AsyncCommitCopyWriter(CopyWriter)" in writer
    assert "writer_class = AsyncCommitCopyWriter" in engineer
    assert "    Strategy(AsyncCommitCopyEngineer, " in table


def test_the_example_strategy_runs_and_reconciles(dsn, tmp_path):
    locustfile, summary_path, log_path = tmp_path / "locustfile.py", tmp_path / "summary.json", tmp_path / "log"
    locustfile.write_text(example_locustfile())
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--list"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "AsyncCommitCopyEngineer" in listed.stdout.split()
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "AsyncCommitCopyEngineer", "--headless",
        "--only-summary", "-u", str(USERS), "-r", str(USERS), "--traces-per-engineer", str(TRACES),
        "--async-copy-batch-size", "200", "--pg-dsn", dsn, "--summary-json", str(summary_path),
    ]  # fmt: skip
    with log_path.open("w") as log:
        returncode, timed_out = run_bounded(command, 180, log, subprocess.STDOUT)
    assert not timed_out and returncode == 0, log_path.read_text()[-4000:]
    summary = load_summary(summary_path)
    assert set(summary["writes"]["by_class"]) == {"AsyncCommitCopyEngineer"}  # its rows, under its name
    events = summary["events"]
    assert events["generated"] > USERS * TRACES * 15  # ~19 events per trace
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0
    assert events["acknowledged"] == events["in_database"] == events["generated"]
