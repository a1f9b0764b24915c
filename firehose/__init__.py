"""Running firehose: the database, the Locust lifecycle, reports and command-line tools."""

import locust  # noqa: F401  (gevent must patch before psycopg is imported: see README, "Concurrency")
