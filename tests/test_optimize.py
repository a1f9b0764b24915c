"""`firehose optimize` with tiny figures on the test server: the report's structure, the reuse of a loaded
dataset, and the refusal to touch a database that holds other tables (no timing is asserted)."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import re

import psycopg
import pytest

from firehose.cli import main
from firehose.tools.optimize.main import OUR_INDEXES
from users.queries import load_queries
from telemetry.layout import TABLES

pytestmark = pytest.mark.slow


def optimize(dsn: str, out, *extra: str) -> int:
    tiny = [
        "--users",
        "3",
        "--history",
        "3h",
        "--repeat",
        "2",
        "--write-sample",
        "2000",
    ]  # 3 h: errors in the 1 h window
    return main(["optimize", "--pg-dsn", dsn, *tiny, "--out", str(out), *extra])


@pytest.fixture
def tidy(postgres):
    """Leave the test server without firehose's indexes and dataset record: other tests write without them."""
    yield postgres.dsn
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        for (name,) in conn.execute(f"SELECT indexname FROM pg_indexes WHERE {OUR_INDEXES}", [list(TABLES)]):
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("DROP TABLE IF EXISTS firehose_datasets")


def test_optimize_reports_every_query_before_and_after(tidy, tmp_path):
    assert optimize(tidy, tmp_path / "first") == 0
    result = json.loads((tmp_path / "first" / "optimize.json").read_text())
    assert (tmp_path / "first" / "optimize.md").read_text().count("\n| ") >= 8
    assert result["dataset"]["users"] == 3 and not result["dataset"]["reused"]
    assert result["dataset"]["history_s"] == 3 * 3600 and all(result["dataset"]["rows"].values())
    assert set(result["queries"]) == set(load_queries())
    for query in result["queries"].values():
        assert query["identical"] and query["non_empty"]
        for phase in ("before", "after"):
            assert len(query[phase]["runs_ms"]) == 2 and query[phase]["scans"]
            assert {"median_ms", "rows", "shared_hit", "shared_read"} <= query[phase].keys()
    assert not any("firehose_" in scan for scan in result["queries"]["recent_errors"]["before"]["scans"])
    assert "firehose_spans_errors_recent" in result["indexes"]
    assert all(index["bytes"] > 0 for index in result["indexes"].values())
    assert result["writes"]["sample_rows"] >= 2000
    assert result["writes"]["with_indexes_rows_s"] > 0 and result["writes"]["without_indexes_rows_s"] > 0
    with psycopg.connect(tidy) as conn:  # the write samples were deleted: the tables hold the dataset alone
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    assert counts == result["dataset"]["rows"]

    assert optimize(tidy, tmp_path / "second") == 0
    assert json.loads((tmp_path / "second" / "optimize.json").read_text())["dataset"]["reused"]


def test_optimize_refuses_a_database_with_other_tables(tidy, tmp_path, capsys):
    with psycopg.connect(tidy, autocommit=True) as conn:
        conn.execute("CREATE TABLE someone_elses (id int)")
        # Another session's temporary table (a running writer's retry staging) is not the database's: not named.
        conn.execute("CREATE TEMPORARY TABLE firehose_retry_spans (id int)")
        try:
            assert optimize(tidy, tmp_path) == 2
        finally:
            conn.execute("DROP TABLE someone_elses")
    error = capsys.readouterr().err
    assert "someone_elses" in error and "--yes" in error and len(error.strip().splitlines()) == 1
    assert "firehose_retry_spans" not in error and "pg_temp" not in error


def test_optimize_on_partitioned_tables_creates_drops_and_sizes_the_indexes_of_every_partition(
    partitioned_dsn, tmp_path
):
    """indexes.sql on partitioned tables (no CONCURRENTLY there): results identical before and after, sizes added
    up over the partitions, the partitions' scans named by table and index."""
    try:
        assert optimize(partitioned_dsn, tmp_path, "--layout", "partitioned", "--partition-interval", "1h") == 0
        result = json.loads((tmp_path / "optimize.json").read_text())
        assert (result["dataset"]["layout"], result["dataset"]["partition_interval"]) == ("partitioned", "1h")
        assert all(query["identical"] and query["non_empty"] for query in result["queries"].values())
        assert all(index["bytes"] > 0 for index in result["indexes"].values())
        assert all(size > 0 for size in result["dataset"]["table_bytes"].values())
        scans = result["queries"]["recent_errors"]["after"]["scans"]  # a partition's index named as its table's
        assert any(" firehose_spans_errors_recent" in scan for scan in scans), scans
        assert any(re.fullmatch(r".* on spans \(\d+ partitions?\)", scan) for scan in scans), scans
        assert "tables partitioned by time, one partition per 1h" in (tmp_path / "optimize.md").read_text()
    finally:
        with psycopg.connect(partitioned_dsn, autocommit=True) as conn:
            for (name,) in conn.execute(f"SELECT indexname FROM pg_indexes WHERE {OUR_INDEXES}", [list(TABLES)]):
                conn.execute(f'DROP INDEX "{name}"')
            conn.execute("DROP TABLE IF EXISTS firehose_datasets")
