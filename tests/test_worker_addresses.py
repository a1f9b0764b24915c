"""A worker's own --pg-dsn wins over the master's; a worker without one writes where the master says.

A real master and two real workers (separate `locust` processes, as on separate machines): the master and
one worker reach the test's PostgreSQL over TCP, the other worker over its Unix socket. Each writing process's
writer key records the name and client address of the connection that drew it (`firehose_writer_keys`), so
the test reads which address each process used after the run, and the run reconciles.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import subprocess
import sys
import tempfile

import psycopg
import pytest

from firehose.tools.headless import LOCUSTFILE, run_bounded
from services.ports import free_port
from tests.conftest import REPO, load_summary

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 180
"""Bound on the whole distributed run: it writes ~11k rows, a few seconds of work."""


def _worker(port: int, *args: str, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-port", str(port), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_workers_own_dsn_wins_over_the_masters(postgres, dsn, tmp_path):
    socket_dsn = f"host={postgres.socket_dir} port={postgres.port} user=postgres dbname=firehose"
    port, summary = free_port(), tmp_path / "summary.json"
    master = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "CopyEngineer", "--master", "--headless",
        "--only-summary", "--expect-workers", "2", "--master-bind-port", str(port), "-u", "6", "-r", "6",
        "-t", "120s", "--pg-dsn", dsn, "--summary-json", str(summary),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as logs:
        workers = [_worker(port, "--pg-dsn", socket_dsn, log=logs), _worker(port, log=logs)]
        try:
            returncode, timed_out = run_bounded(master, RUN_TIMEOUT_S, logs, subprocess.STDOUT)
            for worker in workers:
                worker.wait(timeout=60)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        logs.seek(0)
        output = logs.read()
    assert not timed_out and returncode == 0, output[-4000:]
    result = load_summary(summary)
    assert result["events"]["lost"] == 0 and result["events"]["duplicates"] == 0
    assert result["events"]["acknowledged"] == result["events"]["in_database"] > 0
    with psycopg.connect(dsn) as conn:
        used = conn.execute(
            "SELECT application_name, host(client_addr) FROM firehose_writer_keys WHERE run_id = %s ORDER BY 2",
            [result["run"]["run_id"]],
        ).fetchall()
    # Two writing processes: one over TCP from 127.0.0.1 (the master's DSN), one over the socket (its own).
    assert [address for _name, address in used] == ["127.0.0.1", None], used
    assert all(name.startswith("firehose worker ") for name, _address in used), used
