"""Settings refused before anything starts: one line each, exit code 2.

`check_options` is the one check of the values themselves, for every way in: run on the parsed command line (with
locust.conf and the LOCUST_* environment) before Locust forks `--processes` workers, at Locust's init, and on the
web form's values. The rest is checked on the master (or the only process) at init, before the run touches the
database:
- sizes, counts and rates out of range (each option's bound: `OPTION_MINIMUMS`), a number that is not finite;
- a DSN libpq cannot parse, a --history that is not a duration, a run time of 0 with --continuous;
- a DSN that does not answer within a few seconds, or refuses the user (libpq's reason, password redacted);
- an existing telemetry table whose columns differ from the row layout (named, with the columns);
- a role missing a privilege the run needs (named, with the tables);
- a Redis given with --redis-url that does not answer, or is older than 7;
- pgBouncer or Redis to be started here for a strategy named on the command line, without its binary;
- a --check naming no figure, a --baseline naming no stored run, a --max-regression that is no percentage;
- an --embedded-listen that is not an IP address of this machine other than loopback or a wildcard.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import shutil
import socket

import psycopg
import redis
from locust.util.timespan import parse_timespan
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from services.postgres import redact
from telemetry.durations import parse_duration
from telemetry.layout import LAYOUT

CONNECT_TIMEOUT_S = 5
"""How long a DSN may take to answer before it is taken for unreachable (libpq's default waits ~2 minutes)."""
OPTION_MINIMUMS = {
    "traces_per_engineer": 1,
    "copy_batch_size": 1,
    "copy_pool_size": 1,
    "batched_batch_size": 1,
    "batched_pool_size": 1,
    "pooled_batch_size": 1,
    "pooled_pool_size": 1,
    "validated_batch_size": 1,
    "validated_pool_size": 1,
    "naive_pool_size": 1,
    "stream_batch_size": 1,
    "stream_consumers": 0,
    "stream_max_len": 1,
    "stream_claim_idle": 0.1,
    "valve_batch_size": 1,
    "valve_consumers": 0,
    "valve_claim_idle": 0.1,
    "outage_deadline": 1,
    "analyst_pool_size": 1,
    "analysts": 0,
    "drain_timeout": 1,
    "worker_gone_after": 1,
    "engineer_rate": 0,
    "population": 0,
    "events_per_engineer_day": 0.001,
    "ramp_rate": 0,
    "ramp_step": 0.1,
    "embedded_port": 1,
}
"""Each option's smallest sensible value: 0 rows per batch or 0 connections is no strategy at all; a negative rate
offers nothing; a ramp step of 0 s divides the run into no steps at all."""
OPTION_MAXIMUMS = {"embedded_port": 65535}
DSN_OPTIONS = ("pg_dsn", "pgbouncer_dsn", "analyst_dsn")
"""Options holding a libpq DSN, parsed before anything starts (a DSN libpq cannot parse fails only at connect)."""
_QUOTED = re.compile(r'"([^"]*)"')
PRIVILEGES = (
    (
        "INSERT",
        ("spans", "metrics", "logs", "quarantine", "firehose_runs", "firehose_writer_keys", "firehose_run_summaries"),
    ),
    ("SELECT", ("spans", "metrics", "logs", "firehose_writer_keys")),
)
"""What a run does to each table: writes, and counts its rows at the end."""
_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable = 'YES'
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = ANY(%s)
ORDER BY table_name, ordinal_position
"""


REDIS_MAJOR = 7
"""XAUTOCLAIM's reply gained a third element in Redis 7.0: the stream consumers read that shape."""


SERVICE_BINARIES = {"pgbouncer": ("pgbouncer", "--pgbouncer-dsn"), "redis": ("redis-server", "--redis-url")}
"""Service -> the Debian package and binary a local one needs, and the option that names one instead."""


class Refused(Exception):
    """A setting that cannot work: the message is the one line the user sees; `option` is the option's dest (e.g.
    "copy_batch_size"), so the web form can name its field."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def check_options(options: argparse.Namespace) -> None:
    """The values themselves, before anything starts (the command line, locust.conf, the environment, the web
    form): numbers finite and within their bounds, DSNs libpq parses, durations that parse, a run that can end."""
    from firehose.run import disk_guard, kept  # they import Refused from here

    if getattr(options, "headless", False) and getattr(options, "num_users", None) == 0:
        raise Refused("-u 0 starts no user: a headless run needs at least 1 (-u N)", "num_users")
    for dest, value in sorted(vars(options).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(f"{_flag(dest)} must be a finite number, got {value}", dest)
    for dest, minimum in OPTION_MINIMUMS.items():
        value = getattr(options, dest, None)
        if value is not None and value < minimum:
            raise Refused(f"{_flag(dest)} must be at least {minimum}, got {value}", dest)
    for dest, maximum in OPTION_MAXIMUMS.items():
        value = getattr(options, dest, None)
        if value is not None and value > maximum:
            raise Refused(f"{_flag(dest)} must be at most {maximum}, got {value}", dest)
    for dest in DSN_OPTIONS:
        if (dsn := getattr(options, dest, None)) is not None:
            check_dsn(dsn, dest)
    check_history(getattr(options, "history", None))
    partition_interval_s(options)
    if getattr(options, "time_scale", 1.0) <= 0:
        raise Refused(f"--time-scale {options.time_scale}: give a factor above 0, e.g. 1 or 60", "time_scale")
    check_run_time(options)
    check_population(options)
    disk_guard.check_options(options)
    kept.check_options(options)
    if (listen := getattr(options, "embedded_listen", None)) is not None:
        check_listen_address(listen)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_dsn(dsn: str, dest: str) -> None:
    """A DSN libpq parses, with numeric ports. libpq's reason keeps only the words that are its own keywords: a
    quoted fragment may be part of a password (`password=my secret`: 'missing "=" after "secret"')."""
    try:
        ports = conninfo_to_dict(dsn).get("port") or ""
    except psycopg.ProgrammingError as error:
        reason = _masked(str(error).strip())
        raise Refused(f"{_flag(dest)} is not a libpq DSN: {reason}", dest) from None
    for port in str(ports).split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise Refused(f"{_flag(dest)} is not a libpq DSN: port {port!r} is not a port number", dest)


def _masked(reason: str) -> str:
    """libpq's reason with each quoted word that is not one of its keywords replaced by "..."."""
    keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}

    def mask(quoted: re.Match) -> str:
        word = quoted.group(1)
        return quoted.group(0) if word in keywords or not any(c.isalnum() for c in word) else '"..."'

    return _QUOTED.sub(mask, reason)


