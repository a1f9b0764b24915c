"""Empty or remove the embedded PostgreSQL's data: its rows of every run are kept between runs, and add up.

`firehose reset` empties the telemetry tables and the runs' bookkeeping (TRUNCATE: the space goes back to the
volume at once) and gives back the write-ahead log's space too (`give_back_wal`); `--remove` deletes the data
directory whole (the next run creates a fresh one). Either also removes the `--replica` made of it (its directory
beside it, and its replication slot, which would keep the WAL from being given back). Either refuses, with one line
and exit code 2, while the server or its replica runs (its postmaster.pid names a live process): a run is using it.
`make clean` calls `firehose reset --remove`. A run says at start how large the data directory is once it passes
2 GB, with this command.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import psycopg

from firehose.run.disk_guard import directory_size, pretty
from services import replica
from services.ports import free_port
from services.postgres import LAYOUTS, EmbeddedPostgres, default_data_dir, recreate_tables

logger = logging.getLogger("firehose")

TABLES = ("spans", "metrics", "logs", "quarantine", "firehose_writer_keys", "firehose_run_summaries", "firehose_runs")
"""What runs leave behind: the telemetry, the quarantine, and the runs' bookkeeping."""
SMALL_WAL = {"wal_recycle": "off", "min_wal_size": "32MB", "max_wal_size": "64MB"}
"""The server's settings while it resets (its next start has the usual ones again): segments a checkpoint no longer
needs are deleted, not kept for reuse (schema/postgresql.conf's max_wal_size of 4GB would keep up to that much)."""

_SEGMENTS_AHEAD = """
SELECT count(*) FROM pg_ls_waldir()
WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_lsn())
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedded-data-dir",
        default=None,
        help=f"Data directory of the embedded PostgreSQL (default: {default_data_dir()}).",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--remove",
        action="store_true",
        help="Delete the data directory (and its log) instead of emptying its tables: the next run starts afresh.",
    )
    how.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help="Also drop the telemetry tables and create them in this layout (a run's --layout must match them).",
    )


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server running on `data_dir`, if its postmaster.pid names a live process."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a server that was killed
    except PermissionError:
        pass  # alive, another user's
    return pid


def empty(data_dir: Path, layout: str | None = None) -> None:
    """Start the server on a free port of its own, TRUNCATE what runs left (with a `layout`: the telemetry tables
    made anew in it), remove its replica (and slot), give the WAL back, stop it."""
    server = EmbeddedPostgres(data_dir, port=free_port(), settings=SMALL_WAL)
    dsn = server.start()
    try:
        replica.remove(replica.default_replica_dir(data_dir), dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            if layout is not None:
                recreate_tables(dsn, layout)
            give_back_wal(conn)
    finally:
        server.stop()


def give_back_wal(conn: psycopg.Connection) -> None:
    """Delete the WAL segments a heavy run left: a checkpoint deletes the segments before it, but the ones an
    earlier checkpoint renamed for reuse lie ahead of the current one (a run of GBs leaves GBs of them). Writing a
    message into each and switching past it makes them past segments; the next checkpoints delete them."""
    conn.execute("CHECKPOINT")
    ahead = conn.execute(_SEGMENTS_AHEAD).fetchone()[0]
    for _ in range(ahead + 1):
        conn.execute("SELECT pg_logical_emit_message(false, 'firehose reset', ''), pg_switch_wal()")
    conn.execute("CHECKPOINT")
    conn.execute("CHECKPOINT")  # the segments the first one still needed


def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.embedded_data_dir) if args.embedded_data_dir else default_data_dir()
    if not (data_dir / "PG_VERSION").exists():
        sys.stdout.write(f"firehose reset: no embedded database in {data_dir}: nothing to do\n")
        return 0
    standby_dir = replica.default_replica_dir(data_dir)
    if (pid := running_pid(data_dir) or running_pid(standby_dir)) is not None:
        sys.stderr.write(
            f"firehose reset: the embedded PostgreSQL in {data_dir} is running (pid {pid}) for another run: "
            f"end that run first (a server a killed run left behind: kill {pid})\n"
        )
        return 2
    before = directory_size(data_dir)
    if args.remove:
        shutil.rmtree(data_dir)
        server = EmbeddedPostgres(data_dir)
        for leftover in (server.log_file, data_dir.parent / f".{data_dir.name}.lock"):
            leftover.unlink(missing_ok=True)
        replica.remove(standby_dir, None)  # its slot went with the primary's directory
        sys.stdout.write(f"firehose reset: removed {data_dir} ({pretty(before)})\n")
    else:
        empty(data_dir, args.layout)
        after = directory_size(data_dir)
        made = f", its telemetry tables {args.layout}" if args.layout else ""
        sys.stdout.write(f"firehose reset: emptied {data_dir}{made}: {pretty(before)} -> {pretty(after)}\n")
    return 0
