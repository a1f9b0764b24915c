"""pgBouncer strategy: the batched INSERTs, through pgBouncer in transaction pooling mode.

Each batch is one transaction, so pgBouncer may hand every batch to another server connection: the
many client connections of many processes share `default_pool_size` server connections. Prepared
statements do not survive that (pgBouncer 1.18 does not track them: psycopg's automatic ones fail with
`prepared statement "_pg3_0" already exists` or `does not exist`), so every connection sets
`prepare_threshold=None`.

The strategy declares the service it writes through; the run starts a local pgBouncer in front of the
run's PostgreSQL (or takes `--pgbouncer-dsn`) and hands its address over.
"""

from __future__ import annotations

from writers.batched import BatchedWriter

POOL_SIZE = 20
"""Client connections per process, the batched writer's: with one process, the two strategies differ
only by pgBouncer's hop; with several, pgBouncer keeps the server's connections at its pool size."""


class PooledWriter(BatchedWriter):
    """Batched INSERTs through pgBouncer (transaction pooling), without prepared statements."""

    services = ("pgbouncer",)
    address = "pgbouncer"
    option_prefix = "pooled"
    options_title = "pgBouncer strategy"
    default_pool_size = POOL_SIZE
    pool_help = "Client connections to pgBouncer per process."
    connection_settings = {"prepare_threshold": None}
    """pgBouncer 1.18 does not track prepared statements: psycopg must not prepare any."""
    prepare = None
