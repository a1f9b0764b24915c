"""The disk guard: a run stops writing, with one line, once its database grew past --disk-budget or its local
server's volume fell under --disk-floor; buffered rows are still committed, the summary says why, exit code 1."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import pytest

from firehose.run.disk_guard import floor_bytes, parse_size
from tests.conftest import load_summary, run_locust


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("500MB", 500 * 1024**2), ("2 GB", 2 * 1024**3), ("1.5g", int(1.5 * 1024**3)), ("8kB", 8192)],
)
def test_sizes_parse_in_postgresqls_units(text, size):
    assert parse_size(text) == size


def test_a_floor_may_be_a_share_of_the_volume():
    assert floor_bytes("5%", 200 * 1024**3) == 10 * 1024**3
    assert floor_bytes("1GB", 200 * 1024**3) == 1024**3
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def _stopped_run(dsn: str, tmp_path, *guard: str) -> tuple[str, dict]:
    summary_path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "20", "-r", "20", "-t", "120s", "--continuous", "--pg-dsn", dsn,
        "--summary-json", str(summary_path), *guard, timeout=240,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    return output, load_summary(summary_path)


@pytest.mark.slow
def test_a_spent_disk_budget_stops_the_run_and_keeps_every_row(dsn, tmp_path):
    output, summary = _stopped_run(dsn, tmp_path, "--disk-budget", "20MB")
    [line] = [line for line in output.splitlines() if "firehose stops the run:" in line]
    reason = line.split("firehose stops the run: ", 1)[1]
    assert reason.startswith("disk budget spent: the database grew by ")
    assert reason.endswith(" since the run started, past --disk-budget 20.0 MB")
    assert summary["run"]["stopped_by"] == reason
    events = summary["events"]
    # What the engineers had handed over was committed after the stop: nothing lost, nothing left buffered.
    assert events["lost"] == 0 and events["failed"] == 0 and events["in_database"] == events["generated"] > 0
    assert events["in_database"] * 2_000 > parse_size("20MB")  # the growth that tripped it: ~2.6 KB a row on disk


@pytest.mark.slow
def test_a_local_servers_volume_under_the_floor_stops_the_run(dsn, tmp_path):
    """The session's server is on this machine: a floor of 99 % of its volume is crossed at the first look."""
    output, summary = _stopped_run(dsn, tmp_path, "--disk-floor", "99%")
    reason = summary["run"]["stopped_by"]
    assert reason.startswith("disk floor reached: ") and "under --disk-floor 99% (" in reason
    assert f"firehose stops the run: {reason}" in output
    assert summary["events"]["lost"] == 0
