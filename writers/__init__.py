"""Write strategies, one module each, behind writers.base.Writer."""

import locust  # noqa: F401  (gevent must patch before psycopg is imported: see README, "Concurrency")
