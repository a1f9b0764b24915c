"""The C-client references write the rows they claim, counted in the database; the server's counters move."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import pytest

from firehose.tools.references import CLIENTS, run_reference
from firehose.tools.server_cost import ServerCost
from services.pgbouncer import PgBouncer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["naive", "batched", "pooled", "copy"])
def test_each_reference_wrote_the_rows_it_claims(dsn, pools, tmp_path, kind):
    """A fixed volume (2 transactions per pgbench client): every row claimed is counted, and no more."""
    bouncer = PgBouncer(dsn) if kind == "pooled" else None
    try:
        run = run_reference(
            kind, dsn, pools, 1, scratch=tmp_path, bouncer_dsn=bouncer.start() if bouncer else None, transactions=2
        )
    finally:
        if bouncer is not None:
            bouncer.stop()
    assert run.clients == CLIENTS[kind]
    assert run.rows_claimed > 0 and run.rows_counted == run.rows_claimed
    if kind != "copy":
        assert run.rows_claimed == 2 * run.clients * (500 if kind in ("batched", "pooled") else 1)


def test_server_cost_counts_wal_disk_commits_and_cpu(dsn, pools, tmp_path):
    """A timed reference (as the sweep runs them) and the server's counters around it."""
    cost = ServerCost(dsn)
    before = cost.sample()
    run = run_reference("naive", dsn, pools, 1, scratch=tmp_path)
    figures = cost.per_row(before, cost.sample(before), run.rows_counted)
    # pgbench counts the transactions that ended before its deadline; one a client had sent may commit after it.
    assert 0 < run.rows_claimed <= run.rows_counted <= run.rows_claimed + run.clients
    assert figures["rows"] == run.rows_counted
    assert figures["wal_bytes_per_row"] > 1_000  # a ~3 KB row
    assert figures["disk_bytes_per_row"] > 1_000
    assert figures["commits"] >= run.rows_counted  # one transaction per row
    assert figures["server_cpu_us_per_row"] > 0  # the test server runs on this machine
