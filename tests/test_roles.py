"""`firehose roles`: least-privilege writer and analyst roles, and a real run under them that reconciles."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)


import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from firehose.cli import main
from tests.conftest import run_locust, load_summary

pytestmark = pytest.mark.slow

WRITER, ANALYST = "firehose_test_writer_role", "firehose_test_analyst_role"


@pytest.fixture
def roles(dsn, monkeypatch, capsys):
    monkeypatch.setenv("FIREHOSE_WRITER_PASSWORD", "w-s3cret")
    monkeypatch.setenv("FIREHOSE_ANALYST_PASSWORD", "a-s3cret")
    assert main(["roles", "--pg-dsn", dsn, "--writer-role", WRITER, "--analyst-role", ANALYST]) == 0
    printed = capsys.readouterr()
    assert "s3cret" not in printed.out + printed.err
    yield make_conninfo(dsn, user=WRITER), make_conninfo(dsn, user=ANALYST)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {WRITER}, {ANALYST}; DROP ROLE {WRITER}, {ANALYST}")


def test_a_run_under_the_writer_and_analyst_roles_reconciles(roles, tmp_path):
    writer_dsn, analyst_dsn = roles
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "Analyst", "-u", "14", "-r", "14", "--analysts", "4", "--pg-dsn", writer_dsn,
        "--analyst-dsn", analyst_dsn, "--summary-json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(path)
    assert summary["events"]["lost"] == 0 and summary["events"]["in_database"] > 0
    queries = summary["queries"]
    assert queries and all(query["failures"] == 0 for query in queries.values())


def test_the_roles_may_do_nothing_more(roles):
    writer_dsn, analyst_dsn = roles
    with psycopg.connect(analyst_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] >= 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (1, 'analyst')")
    with psycopg.connect(writer_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE firehose_writer_may_not (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM spans")
