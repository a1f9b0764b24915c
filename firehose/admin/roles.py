"""Create least-privilege roles for running firehose: a writer role and a read-only analyst role.

    firehose roles --pg-dsn "host=... user=admin dbname=..."      # as a role that may create roles

The writer role may do exactly what a run does: INSERT into the telemetry tables, the quarantine and the run
bookkeeping (firehose_runs, firehose_writer_keys, firehose_run_summaries), SELECT on them (the end-of-run
reconciliation counts rows, and INSERT ... RETURNING reads what it wrote), USAGE on their sequences (writer keys,
run ids, quarantine ids), and TEMP on the database (a COPY retried after a lost connection goes through a temporary
staging table). The analyst role may only SELECT the telemetry tables. Neither may create tables: run the schema
step (schema/tables.sql, or one run as an owner) first. Server levers (`--pg-setting`, `--jsonb-compression`) need a
superuser and stay out of both. Passwords are read from the environment (FIREHOSE_WRITER_PASSWORD,
FIREHOSE_ANALYST_PASSWORD), never from the command line; no password is printed.
"""

from __future__ import annotations

import argparse
import os
import sys

import psycopg
from psycopg import sql

from firehose.run.endpoints import given_addresses
from services.postgres import apply_schema, redact
from telemetry.layout import TABLES

BOOKKEEPING = ("quarantine", "firehose_runs", "firehose_writer_keys", "firehose_run_summaries")
SEQUENCES = ("firehose_writer_key", "firehose_runs_run_id_seq", "quarantine_id_seq")
PASSWORD_VARIABLES = {"writer": "FIREHOSE_WRITER_PASSWORD", "analyst": "FIREHOSE_ANALYST_PASSWORD"}


def grants(writer: str, analyst: str, database: str) -> list[sql.Composed]:
    """The statements that give each role its privileges (and nothing more)."""
    writer_id, analyst_id = sql.Identifier(writer), sql.Identifier(analyst)
    tables = sql.SQL(", ").join(map(sql.Identifier, (*TABLES, *BOOKKEEPING)))
    telemetry = sql.SQL(", ").join(map(sql.Identifier, TABLES))
    sequences = sql.SQL(", ").join(map(sql.Identifier, SEQUENCES))
    return [
        sql.SQL("GRANT CONNECT, TEMP ON DATABASE {} TO {}").format(sql.Identifier(database), writer_id),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(writer_id, analyst_id),
        sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tables, writer_id),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequences, writer_id),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), analyst_id),
        sql.SQL("GRANT SELECT ON {} TO {}").format(telemetry, analyst_id),
    ]


def create_roles(conninfo: str, writer: str, analyst: str) -> None:
    """Create (or update) both roles with a login, their passwords from the environment, and their grants."""
    apply_schema(conninfo)  # the tables the grants name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for kind, role in (("writer", writer), ("analyst", analyst)):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            password = os.environ.get(PASSWORD_VARIABLES[kind])
            statement = sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password) if password else sql.NULL
            )
            conn.execute(statement)
        for statement in grants(writer, analyst, conn.info.dbname):
            conn.execute(statement)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pg-dsn", default=None, help="The database, as a role that may create roles.")
    parser.add_argument("--writer-role", default="firehose_writer", help="Name of the writer role.")
    parser.add_argument("--analyst-role", default="firehose_analyst", help="Name of the analyst role.")


def run(args: argparse.Namespace) -> int:
    conninfo = given_addresses(args).get("postgres")
    if conninfo is None:
        sys.stderr.write("firehose roles: give --pg-dsn (or PG* variables) of the database to create roles in\n")
        return 2
    try:
        create_roles(conninfo, args.writer_role, args.analyst_role)
    except psycopg.Error as error:
        reason = (error.diag.message_primary if error.sqlstate else str(error).splitlines()[0]) or str(error)
        sys.stderr.write(f"firehose roles: {reason} (on {redact(conninfo)})\n")
        return 2
    print(f"roles {args.writer_role} (writer) and {args.analyst_role} (analyst) ready on {redact(conninfo)}")
    return 0