def check_history(history: str | None) -> None:
    """--history: a duration longer than 0 (the form sends "" for the default)."""
    if history in (None, ""):
        return
    try:
        seconds = parse_duration(str(history))
    except ValueError:
        seconds = None
    if not seconds:
        raise Refused(f"--history {history}: give a span of time longer than 0, e.g. 1h or 3d", "history")


def partition_interval_s(options: argparse.Namespace) -> int:
    """--partition-interval in seconds: a duration above 0 (the form sends "" for the default, 1d)."""
    text = getattr(options, "partition_interval", None) or "1d"
    try:
        seconds = parse_duration(str(text))
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise Refused(f"--partition-interval {text}: give a span of time, e.g. 1d, 6h or 1h", "partition_interval")
    return seconds


def check_run_time(options: argparse.Namespace) -> None:
    """A run time of 0 is no limit to Locust: with --continuous such a run never ends. Locust turns -t into
    seconds after parsing (text here before it, a number at init)."""
    run_time = getattr(options, "run_time", None)
    if run_time in (None, "") or not getattr(options, "continuous", False):
        return
    try:
        seconds = run_time if isinstance(run_time, int) else parse_timespan(str(run_time))
    except ValueError:
        return  # Locust's own message names the formats it takes
    if seconds == 0:
        raise Refused(
            f"-t {seconds}s with --continuous never ends (0 is no limit to Locust): give a run time above 0",
            "run_time",
        )


def check_population(options: argparse.Namespace) -> None:
    """--population sets each user's rate (a gateway's share): a rate or a ramp of its own would contradict it."""
    if not getattr(options, "population", 0):
        return
    for dest in ("engineer_rate", "ramp_rate"):
        if getattr(options, dest, 0):
            raise Refused(
                f"--population sets each user's rate (its share of the population's events): drop {_flag(dest)}",
                dest,
            )


