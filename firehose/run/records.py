"""A run's records in the target database: the run itself (`firehose_runs`) and each writing process's writer key
(`firehose_writer_keys`), whose range numbers the process's event ids. Tools that load data outside a Locust run
(datasets) record it the same way."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from firehose.run.preflight import CONNECT_TIMEOUT_S


def open_run(conninfo: str, seed: int, label: str) -> int:
    """Record a new run and return its id."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("INSERT INTO firehose_runs (seed, label) VALUES (%s, %s) RETURNING run_id", [seed, label])
        return row.fetchone()[0]


def register_writer_key(conninfo: str, run_id: int) -> int:
    """A new writer key of `run_id`: its row records the address and name of the connection that drew it."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return conn.execute(
            "INSERT INTO firehose_writer_keys (writer_key, run_id)"
            " VALUES (nextval('firehose_writer_key'), %s) RETURNING writer_key",
            [run_id],
        ).fetchone()[0]


def store_summary(conninfo: str, run_id: int, summary: dict) -> None:
    """Keep the run's summary JSON with its run (`firehose_run_summaries`)."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(
            "INSERT INTO firehose_run_summaries (run_id, summary) VALUES (%s, %s) ON CONFLICT (run_id) DO NOTHING",
            [run_id, Jsonb(summary)],
        )
