"""Shared fixtures: a real PostgreSQL of the tests' own (embedded, on a free loopback port)."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from firehose.database import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    """An embedded PostgreSQL started for this test session, stopped (and its data removed) after it."""
    root = Path(tempfile.mkdtemp(prefix="firehose-test-"))
    os.chmod(root, 0o755)  # the server runs as another user when the tests run as root
    server = EmbeddedPostgres(root / "data", port=free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dsn(postgres):
    """The test server's DSN, its telemetry tables emptied."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE spans, metrics, logs, quarantine")
    return postgres.dsn


def run_locust(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """A real headless Locust run of our locustfile, bounded in time; its own master port when distributed.

    It runs in a process group of its own, killed whole (forked workers included) on timeout.
    """
    command = [sys.executable, "-m", "locust", "-f", str(REPO / "locustfile.py"), "--headless", "--only-summary"]
    if "--processes" in args:
        port = str(free_port())
        command += ["--master-bind-port", port, "--master-port", port]
    with subprocess.Popen(
        [*command, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"locust did not finish in {timeout} s:\n{stdout[-2000:]}\n{stderr[-4000:]}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first, then the slow end-to-end ones: a quick failure is reported quickly."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
