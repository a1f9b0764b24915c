"""The disk guard: a run stops writing, with one line, once its database grew past --disk-budget or its local
server's volume fell under --disk-floor; buffered rows are still committed, the summary says why, exit code 4
(STOPPED). A PostgreSQL restart mid-run does not turn it off: it says it is blind, reconnects, and still stops the
run on the budget."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import shutil
import tempfile
import time
from pathlib import Path

import gevent
import pytest

from firehose.run.disk_guard import DiskGuard, floor_bytes, parse_size
from firehose.run.exit_codes import ExitCode
from firehose.tools.headless import locust_command, run_bounded
from tests.conftest import load_summary, run_locust, spans_in

GUARDED_RUN = ("CopyEngineer", "-u", "20", "-r", "20", "-t", "120s", "--continuous")
"""A run only a guard ends (the time limit is a safety net: the guard stops it within seconds)."""
RUN_TIMEOUT_S = 240
DEADLINE_S = 60
"""Bound on waiting for an observed state."""


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


def _free(folder) -> int:
    volume = os.statvfs(folder)
    return volume.f_bavail * volume.f_frsize


def test_the_floor_watches_the_valves_spool_on_its_own_volume(tmp_path):
    """A spool on another volume than the data directory's (tmpfs here) counts in the floor: set between the two
    volumes' free bytes, the floor is crossed on the spool's volume only."""
    spool = Path(tempfile.mkdtemp(prefix="firehose-spool-", dir="/dev/shm"))
    try:
        if os.stat(spool).st_dev == os.stat(tmp_path).st_dev or _free(spool) >= _free(tmp_path):
            pytest.skip("needs a spool volume with less free space than the data directory's")
        floor = (_free(spool) + _free(tmp_path)) // 2
        guard = DiskGuard("", budget=None, floor=str(floor), data_dir=tmp_path, on_crossed=lambda _: None)
        assert guard._crossed(None) is None
        guard.also_watch(spool)
        assert f"free on the volume of {spool}, under --disk-floor" in guard._crossed(None)
        guard.also_watch(tmp_path / "on-the-data-volume")  # the data directory's volume: watched already
        assert guard.also_watched == [spool]
    finally:
        shutil.rmtree(spool)


def _stopped_run(dsn: str, tmp_path, *guard: str) -> tuple[str, dict]:
    summary_path = tmp_path / "summary.json"
    result = run_locust(
        *GUARDED_RUN, "--pg-dsn", dsn, "--summary-json", str(summary_path), *guard, timeout=RUN_TIMEOUT_S
    )
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.STOPPED, output[-4000:]
    return output, load_summary(summary_path)


@pytest.mark.slow
def test_a_spent_disk_budget_stops_the_run_and_keeps_every_row_through_a_restart(own_postgres, tmp_path):
    """The server restarts (pg_ctl restart -m fast) as soon as the first rows arrive, well before the budget is
    spent: the guard is blind for the restart, reconnects, and the budget still stops the run."""
    server = own_postgres()
    summary_path = tmp_path / "summary.json"
    command = locust_command(
        *GUARDED_RUN, "--pg-dsn", server.dsn, "--summary-json", str(summary_path), "--disk-budget", "40MB"
    )
    with tempfile.TemporaryFile("w+") as log:
        run = gevent.spawn(run_bounded, command, RUN_TIMEOUT_S, log, log)
        deadline = time.monotonic() + DEADLINE_S
        while not spans_in(server.dsn):
            assert not run.dead and time.monotonic() < deadline, "no row arrived before the restart"
            gevent.sleep(0.1)
        server.restart("fast")
        returncode, timed_out = run.get()
        log.seek(0)
        output = log.read()
    assert not timed_out and returncode == ExitCode.STOPPED, output[-4000:]
    [line] = [line for line in output.splitlines() if "firehose stops the run:" in line]
    reason = line.split("firehose stops the run: ", 1)[1]
    assert reason.startswith("disk budget spent: the database grew by ")
    assert reason.endswith(" since the run started, past --disk-budget 40.0 MB")
    summary = load_summary(summary_path)
    assert summary["run"]["stopped_by"] == reason and summary["run"]["verdict"] == "STOPPED"
    # The guard said it lost the database, and watched again: the restart came before the budget was spent.
    assert "disk guard blind: " in output and "disk guard watching again after " in output, output[-4000:]
    guard = summary["disk_guard"]
    assert guard["reconnects"] >= 1 and guard["blind_s"] > 0 and not guard["blind_at_end"], guard
    assert guard["growth_bytes"] > guard["budget_bytes"] == parse_size("40MB"), guard
    assert "disk guard: lost the database " in output  # the summary's line
    events = summary["events"]
    # What the engineers had handed over was committed after the stop: nothing lost, nothing left buffered.
    assert events["lost"] == 0 and events["failed"] == 0 and events["in_database"] == events["generated"] > 0
    assert events["duplicates"] == 0
    assert events["in_database"] * 2_000 > parse_size("40MB")  # the growth that tripped it: ~2.6 KB a row on disk


@pytest.mark.slow
def test_a_local_servers_volume_under_the_floor_stops_the_run(dsn, tmp_path):
    """The session's server is on this machine: a floor of 99 % of its volume is crossed at the first look."""
    output, summary = _stopped_run(dsn, tmp_path, "--disk-floor", "99%")
    reason = summary["run"]["stopped_by"]
    assert reason.startswith("disk floor reached: ") and "under --disk-floor 99% (" in reason
    assert f"firehose stops the run: {reason}" in output
    assert summary["events"]["lost"] == 0
