"""The analysts' replica (firehose.run.replica, services.replica): `--replica` routes the analysts to a streaming
standby of the embedded server and measures its lag and visible freshness; an `--analyst-dsn` standby of another
system is refused; a replica that goes away mid-run costs no written row and ends the run with REPLICA_LOST.

The runs wait on observed state: the analysts' backends on the replica, rows arriving, the line that says the replica
went away; never on time.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import gevent
import psycopg
import pytest

from firehose.admin import reset
from firehose.run import replica
from firehose.run.exit_codes import ExitCode
from firehose.run.preflight import Refused
from firehose.tools.headless import REPO, locust_command
from services.ports import free_port
from services.postgres import EmbeddedPostgres
from services.replica import SLOT, StreamingReplica, default_replica_dir, wait_caught_up
from tests.conftest import TEST_SETTINGS, _scratch_root, load_summary, run_locust, spans_in
from users.analyst import APPLICATION_NAME

RUN_TIMEOUT_S = 240
DEADLINE_S = 90
"""Bound on waiting for an observed state (a busy machine builds two worker processes' pools first)."""
ANALYSTS_ON = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


def test_lsn_and_percentiles():
    assert replica.lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert replica.lsn(None) is None
    figures = replica.percentiles([float(value) for value in range(1, 101)])
    assert (figures["count"], figures["p50"], figures["p95"], figures["max"]) == (100, 51.0, 96.0, 100.0)
    assert replica.percentiles([])["p95"] is None


def test_the_summary_says_when_the_replica_went_away_or_stayed_behind():
    watch = replica.ReplicaWatch("host=primary", "host=standby password=s3cret", 1, "--analyst-dsn")
    watch.went_away = {"at_s": 4.2, "error": "connection refused"}
    watch.end = {"caught_up": False, "waited_s": 30.0, "behind_bytes": 3_000_000, "timeout_s": 30}
    section = watch.report()
    assert "s3cret" not in str(section) and section["lag"]["replay_ms"]["p95"] is None
    text = "\n".join(replica.render(section))
    assert "REPLICA WENT AWAY 4.2 s into the run: connection refused" in text
    assert "NOT caught up after 30.0 s, 3.0 MB behind" in text


@pytest.mark.parametrize("given", [{"postgres": "host=db"}, {"analysts": "host=standby"}])
def test_replica_needs_the_embedded_server_and_is_the_analysts_address(given):
    with pytest.raises(Refused) as refusal:
        replica.check_options(argparse.Namespace(replica=True), given)
    assert refusal.value.option == "replica"
    replica.check_options(argparse.Namespace(replica=False), given)  # without --replica, nothing to refuse


@pytest.fixture
def scratch() -> Path:
    """A directory the server's user may enter, removed after the test (not under pytest's tmp_path, whose root
    another pytest session of the machine may close to other users at any time)."""
    root = _scratch_root("firehose-replica-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _analysts_on(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            return conn.execute(ANALYSTS_ON, [APPLICATION_NAME]).fetchone()[0]
    except psycopg.OperationalError:
        return 0


def _pids_under(path: Path) -> list[int]:
    """Processes whose command line names `path` (a server's postmaster and its children name their data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def _server_processes(data_dir: Path) -> set[int]:
    """A running server's postmaster (its postmaster.pid) and its children, whose command lines are their titles."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if parent == postmaster:
                children.add(int(entry.name))
    return {postmaster, *children}


def _alive(pid: int) -> bool:
    """Running (not a zombie awaiting its parent)."""
    try:
        return (Path(f"/proc/{pid}/stat")).read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Run:
    """A headless Locust run in the background, its output in a file, killed if the test fails first."""

    def __init__(self, command: list[str]) -> None:
        self.output = tempfile.TemporaryFile("w+")  # noqa: SIM115  (read while the run goes on, closed with it)
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_for(self, what: str, condition) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{what} not observed:\n{self.log()[-4000:]}")
            gevent.sleep(0.1)

    def log(self) -> str:
        self.output.seek(0)
        return self.output.read()

    def end(self) -> int:
        try:
            return self.process.wait(RUN_TIMEOUT_S)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _lines(log: str) -> str:
    """The run's own lines (not Locust's stats tables), for an assertion's message."""
    table = (" " * 8, "SQL", "COPY", "-", "Type")
    return "\n".join(line for line in log.splitlines() if not line.startswith(table))[-4000:]


def _replica_run(
    primary: EmbeddedPostgres, standby: EmbeddedPostgres, summary: Path, *volume: str, processes: int = 0
) -> Run:
    command = locust_command(
        "CopyEngineer", "Analyst", "-u", "6", "-r", "6", "--analysts", "2", "--copy-batch-size", "200", *volume,
        "--embedded-port", str(primary.port), "--embedded-data-dir", str(primary.data_dir), "--replica",
        "--replica-port", str(standby.port), "--replica-data-dir", str(standby.data_dir),
        "--summary-json", str(summary), processes=processes,
    )  # fmt: skip
    return Run(command)


@pytest.mark.slow
def test_the_analysts_query_the_replica_which_catches_up_and_stops_with_the_run(own_postgres, scratch, tmp_path):
    primary = own_postgres(start=False)
    standby, summary_path = EmbeddedPostgres(scratch / "standby", free_port()), tmp_path / "summary.json"
    run = _replica_run(
        primary, standby, summary_path, "--traces-per-engineer", "10", "--engineer-rate", "40", "-t", "120s",
        processes=2,
    )  # fmt: skip
    run.wait_for("the analysts' backends on the replica", lambda: _analysts_on(standby.dsn) > 0)
    assert _analysts_on(primary.dsn) == 0  # the writers' server serves no analyst
    replica_processes = _server_processes(standby.data_dir)  # its postmaster, startup, walreceiver, backends
    assert len(replica_processes) >= 3, replica_processes
    run.wait_for("rows on the primary", lambda: spans_in(primary.dsn) > 0)
    assert _analysts_on(primary.dsn) == 0
    returncode = run.end()
    log = run.log()
    assert returncode == ExitCode.OK, _lines(log)
    summary = load_summary(summary_path)
    assert summary["run"]["verdict"] == "OK" and summary["events"]["lost"] == 0, summary["events"]
    assert summary["queries"] and all(query["failures"] == 0 for query in summary["queries"].values())
    section = summary["replica"]
    assert section["how"] == "--replica" and section["went_away"] is None
    assert section["backup"]["bytes"] > 0  # made for this run: its directory did not exist
    assert section["hot_standby_feedback"] == "off"
    assert section["lag"]["replay_ms"]["count"] > 0 and section["lag"]["source"] == "pg_stat_replication"
    fresh = section["visible_freshness"]
    assert fresh["samples"] > 0 and fresh["p95_ms"] is not None and fresh["unseen_at_end"] == 0, fresh
    assert section["end"]["caught_up"] and section["end"]["behind_bytes"] == 0, section["end"]
    assert "visible on the replica after commit" in log and "replica at the end: caught up" in log
    assert not _pids_under(standby.data_dir), "the replica's postmaster outlived the run"
    assert not [pid for pid in replica_processes if _alive(pid)], "a process of the replica outlived the run"


@pytest.mark.slow
def test_an_analyst_dsn_standby_of_another_system_is_refused(dsn, scratch):
    other = EmbeddedPostgres(scratch / "other", free_port(), settings=TEST_SETTINGS)  # initdb: a system of its own
    other.start()
    standby = StreamingReplica(other, free_port(), scratch / "other-standby")
    try:
        standby.start()
        assert replica.is_replica_of(other.dsn, standby.dsn)  # of its own primary: measured as a replica
        result = run_locust("CopyEngineer", "Analyst", "-u", "2", "--pg-dsn", dsn, "--analyst-dsn", standby.dsn)
    finally:
        standby.stop()
        other.stop()
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.BAD_SETTING, output[-3000:]
    assert "Traceback" not in output and "Uncaught exception" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if line.startswith("firehose:")]
    assert line.startswith("firehose: --analyst-dsn") and "is a standby of another system" in line, line


@pytest.mark.slow
def test_a_replica_stopped_mid_run_loses_no_row_and_the_run_says_it_went_away(own_postgres, scratch, tmp_path):
    primary = own_postgres(start=False)
    standby, summary_path = EmbeddedPostgres(scratch / "standby", free_port()), tmp_path / "summary.json"
    run = _replica_run(
        primary, standby, summary_path, "--traces-per-engineer", "20", "--engineer-rate", "40", "-t", "120s"
    )
    run.wait_for("the analysts' backends on the replica", lambda: _analysts_on(standby.dsn) > 0)
    run.wait_for("rows on the primary", lambda: spans_in(primary.dsn) > 0)
    standby._pg_ctl("stop", "-m", "immediate")
    run.wait_for("the line that says the replica went away", lambda: "replica went away" in run.log())
    returncode = run.end()
    log = run.log()
    assert returncode == ExitCode.REPLICA_LOST, _lines(log)
    summary = load_summary(summary_path)
    assert summary["run"]["verdict"] == "OK" and summary["events"]["lost"] == 0, summary["events"]
    assert sum(query["failures"] for query in summary["queries"].values()) > 0, summary["queries"]
    section = summary["replica"]
    assert section["went_away"] is not None and not section["end"]["caught_up"], section
    assert "REPLICA WENT AWAY" in log and "Traceback" not in log, _lines(log)


def _has_slot(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [SLOT]).fetchone() is not None


@pytest.mark.slow
def test_the_replica_is_reused_rebuilt_past_an_orphaned_slot_and_reset_with_its_primary(own_postgres):
    """Between runs, without a run: the replica's directory is kept and reused (no new backup), replaying through
    its slot what the primary wrote while it was down; its directory gone, the slot left behind is an orphan,
    dropped before a new replica is made (pg_basebackup's -C would refuse an existing slot); `firehose reset`
    removes the directory and the slot (which would hold back the primary's WAL)."""
    primary, port = own_postgres(), free_port()
    label = "written while the replica was down"
    first = StreamingReplica(primary, port)
    try:
        first.start()
        assert first.backup is not None and first.data_dir == default_replica_dir(primary.data_dir)
    finally:
        first.stop()
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (1, %s)", [label])
    again = StreamingReplica(primary, port)
    try:
        again.start()
        assert again.backup is None, "a standby of this primary was rebuilt instead of reused"
        assert wait_caught_up(primary.dsn, again.dsn, DEADLINE_S) == 0
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM firehose_runs WHERE label = %s", [label]).fetchone()[0] == 1
    finally:
        again.stop()
    shutil.rmtree(again.data_dir)
    assert _has_slot(primary.dsn), "the orphan to drop"
    rebuilt = StreamingReplica(primary, port)
    try:
        rebuilt.start()
        assert rebuilt.backup is not None
    finally:
        rebuilt.stop()
    primary.stop()
    reset.empty(primary.data_dir)
    assert not rebuilt.data_dir.exists()
    primary.start()
    assert not _has_slot(primary.dsn), "firehose reset left the replica's slot on the primary"
