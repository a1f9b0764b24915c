"""The naive writer's connection class waits cooperatively: a greenlet waiting on the server lets the others run.

Observed, not timed: a query blocked on a lock the test holds must leave the test's own greenlet free to see it
waiting in pg_locks and release the lock. A wait that blocked the process would never let it run: the server's
lock_timeout then ends the query and the test fails.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import gevent
import psycopg
import pytest

from writers.gevent_wait import GeventConnection

LOCK_KEY = 912_012
HANG_GUARD_S = 60
LOCK_TIMEOUT = "-c lock_timeout=30s"
"""Ends the blocked query if our greenlet never runs to release the lock: the test then fails instead of hanging."""


def test_a_waiting_query_lets_other_greenlets_run(dsn):
    with (
        psycopg.connect(dsn, autocommit=True) as holder,
        GeventConnection.connect(dsn, autocommit=True, options=LOCK_TIMEOUT) as waiter,
    ):
        holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        query = "SELECT 'got it' FROM pg_advisory_lock(%s)"
        blocked = gevent.spawn(lambda: waiter.execute(query, [LOCK_KEY]).fetchone())
        with gevent.Timeout(HANG_GUARD_S):
            while not _waits_for_the_lock(holder, waiter.info.backend_pid):
                gevent.sleep(0.01)
        assert not blocked.ready()
        holder.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        assert blocked.get(timeout=HANG_GUARD_S) == ("got it",)


def _waits_for_the_lock(conn: psycopg.Connection, pid: int) -> bool:
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s AND NOT granted"
    return conn.execute(query, [pid]).fetchone()[0] == 1


@pytest.mark.parametrize("rows", [1, 3000])
def test_results_and_errors_come_back_as_with_psycopgs_wait(dsn, rows):
    """Small and large results (a large one needs several reads), and a server error raised as psycopg raises it."""
    with GeventConnection.connect(dsn, autocommit=True) as conn:
        got = conn.execute("SELECT g, repeat('x', 1000) FROM generate_series(1, %s) AS g", [rows]).fetchall()
        assert [row[0] for row in got] == list(range(1, rows + 1))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
