"""Load what a valve spool holds into PostgreSQL: chunks a crashed process left behind (`firehose valve flush`).

    firehose valve flush --spool /var/tmp/firehose-valve --pg-dsn "host=... dbname=..."

A ValveEngineer process returns a trace to its engineer once its chunk file is fsynced and its pointer is in
Redis; consumers on the same machine store what a dead process pointed to. What no consumer will store (a process
killed between its fsync and its XADD, a run whose database stayed gone, a spool no running process reads) stays
in the spool's `.chunk` files. This command COPYs each chunk through the de-duplicating path (rows stored already
are skipped, by event id: running it twice, or beside a live run, stores nothing twice), deletes it once
committed, and removes `.part` files (chunks a crash cut while they were written: never returned to an engineer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from firehose.run.endpoints import given_addresses
from services.postgres import redact
from writers.valve import DEFAULT_SPOOL, flush_spool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    flush = actions.add_parser("flush", help="Load a spool's chunks into PostgreSQL and delete them.")
    flush.add_argument("--spool", default=str(DEFAULT_SPOOL), help=f"The spool directory (default: {DEFAULT_SPOOL}).")
    flush.add_argument("--pg-dsn", default=None, help="The database the spool's run wrote to.")


def run(args: argparse.Namespace) -> int:
    conninfo = given_addresses(args).get("postgres")
    if conninfo is None:
        sys.stderr.write("firehose valve flush: give --pg-dsn (or PG* variables) of the run's database\n")
        return 2
    try:
        flushed = flush_spool(conninfo, Path(args.spool))
    except psycopg.Error as error:
        sys.stderr.write(f"firehose valve flush: {str(error).strip()} (on {redact(conninfo)})\n")
        return 1
    print(
        f"firehose valve flush: {flushed.chunks:,} chunks of {flushed.rows:,} rows loaded from {args.spool}: "
        f"{flushed.stored:,} stored now, {flushed.rows - flushed.stored:,} stored already; "
        f"{flushed.partial:,} partial chunks (never acknowledged) removed"
    )
    return 0
