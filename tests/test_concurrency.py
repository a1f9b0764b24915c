"""psycopg under gevent: greenlets overlap on the server only if gevent patched before psycopg's import."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# A timing (10 sleeps of 0.5 s overlap within 1.5 s): at a raised priority, on cores other tests share.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("rate_priority")]

# Run in a fresh interpreter that imports our writer module *first*: the package must patch by itself.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    from writers.copy import CopyWriter  # noqa: F401  (imports psycopg through our package)
    import gevent, psycopg

    def sleep():
        with psycopg.connect(sys.argv[1]) as conn:
            conn.execute("SELECT pg_sleep(0.5)")

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(sleep) for _ in range(10)], raise_error=True)
    print(time.perf_counter() - start)
    """
)


def test_ten_concurrent_pg_sleeps_overlap(dsn):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, dsn], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    elapsed = float(result.stdout.strip().splitlines()[-1])
    assert elapsed < 1.5, f"10 x pg_sleep(0.5) took {elapsed:.2f} s: greenlets are serialised"
