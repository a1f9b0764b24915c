"""Many engineers in one process: a waiting engineer holds no rows, so what a writer buffers is bounded by its
backlog, not by the number of engineers (10,000 per process once held ~95,000 rows, ~300 MB)."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import re
import subprocess
import tempfile

import pytest

from firehose.tools.headless import locust_command, run_bounded

pytestmark = pytest.mark.slow

ENGINEERS = 400
BATCH = 200
POOL = 1
BACKLOG = 2 * POOL
"""writers.buffered: at most two batches per connection wait to be sent."""


def test_rows_buffered_stay_within_the_backlog_whatever_the_engineers(dsn):
    command = locust_command(
        "CopyEngineer", "-u", str(ENGINEERS), "-r", str(ENGINEERS), "-t", "12s", "--continuous", "--pg-dsn", dsn,
        "--copy-batch-size", str(BATCH), "--copy-pool-size", str(POOL),
    )  # fmt: skip
    command.remove("--only-summary")  # the progress line says what is buffered every 5 s: two lines in 12 s
    with tempfile.TemporaryFile("w+") as output:
        returncode, timed_out = run_bounded(command, 120, output, subprocess.STDOUT)
        output.seek(0)
        text = output.read()
    assert returncode == 0 and not timed_out, text[-3000:]
    buffered = [int(n.replace(",", "")) for n in re.findall(r"acknowledged, ([\d,]+) buffered, engineers", text)]
    started = [int(n.replace(",", "")) for n in re.findall(r"engineers finished/started [\d,]+/([\d,]+)", text)]
    assert len(buffered) >= 2 and max(started) >= ENGINEERS, text[-3000:]
    # Per table a partial batch and, over all tables, the batches queued, the one being sent and the ones filled by
    # the engineers let through as room appeared: far below one trace (~19 rows) per engineer.
    bound = 3 * BATCH + (BACKLOG + 1) * BATCH + 3 * BATCH
    assert max(buffered) <= bound < ENGINEERS * 19 // 2
