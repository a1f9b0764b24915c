"""Locust user classes: engineers (one per write strategy) and analysts (the queries of queries/)."""

import locust  # noqa: F401  (gevent must patch before psycopg is imported: see README, "Concurrency")

from users.analyst import Analyst
from users.engineer import (
    BatchedEngineer,
    CopyEngineer,
    Engineer,
    NaiveEngineer,
    PooledEngineer,
    StreamEngineer,
    ValidatedCopyEngineer,
    ValveEngineer,
)

__all__ = [
    "Analyst",
    "BatchedEngineer",
    "CopyEngineer",
    "Engineer",
    "NaiveEngineer",
    "PooledEngineer",
    "StreamEngineer",
    "ValidatedCopyEngineer",
    "ValveEngineer",
]
