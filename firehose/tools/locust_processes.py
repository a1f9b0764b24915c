"""Locust processes a tool starts one by one (a master, `locust --worker`s it may kill by pid), and what it
observes of them in the database: the writer key a process drew, the rows of a key, a state waited for.

A tool names each worker by the `application_name` of the worker's own `--pg-dsn`, which `firehose_writer_keys`
records beside the key the worker drew (`firehose soak` kills and replaces workers on a schedule this way).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, TypeVar

import psycopg

from firehose.tools.headless import LOCUSTFILE, REPO
from telemetry.layout import TABLES

DEADLINE_S = 60
"""Bound on waiting for an observed state."""
POLL_S = 0.1
"""How often an observed state is looked for."""
_ROWS_OF_KEY = (
    "SELECT count(*) FROM {table} WHERE event_id >= %(key)s::bigint << 32 AND event_id < (%(key)s::bigint + 1) << 32"
)

Found = TypeVar("Found")


def start_locust(*args: str, log: IO, locustfiles: tuple[str, ...] = (), env: dict | None = None) -> subprocess.Popen:
    """`locust -f locustfile.py[,LOCUSTFILES] ARGS` in a session of its own (so its group can be killed), output
    to `log`; `env` replaces the environment."""
    command = [sys.executable, "-m", "locust", "-f", ",".join([str(LOCUSTFILE), *locustfiles]), *args]
    return subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env=env,
    )  # fmt: skip


def wait_for(
    condition: Callable[[], Found], what: str, *processes: subprocess.Popen, deadline_s: float = DEADLINE_S
) -> Found:
    """`condition()`'s first true value, looked for every POLL_S until `deadline_s`; an error if one of `processes`
    ends before."""
    deadline = time.monotonic() + deadline_s
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {deadline_s:g} s: {what}")
        if ended := [process for process in processes if process.poll() is not None]:
            codes = ", ".join(f"pid {process.pid} exit code {process.returncode}" for process in ended)
            raise RuntimeError(f"a process ended ({codes}) before: {what}")
        time.sleep(POLL_S)
    return found


def rows_of_key(dsn: str, writer_key: int) -> int:
    """Rows in the telemetry tables written under `writer_key`."""
    with psycopg.connect(dsn) as conn:
        return sum(
            conn.execute(_ROWS_OF_KEY.format(table=table), {"key": writer_key}).fetchone()[0] for table in TABLES
        )


def writer_key_of(dsn: str, application_name: str) -> int | None:
    """The writer key the process connecting as `application_name` drew (None before it drew one)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT writer_key FROM firehose_writer_keys WHERE application_name = %s", [application_name]
        ).fetchone()
        return row[0] if row else None