def check_user_classes(named: list[str], available: list[str]) -> None:
    """Every class named on the command line is one of the locustfile's (Locust's own check comes after it
    forked --processes workers, and exits 1)."""
    if unknown := [name for name in named if name not in available]:
        raise Refused(f"unknown user class {', '.join(unknown)}: choose from {', '.join(available)}", "user_classes")


def check_listen_address(address: str) -> None:
    """An address of this machine that other machines can reach: not loopback, not every address at once."""
    prefix = f"--embedded-listen {address}"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise Refused(f"{prefix}: give an IP address of this machine that workers reach", "embedded_listen") from None
    if parsed.is_loopback or parsed.is_unspecified:
        raise Refused(f"{prefix}: give the address of this machine that workers reach, not loopback or a wildcard")
    try:
        with socket.socket(socket.AF_INET6 if parsed.version == 6 else socket.AF_INET) as probe:
            probe.bind((address, 0))
    except OSError as error:
        raise Refused(f"{prefix} is not an address of this machine ({error.strerror})") from None


def check_database(conninfo: str) -> None:
    """The database answers, its telemetry tables (if any) have the layout's columns, the role may write."""
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as error:
        raise Refused(cannot_connect(conninfo, error)) from None
    with conn:
        check_tables(conn)
        check_privileges(conn)


def cannot_connect(conninfo: str, error: psycopg.Error) -> str:
    """The line that says a PostgreSQL could not be reached: where (redacted) and libpq's first line of why."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
    return f"cannot connect to PostgreSQL at {redact(conninfo) or 'the PG* variables'}: {reason}"


def check_tables(conn: psycopg.Connection) -> None:
    """Existing telemetry tables have exactly the layout's columns, types and nullability."""
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, sql_type, nullable in conn.execute(_COLUMNS, [list(LAYOUT)]):
        found.setdefault(table, []).append((column, sql_type, nullable))
    for table, columns in found.items():
        expected = [(column.name, column.sql_type, column.nullable) for column in LAYOUT[table]]
        if columns != expected:
            missing = [name for name, *_ in expected if name not in {c for c, *_ in columns}]
            extra = [name for name, *_ in columns if name not in {c for c, *_ in expected}]
            differing = [
                name for (name, *shape) in columns for (other, *wanted) in expected if name == other and shape != wanted
            ]
            details = (
                "; ".join(
                    f"{label} {', '.join(names)}"
                    for label, names in (
                        ("missing", missing),
                        ("unexpected", extra),
                        ("other type or nullability", differing),
                    )
                    if names
                )
                or "columns in another order"
            )
            raise Refused(
                f"table {table} differs from schema/tables.sql ({details}): drop or rename it, or use another database"
            )


def check_privileges(conn: psycopg.Connection) -> None:
    """The role may do what a run does, on the tables that exist (the schema step creates the others)."""
    existing = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    for privilege, tables in PRIVILEGES:
        lacking = [
            table
            for table in tables
            if table in existing
            and not conn.execute("SELECT has_table_privilege(%s, %s)", [table, privilege]).fetchone()[0]
        ]
        if lacking:
            tables = ", ".join(lacking)
            raise Refused(f"role {conn.info.user} lacks the {privilege} privilege on {tables}: grant it first")


def check_redis(url: str) -> None:
    """Redis answers, and is recent enough for the stream path."""
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    try:
        version = client.info("server")["redis_version"]
    except Exception as error:  # redis-py's own errors, or a server that is not Redis failing its handshake
        raise Refused(f"cannot reach Redis at {redact(url)}: {error}") from None
    finally:
        client.close()
    if int(version.split(".")[0]) < REDIS_MAJOR:
        raise Refused(f"Redis at {redact(url)} is {version}: the stream path needs Redis {REDIS_MAJOR} or later")


def check_binaries(services: set[str]) -> None:
    """Each service that will be started here has its binary (Debian puts pgbouncer in /usr/sbin)."""
    for service in sorted(services):
        binary, option = SERVICE_BINARIES[service]
        if not (shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin")):
            raise Refused(
                f"{binary} is not installed: install it (apt-get install {binary}, or make services), "
                f"or give {option} of a running one"
            )
