"""pgBouncer strategy: the batched INSERTs, through pgBouncer in transaction pooling mode.

Each batch is one transaction, so pgBouncer may hand every batch to another server connection: the
many client connections of many processes share `default_pool_size` server connections. Prepared
statements do not survive that (pgBouncer 1.18 does not track them: psycopg's automatic ones fail with
`prepared statement "_pg3_0" already exists` or `does not exist`), so every connection sets
`prepare_threshold=None`.

With no `--pgbouncer-dsn`, `prepare` starts a local pgBouncer (`firehose.pgbouncer`) in front of the
run's PostgreSQL, on a free 127.0.0.1 port, for the length of the run.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from locust.event import Events

from firehose.pgbouncer import PgBouncer, PgBouncerMissing
from writers.batched import BatchedWriter

logger = logging.getLogger("firehose")

POOL_SIZE = 20
"""Client connections per process, the batched writer's: with one process, the two strategies differ
only by pgBouncer's hop; with several, pgBouncer keeps the server's connections at its pool size."""


class PooledWriter(BatchedWriter):
    """Batched INSERTs through pgBouncer (transaction pooling), without prepared statements."""

    option_prefix = "pooled"
    options_title = "pgBouncer strategy"
    default_pool_size = POOL_SIZE
    pool_help = "Client connections to pgBouncer per process."
    connection_settings = {"prepare_threshold": None}
    """pgBouncer 1.18 does not track prepared statements: psycopg must not prepare any."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        # On the parser itself, not the group: only Locust's parser knows include_in_web_ui.
        parser.add_argument(
            "--pgbouncer-dsn",
            default=None,
            include_in_web_ui=False,  # a DSN may hold a password
            help="libpq DSN of a pgBouncer in transaction pooling mode in front of --pg-dsn's database. "
            "Default: a pgBouncer started on a free 127.0.0.1 port for the run (needs the pgbouncer binary).",
        )
        super().add_arguments(parser)

    @classmethod
    def prepare(cls, options: argparse.Namespace) -> Callable[[], None] | None:
        """Start a local pgBouncer in front of `options.pg_dsn` unless `--pgbouncer-dsn` names one.

        Without the pgbouncer binary this fails when the strategy was named on the command line; when
        it is only one of all the classes the web UI offers, the others stay usable (with a warning).
        """
        if options.pgbouncer_dsn:
            return None
        bouncer = PgBouncer(options.pg_dsn)
        try:
            options.pgbouncer_dsn = bouncer.start()
        except PgBouncerMissing as error:
            if getattr(options, "user_classes", None):  # names given on the command line
                raise
            logger.warning("the pgBouncer strategy is unavailable: %s", error)
            return None
        return bouncer.stop

    @classmethod
    def from_options(cls, conninfo: str, options: argparse.Namespace, events: Events) -> PooledWriter:
        """Writes to `options.pgbouncer_dsn` (set by `prepare` or the user), not to PostgreSQL's `conninfo`."""
        if not options.pgbouncer_dsn:
            raise PgBouncerMissing(
                "no pgBouncer to write through: install pgbouncer (`sudo apt-get install pgbouncer`) or give "
                "--pgbouncer-dsn"
            )
        return cls(options.pgbouncer_dsn, events, **cls.sizes(options))
