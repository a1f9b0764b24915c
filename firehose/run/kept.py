"""Every run kept and checked: its summary stored with what makes runs comparable, and the checks that set its exit
code (for CI).

At the end of a run the coordinator adds the summary's "context" (the user's --label, the classes and population,
the server's version, key settings and firehose's indexes, --pg-setting, compression, the machine, firehose's
version) and "checks" (firehose.report.checks), then keeps the JSON in the target database
(`firehose_run_summaries`) and in the local store (firehose.report.store), prints one line per check, writes
--junit, and a failed check turns an OK run's exit code into CHECKS_FAILED. The options are checked before the
run starts (`check_options`): a check naming an unknown figure, or a --baseline naming no stored run, is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psycopg

from firehose.report import checks, store
from firehose.run.preflight import CONNECT_TIMEOUT_S, Refused
from firehose.run.records import store_summary
from telemetry.layout import TABLES

logger = logging.getLogger("firehose")

REPO = Path(__file__).resolve().parents[2]
KEY_SETTINGS = (
    "shared_buffers",
    "max_wal_size",
    "max_connections",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_compression",
    "default_toast_compression",
    "checkpoint_timeout",
    "work_mem",
)
"""The server settings that move ingest and query figures most: recorded with every run, compared."""
_INDEXES = """
SELECT indexname FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = ANY(%s) AND indexname NOT LIKE '%%\\_pkey'
ORDER BY indexname
"""
POPULATION = ("num_users", "population", "traces_per_engineer", "continuous", "run_time", "analysts", "engineer_rate")
"""Options that set how much a run does, recorded with it (`users_total` is -u; `population`: --population)."""
TABLES_AND_TIME = ("layout", "partition_interval", "timestamps", "time_scale", "history")
"""Options that set the tables a run writes and the times its rows carry (firehose.run.partitions), recorded too."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label",
        default="",
        help="A name for this run, kept with its summary (e.g. 'after index change'): `firehose runs --label`, "
        "`firehose compare LABEL ...` and --baseline LABEL use it; runs under one label form a group.",
    )
    hidden = [
        parser.add_argument(
            "--check",
            action="append",
            default=[],
            metavar="EXPR",
            help='A figure the run must reach, e.g. "rows_per_s >= 15000", "freshness_p99_ms <= 3000", '
            '"query_p95_ms[service_dependency_map] <= 800" (docs/runs.md lists the figures). Repeatable; '
            "lost == 0 is always checked; a failed check exits 7.",
        ),
        parser.add_argument(
            "--baseline",
            default=None,
            metavar="RUN|LABEL",
            help="A stored run (its reference in `firehose runs`, or a run id) or label to compare rows/s with: "
            "the run fails (exit 7) when it is more than --max-regression below it.",
        ),
        parser.add_argument(
            "--max-regression",
            default="10%",
            help="How much slower than --baseline a run may be (default %(default)s); against a label with "
            "several runs, below its slowest run.",
        ),
        parser.add_argument("--junit", default=None, metavar="FILE", help="Write the checks as JUnit XML to FILE."),
    ]
    for action in hidden:  # CI options: a run started from the web form has none
        action.include_in_web_ui = False


def parsed_checks(options: argparse.Namespace) -> list[checks.Check]:
    """The --check expressions, parsed (Refused, naming --check, when one is not a check of a known figure)."""
    try:
        return [checks.Check.parse(text) for text in getattr(options, "check", None) or []]
    except ValueError as error:
        raise Refused(str(error), "check") from None


def baseline(options: argparse.Namespace) -> tuple[str, list[dict], float] | None:
    """--baseline's runs and --max-regression as a fraction, or None without --baseline (Refused when either
    is wrong)."""
    try:
        regression = checks.parse_regression(str(getattr(options, "max_regression", None) or "10%"))
    except ValueError as error:
        raise Refused(str(error), "max_regression") from None
    if not (ref := getattr(options, "baseline", None)):
        return None
    runs = store.resolve(ref)
    if not runs:
        raise Refused(
            f"--baseline {ref} names no stored run or label in {store.store_dir()}: see `firehose runs`", "baseline"
        )
    return ref, [run.summary for run in runs], regression


def check_options(options: argparse.Namespace) -> None:
    """Refuse, before the run starts, checks that name no figure and a baseline that names no run."""
    parsed_checks(options)
    baseline(options)


def context(conninfo: str, options: argparse.Namespace, started_at: float, user_counts: dict[str, int]) -> dict:
    """What makes this run comparable with others (the summary's "context")."""
    given = dict(item.split("=", 1) for item in getattr(options, "pg_setting", None) or [] if "=" in item)
    return {
        "label": getattr(options, "label", "") or "",
        "started_at": datetime.fromtimestamp(started_at, UTC).isoformat(timespec="seconds"),
        "classes": sorted(name for name, count in user_counts.items() if count),
        "users": dict(sorted(user_counts.items())),
        **{
            ("users_total" if name == "num_users" else name): getattr(options, name, None)
            for name in POPULATION
            if hasattr(options, name)
        },
        "seed_given": getattr(options, "seed", None) not in (None, ""),
        **{name: getattr(options, name, None) for name in TABLES_AND_TIME if hasattr(options, name)},
        "pg_settings": dict(sorted(given.items())),
        "jsonb_compression": getattr(options, "jsonb_compression", None),
        **server(conninfo, given),
        "machine": machine(),
        "firehose": firehose_version(),
    }


def server(conninfo: str, given: dict[str, str]) -> dict:
    """The server's version, key settings (and those --pg-setting changed), firehose's indexes on the tables."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            names = sorted({*KEY_SETTINGS, *given})
            settings = dict(
                conn.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", [names])
            )
            return {
                "server": {"version": conn.execute("SHOW server_version").fetchone()[0], "settings": settings},
                "indexes": [row[0] for row in conn.execute(_INDEXES, [list(TABLES)])],
            }
    except psycopg.Error:  # the database is gone (an outage stopped the run): the rest is still worth keeping
        return {"server": None, "indexes": None}


def machine() -> dict:
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def firehose_version() -> str:
    """firehose's version, with the git revision when it runs from a clone ("+dirty" when it has changes)."""
    version = metadata.version("firehose")
    try:
        revision = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return version
    return f"{version}+{revision.stdout.strip()}" if revision.returncode == 0 and revision.stdout.strip() else version


def judge(summary: dict, options: argparse.Namespace) -> list[dict]:
    """The checks' results on `summary` (its "checks" section); none without --check or --baseline."""
    user_checks = parsed_checks(options)  # checked before the run started: they parse
    try:
        given_baseline = baseline(options)
    except Refused as refusal:  # its kept runs removed since the run started: the check fails, it does not crash
        given_baseline = None
        gone = [{"check": "baseline", "figure": checks.BASELINE_FIGURE, "value": None, "passed": False}]
        gone[0]["line"] = f"check FAIL: baseline: {refusal}"
    else:
        gone = []
    if not user_checks and given_baseline is None and not gone:
        return []
    return checks.judge_all(summary, user_checks, given_baseline) + gone


def keep(conninfo: str, summary: dict) -> str | None:
    """Store the summary with its run in the database and in the local store; the local reference (None when the
    store could not be written: said, not fatal)."""
    try:
        store_summary(conninfo, summary["run"]["run_id"], summary)
    except psycopg.Error as error:
        logger.warning("the run's summary is not kept in the database: %s", str(error).strip().splitlines()[0])
    try:
        return store.save(summary).ref
    except OSError as error:
        logger.warning("the run's summary is not kept in %s: %s", store.store_dir(), error)
        return None
