"""What the tools do to the target database between runs."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from telemetry.layout import TABLES

logger = logging.getLogger("firehose")

TABLES_TO_EMPTY = (*TABLES, "quarantine")


def empty_tables(dsn: str) -> None:
    """Give the next run empty tables, and a checkpoint so it does not pay for the previous run's writes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES_TO_EMPTY))))
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            logger.info("no privilege to CHECKPOINT between runs: a run may pay for the previous one's writes")
