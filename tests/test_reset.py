"""`firehose reset` empties or removes an embedded data directory, and refuses while a server runs on it."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import logging
import subprocess
import sys

import psycopg
import pytest

from firehose.admin import reset
from firehose.run import disk_guard
from services.postgres import EmbeddedPostgres, apply_schema, table_layout
from tests.conftest import REPO

pytestmark = pytest.mark.slow

MB = 1024**2


@pytest.fixture
def data_dir(own_postgres):
    """An embedded data directory of the test's own, holding one run's bookkeeping and a row; its server stopped."""
    server = own_postgres()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        run_id = conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (1, 'test') RETURNING run_id").fetchone()[
            0
        ]
        conn.execute(
            "INSERT INTO firehose_writer_keys (writer_key, run_id) VALUES (nextval('firehose_writer_key'), %s)",
            [run_id],
        )
        conn.execute(
            "INSERT INTO quarantine (run_id, table_name, reason, row_data) VALUES (%s, 'spans', 'x', 'y')", [run_id]
        )
    server.stop()
    return server


def _reset(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "firehose.cli", "reset", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _rows(server: EmbeddedPostgres) -> int:
    with psycopg.connect(server.start(), autocommit=True) as conn:
        tables = reset.TABLES
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables)


def test_reset_empties_what_runs_left(data_dir):
    result = _reset("--embedded-data-dir", str(data_dir.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"firehose reset: emptied {data_dir.data_dir}: ")
    assert not data_dir.running()  # the server it started for the TRUNCATE is stopped again
    assert _rows(data_dir) == 0


def test_reset_layout_makes_the_tables_anew_in_it(data_dir):
    """The fix a run in the other layout names: `firehose reset --layout partitioned`."""
    result = _reset("--embedded-data-dir", str(data_dir.data_dir), "--layout", "partitioned")
    assert result.returncode == 0, result.stderr
    assert "its telemetry tables partitioned:" in result.stdout
    with psycopg.connect(data_dir.start(), autocommit=True) as conn:
        assert table_layout(conn) == "partitioned"
    apply_schema(data_dir.dsn, "partitioned")  # what a run with --layout partitioned does: no refusal now


def test_reset_gives_back_the_wal(data_dir):
    """A heavy run leaves GBs of WAL segments (renamed for reuse): the reset deletes them, not only the rows."""
    wal = data_dir.data_dir / "pg_wal"
    with psycopg.connect(data_dir.start(), autocommit=True) as conn:  # ~110 MB of WAL
        conn.execute("CREATE TABLE filler AS SELECT repeat(md5(i::text), 32) AS x FROM generate_series(1, 100000) i")
        conn.execute("DROP TABLE filler")
    data_dir.stop()
    before = disk_guard.directory_size(wal)
    assert before > 80 * MB
    assert _reset("--embedded-data-dir", str(data_dir.data_dir)).returncode == 0
    assert disk_guard.directory_size(wal) <= 32 * MB  # reset.SMALL_WAL's min_wal_size


def test_reset_refuses_while_a_server_runs_on_the_data_dir(data_dir):
    data_dir.start()
    pid = reset.running_pid(data_dir.data_dir)
    result = _reset("--embedded-data-dir", str(data_dir.data_dir), "--remove")
    assert result.returncode == 2
    assert result.stderr == (
        f"firehose reset: the embedded PostgreSQL in {data_dir.data_dir} is running (pid {pid}) for another run: "
        f"end that run first (a server a killed run left behind: kill {pid})\n"
    )
    assert (data_dir.data_dir / "PG_VERSION").exists() and data_dir.running()


def test_reset_remove_deletes_the_data_dir_and_its_log(data_dir):
    assert data_dir.log_file.exists()
    result = _reset("--embedded-data-dir", str(data_dir.data_dir), "--remove")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"firehose reset: removed {data_dir.data_dir} (")
    assert not data_dir.data_dir.exists() and not data_dir.log_file.exists()
    assert _reset("--embedded-data-dir", str(data_dir.data_dir)).stdout.endswith(": nothing to do\n")


def test_a_large_data_dir_is_named_with_the_command_that_empties_it(data_dir, caplog):
    size = disk_guard.directory_size(data_dir.data_dir)
    with caplog.at_level(logging.WARNING, logger="firehose"):
        disk_guard.warn_if_large(data_dir.data_dir, threshold=size + 1)
        assert not caplog.records
        disk_guard.warn_if_large(data_dir.data_dir, threshold=size - 1)
    [record] = caplog.records
    assert f"firehose reset --embedded-data-dir {data_dir.data_dir}" in record.getMessage()
