"""Every exit path stops what the run started: Ctrl-C mid-run and a failed test start leave no embedded
PostgreSQL, pgBouncer or Redis behind, and the next run on the same data directory finds no stale lock."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from firehose.run.exit_codes import ExitCode
from firehose.tools.headless import locust_command
from services.postgres import EmbeddedPostgres
from tests.conftest import REPO, load_summary

pytestmark = pytest.mark.slow

WAIT_S = 90
STARTED = re.compile(r"(pgbouncer|redis) on .*?127\.0\.0\.1[ :](?:port=)?(\d+)")


@pytest.fixture
def embedded(own_postgres):
    """A data directory (copied from the session's template) and port of this test's own for the run's embedded
    PostgreSQL; its server not started: the run starts it."""
    return own_postgres(start=False)


def _launch(server: EmbeddedPostgres, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    command = locust_command(*args, "--embedded-data-dir", str(server.data_dir), "--embedded-port", str(server.port))
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip


def _wait(process: subprocess.Popen, log: Path) -> int:
    try:
        return process.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"the run did not end in {WAIT_S} s:\n{log.read_text()[-3000:]}") from None


def _rows(server: EmbeddedPostgres) -> int:
    try:
        with psycopg.connect(server.dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT (SELECT count(*) FROM spans) + (SELECT count(*) FROM logs)").fetchone()[0]
    except psycopg.Error:  # not up yet, or its schema not there yet
        return 0


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_mid_run_stops_every_server_and_the_next_run_starts_clean(embedded, tmp_path):
    log, summary = tmp_path / "interrupted.log", tmp_path / "interrupted.json"
    run = _launch(
        embedded, "PooledEngineer", "StreamEngineer", "-u", "4", "-r", "4", "-t", "5m", "--continuous",
        "--summary-json", str(summary), log=log,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while _rows(embedded) == 0:  # writing through both services: everything the run starts is up
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    _wait(run, log)

    output = log.read_text()
    started = {name: int(port) for name, port in STARTED.findall(output)}
    assert started.keys() == {"pgbouncer", "redis"}, output[-3000:]
    assert not [name for name, port in started.items() if _listening(port)], output[-3000:]
    assert not embedded.running(), output[-3000:]
    interrupted = load_summary(summary)  # the interrupted run still drained and reconciled what it had
    assert interrupted["events"]["lost"] == 0 and interrupted["events"]["in_database"] > 0

    again = tmp_path / "again.json"
    second = _launch(
        embedded, "CopyEngineer", "-u", "2", "-r", "2", "--traces-per-engineer", "10", "--summary-json", str(again),
        log=tmp_path / "again.log",
    )  # fmt: skip
    assert _wait(second, tmp_path / "again.log") == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert load_summary(again)["events"]["lost"] == 0
    assert not embedded.running()
    # The server's user got its data directory and log file, never the folder they are in (it may be /tmp).
    assert embedded.data_dir.parent.stat().st_uid == os.getuid()


def test_a_failed_test_start_is_one_line_and_stops_the_embedded_server(embedded, tmp_path):
    broken = embedded.data_dir.parent / "bin"  # pgbouncer runs as the server's user: a folder it may enter
    broken.mkdir()
    (broken / "pgbouncer").write_text("#!/bin/sh\necho 'pgbouncer: cannot open ini file' >&2\nexit 1\n")
    (broken / "pgbouncer").chmod(0o755)  # installed but broken: found by the pre-flight check, fails at start
    log = tmp_path / "failed.log"
    run = _launch(
        embedded, "PooledEngineer", "-u", "2", "-r", "2", "-t", "5m", log=log,
        env={**os.environ, "PATH": f"{broken}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert _wait(run, log) == ExitCode.STOPPED
    output = log.read_text()
    stops = [line for line in output.splitlines() if "firehose stops the run" in line]
    assert len(stops) == 1 and stops[0].endswith(
        "firehose stops the run: the run could not start: pgbouncer exited with code 1: pgbouncer: cannot open ini file"
    ), output[-3000:]
    assert "Traceback" not in output and "Uncaught exception" not in output, output[-3000:]
    assert not embedded.running()


KILLED_CLEANUP_S = 10
"""The issue's bound: what a master killed with SIGKILL started is gone this long after it died."""


def test_kill_9_of_the_master_leaves_no_process_or_directory_behind(embedded, tmp_path):
    """pgBouncer and Redis die with the master; the watchdog stops the embedded server (started through pg_ctl, not
    our child) and removes the services' temporary directories (in a TMPDIR of the test's own, to look at)."""
    scratch = embedded.data_dir.parent / "tmp"  # the services' users may enter it (conftest's scratch root)
    scratch.mkdir()
    log = tmp_path / "killed.log"
    run = _launch(
        embedded, "PooledEngineer", "StreamEngineer", "-u", "4", "-r", "4", "-t", "5m", "--continuous", log=log,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while _rows(embedded) == 0:  # writing through both services: everything the run starts is up
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    started = {name: int(port) for name, port in STARTED.findall(log.read_text())}
    assert started.keys() == {"pgbouncer", "redis"} and len(list(scratch.iterdir())) == 2, log.read_text()[-3000:]
    redis_title = f"redis-server 127.0.0.1:{started['redis']}"  # it renames itself: no directory in its title
    servers = {pid for pid in _processes_with(str(embedded.data_dir.parent)) if pid != run.pid}
    servers |= set(_processes_with(redis_title))  # the postmaster, pgbouncer, redis-server
    # not a backend the postmaster is forking at this moment: until it sets its title, it has the postmaster's
    servers = {pid for pid in servers if _parent(pid) not in servers}
    owner = embedded.data_dir.stat().st_uid  # as root: the server's unprivileged user, for every one
    assert len(servers) == 3 and {Path(f"/proc/{pid}").stat().st_uid for pid in servers} == {owner}, servers
    os.kill(run.pid, signal.SIGKILL)  # the master alone: nothing it could do on its way out
    run.wait()
    killed_at = time.monotonic()

    def left() -> list[str]:
        return [
            *(f"{name} on port {port}" for name, port in started.items() if _listening(port)),
            *(["the embedded PostgreSQL"] if embedded.running() else []),
            *(f"process {pid}" for pid in _processes_with(str(embedded.data_dir.parent))),
            *(f"process {pid}" for pid in _processes_with(redis_title)),
            *(f"watchdog {pid}" for pid in _processes_with(f"services.watchdog {run.pid}")),
            *(path.name for path in scratch.iterdir()),
        ]

    while (leftovers := left()) and time.monotonic() - killed_at < KILLED_CLEANUP_S:
        time.sleep(0.1)
    assert not leftovers, f"left {time.monotonic() - killed_at:.1f} s after the kill: {leftovers}"


def _parent(pid: int) -> int | None:
    """The parent's pid of `pid`, None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def _processes_with(word: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `word`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if state != "Z" and word in command and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found
