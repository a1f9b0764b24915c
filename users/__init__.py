"""Locust user classes: engineers (one per write strategy)."""

import locust  # noqa: F401  (gevent must patch before psycopg is imported: see README, "Concurrency")

from users.engineer import CopyEngineer, Engineer

__all__ = ["CopyEngineer", "Engineer"]
