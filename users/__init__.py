"""Locust user classes: engineers (one per write strategy)."""

import locust  # noqa: F401  (gevent must patch before psycopg is imported: see README, "Concurrency")

from users.engineer import (
    BatchedEngineer,
    CopyEngineer,
    Engineer,
    NaiveEngineer,
    PooledEngineer,
    StreamEngineer,
    ValidatedCopyEngineer,
)

__all__ = [
    "BatchedEngineer",
    "CopyEngineer",
    "Engineer",
    "NaiveEngineer",
    "PooledEngineer",
    "StreamEngineer",
    "ValidatedCopyEngineer",
]
