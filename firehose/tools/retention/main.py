"""`firehose retention`: drop the telemetry older than --keep while a COPY writer runs, on each layout, side by side.

For each layout of --layout (each on an embedded server of its own, its data directory removed afterwards, or on
--pg-dsn for one layout):
1. empty the tables and prefill --prefill (rows, or a size such as 5GB) with COPY: whole traces over --history ending
   now, under a writer key of their own (partitioned: the partitions made first, one per --partition-interval);
2. the cutoff: the newest prefilled time minus --keep, aligned down to a partition boundary, so both layouts
   remove the same rows; those rows are counted now, before anything is timed;
3. `locust CopyEngineer --timestamps live --migration-probe ...` starts (its rows carry their write time: newer
   than the cutoff), with timeline.py beside the locustfile; once its rows arrive, --before of writing is measured;
4. the retention, timed: partitioned, DETACH PARTITION ... CONCURRENTLY then DROP TABLE of each partition wholly
   older than the cutoff (a pending detach finished with FINALIZE); plain, DELETE ... WHERE <time> < cutoff, then
   the VACUUM it needs, timed apart;
5. the run is interrupted (SIGINT: it drains and reconciles its own rows), and the prefill's kept rows counted.
Measured for each step: wall time, WAL bytes (pg_current_wal_lsn before and after; the writers' own WAL, their rows in
the step at their WAL per row before, is taken off in `wal_bytes_beyond_writers`), the writers' rows/s and slowest COPY
round trip during it against before, the migration probe's attempts and longest lock wait during it, each table's size,
live and dead tuples after. Checks: the rows removed equal the rows older than the cutoff, the prefill's other rows are
all there, and the run reconciled (its rows are all newer than the cutoff). Results: results/retention-<timestamp>/
(retention.md, retention.json). Exit 1 when a check failed, 2 when refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from locust.event import Events

from firehose.run.endpoints import RunServices, given_addresses
from firehose.run.refusal import Refused
from firehose.tools.database import add_target_arguments, empty_tables, refusal_to_empty
from firehose.tools.dataset import own_ids
from firehose.tools.headless import RUN_OVERHEAD_S, passed_to_locust, results_dir
from firehose.tools.locust_processes import rows_of_key, start_locust, wait_for
from firehose.tools.machine import machine_info
from firehose.tools.results import write_report
from firehose.tools.retention import remove
from firehose.tools.retention.report import render_markdown
from firehose.tools.retention.timeline import TIMELINE_FILE
from firehose.tools.retention.windows import Timeline, probe_during
from services.postgres import LAYOUTS, create_partitions, default_data_dir, redact
from telemetry.durations import parse_duration
from telemetry.generator import EngineerTelemetry, engineer_seed
from telemetry.layout import TABLES
from telemetry.pools import CATALOGUE_SEED, Pools
from users import CopyEngineer
from writers.copy import CopyWriter
from writers.spool import parse_size

TIMELINE_PLUGIN = Path(__file__).with_name("timeline.py")
DEFAULT_PREFILL = "5GB"
"""The issue's size: large enough that a DELETE of half of it takes minutes here, small enough for two layouts."""
DEFAULT_HISTORY = "24h"
DEFAULT_KEEP = "12h"
"""Keep the newest half of --history: the retention removes about half the prefill."""
DEFAULT_INTERVAL = "1h"
"""One partition an hour: --history's 24 h make 24 per table, 12 of them dropped."""
DEFAULT_USERS = 20
DEFAULT_BEFORE = "30s"
DEFAULT_PROBE_S = 0.5
"""The migration probe's interval: several attempts within even a short DETACH + DROP."""
PREFILL_SEED = 0
RUN_SEED = 1
SIZE_CHECK_ROWS = 50_000
"""The prefill looks at the tables' size every this many rows (a size target)."""
RUN_LIMIT = "6h"
"""Locust's -t: a safety net only; the tool interrupts the run once the retention is measured."""
FIRST_ROWS_S = 180
"""How long the run may take to commit its first rows (Locust's start, value pools, on a busy machine)."""


@dataclass(frozen=True)
class Settings:
    """What one layout's measurement needs, from the command line."""

    keep_s: int
    history_s: int
    interval_s: int
    prefill_rows: int | None
    prefill_bytes: int | None
    users: int
    before_s: int
    probe_s: float
    locust_args: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`firehose retention`'s options; what follows `--` goes to each Locust run as is."""
    parser.add_argument("--keep", default=DEFAULT_KEEP, help="Keep the newest DURATION of data (default: %(default)s).")
    parser.add_argument(
        "--layout",
        default=",".join(LAYOUTS),
        help="Layouts to measure, comma-separated, in this order (default: %(default)s).",
    )
    parser.add_argument(
        "--prefill",
        default=DEFAULT_PREFILL,
        help="Telemetry loaded first: rows (50000) or the tables' size (5GB) (default: %(default)s).",
    )
    parser.add_argument("--history", default=DEFAULT_HISTORY, help="Time the prefill spans (default: %(default)s).")
    parser.add_argument(
        "--partition-interval", default=DEFAULT_INTERVAL, help="Time a partition holds (default: %(default)s)."
    )
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="COPY engineers (default: %(default)s).")
    parser.add_argument(
        "--before", default=DEFAULT_BEFORE, help="Writing measured before the retention starts (default: %(default)s)."
    )
    parser.add_argument(
        "--migration-probe",
        type=float,
        default=DEFAULT_PROBE_S,
        metavar="SECONDS",
        help="The run's migration probe interval (default: %(default)s).",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--keep-data-dir",
        action="store_true",
        help="Leave each layout's embedded data directory in place (default: removed once measured).",
    )
    parser.add_argument("--out", default=None, help="Results directory (default: results/retention-<timestamp>).")
    parser.add_argument(
        "locust_args", nargs=argparse.REMAINDER, help="After `--`: options for each Locust run, e.g. `-- --seed 3`."
    )


def run(args: argparse.Namespace) -> int:
    """Measure each layout, write the results, print the table; 2 when refused, 1 when a check failed."""
    try:
        settings = settings_of(args)
        layouts = layouts_of(args.layout)
        if args.pg_dsn is not None and len(layouts) > 1:
            raise ValueError("--pg-dsn holds one layout: give one --layout (or none: an embedded server per layout)")
    except ValueError as error:
        sys.stderr.write(f"firehose retention: {error}\n")
        return 2
    out = results_dir(args.out, "retention")
    results = {}
    for layout in layouts:
        data_dir = Path(args.embedded_data_dir or default_data_dir().with_name("postgres-retention")) / layout
        services = RunServices(
            given_addresses(args), embedded_port=args.embedded_port, embedded_data_dir=str(data_dir), layout=layout
        )
        try:
            dsn = services.start_postgres()
            if (refusal := refusal_to_empty(dsn, "retention", args.yes)) is not None:
                sys.stderr.write(refusal + "\n")
                return 2
            print(f"{layout}: prefilling {args.prefill} over {args.history} on {redact(dsn)}", flush=True)
            results[layout] = measure_layout(dsn, layout, settings, out, print)
            results[layout]["machine"] = machine_info(dsn)
        except Refused as refusal:
            sys.stderr.write(f"firehose retention: {refusal}\n")
            return 2
        finally:
            services.stop()
            if services.embedded is not None and not args.keep_data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
                services.embedded.log_file.unlink(missing_ok=True)
                (data_dir.parent / f".{layout}.lock").unlink(missing_ok=True)  # EmbeddedPostgres.start's
                with suppress(OSError):  # the folder made for the layouts, unless it holds something else
                    data_dir.parent.rmdir()
    result = {
        "settings": {**vars(settings), "keep": args.keep, "history": args.history, "prefill": args.prefill,
                     "partition_interval": args.partition_interval, "layouts": layouts},
        "layouts": results,
        "ok": all(layout["ok"] for layout in results.values()),
    }  # fmt: skip
    write_report(out, "retention", render_markdown(result), result)
    return 0 if result["ok"] else 1


def settings_of(args: argparse.Namespace) -> Settings:
    """The options as Settings; a ValueError naming the option that does not parse."""
    prefill = str(args.prefill).strip()
    return Settings(
        keep_s=parse_duration(args.keep),
        history_s=parse_duration(args.history),
        interval_s=parse_duration(args.partition_interval),
        prefill_rows=int(prefill) if prefill.isdigit() else None,
        prefill_bytes=None if prefill.isdigit() else parse_size(prefill),
        users=args.users,
        before_s=parse_duration(args.before),
        probe_s=args.migration_probe,
        locust_args=tuple(passed_to_locust(args.locust_args)),
    )


def layouts_of(text: str) -> list[str]:
    layouts = [layout.strip() for layout in text.split(",") if layout.strip()]
    if not layouts or any(layout not in LAYOUTS for layout in layouts):
        raise ValueError(f"--layout {text!r}: one or more of {', '.join(LAYOUTS)}, comma-separated")
    return layouts


def measure_layout(dsn: str, layout: str, settings: Settings, out: Path, progress: Callable[..., None] = print) -> dict:
    """Prefill, then the retention while a COPY writer runs, as the JSON document of one layout."""
    empty_tables(dsn)
    anchor_s = int(time.time())
    if layout == "partitioned":
        create_partitions(dsn, _utc(anchor_s - settings.history_s - settings.interval_s),
                          _utc(anchor_s + 2 * settings.interval_s), settings.interval_s)  # fmt: skip
    started = time.perf_counter()
    prefill_key, prefilled = prefill(dsn, settings, anchor_s * 1_000_000)
    prefill_s = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")  # the retention's VACUUM does only its own work
        conn.execute("CHECKPOINT")  # and the writers do not pay for the prefill's
    cutoff = _utc((anchor_s - settings.keep_s) // settings.interval_s * settings.interval_s)
    older = remove.rows_older_than(dsn, cutoff)
    progress(
        f"{layout}: prefilled {sum(prefilled.values()):,} rows in {prefill_s:.0f} s; "
        f"{sum(older.values()):,} older than {cutoff:%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    tables = {"before": remove.table_stats(dsn)}
    with tempfile.TemporaryDirectory(prefix="firehose-retention-") as scratch:
        timeline_path, summary_path = Path(scratch) / "timeline.jsonl", Path(scratch) / "summary.json"
        log_path = out / f"{layout}-locust.log"
        out.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            locust = start_locust(
                CopyEngineer.__name__, "--headless", "--only-summary", "-u", str(settings.users),
                "-r", str(settings.users), "-t", RUN_LIMIT, "--pg-dsn", dsn, "--summary-json", str(summary_path),
                "--continuous", "--layout", layout, "--partition-interval", str(settings.interval_s),
                "--timestamps", "live", "--migration-probe", str(settings.probe_s), "--seed", str(RUN_SEED),
                *settings.locust_args,
                log=log, locustfiles=(str(TIMELINE_PLUGIN),), env={**os.environ, TIMELINE_FILE: str(timeline_path)},
            )  # fmt: skip
            try:
                steps = measure_steps(dsn, layout, cutoff, settings, locust, timeline_path, tables, progress)
                locust.send_signal(signal.SIGINT)  # as a user's Ctrl-C: the run drains and reconciles
                returncode = locust.wait(RUN_OVERHEAD_S)
            finally:
                if locust.poll() is None:
                    os.killpg(locust.pid, signal.SIGKILL)
                    locust.wait()
        timeline = Timeline.read(timeline_path)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return assemble(dsn, layout, settings, cutoff, prefilled, prefill_key, prefill_s, older, tables, steps,
                    timeline, summary, returncode)  # fmt: skip


def prefill(dsn: str, settings: Settings, anchor_us: int) -> tuple[int, dict[str, int]]:
    """COPY whole traces of PREFILL_SEED's engineers over --history ending at `anchor_us`, until --prefill's rows
    or size; their writer key and the rows loaded per table."""
    ids, pools = own_ids(dsn, PREFILL_SEED, "retention prefill"), Pools.cached(CATALOGUE_SEED)
    loaded, next_check, ordinal = dict.fromkeys(TABLES, 0), SIZE_CHECK_ROWS, 0
    writer = CopyWriter(dsn, Events())
    try:
        while not _prefilled(dsn, settings, loaded, next_check):
            ordinal += 1
            engineer = EngineerTelemetry(pools, engineer_seed(PREFILL_SEED, 0, ordinal), anchor_us=anchor_us,
                                         window_s=settings.history_s)  # fmt: skip
            for trace in engineer.traces(ids):
                writer.write(trace)
                for table, rows in trace.by_table():
                    loaded[table] += len(rows)
            if sum(loaded.values()) >= next_check:
                writer.flush()
                next_check += SIZE_CHECK_ROWS
    finally:
        writer.close()
    return ids.writer_key, loaded


def _prefilled(dsn: str, settings: Settings, loaded: dict[str, int], next_check: int) -> bool:
    rows = sum(loaded.values())
    if settings.prefill_rows is not None:
        return rows >= settings.prefill_rows
    if rows < next_check - SIZE_CHECK_ROWS or rows == 0:  # the size is looked at once per SIZE_CHECK_ROWS
        return False
    stats = remove.table_stats(dsn)
    return sum(table["bytes"] for table in stats.values()) >= settings.prefill_bytes


def measure_steps(
    dsn: str,
    layout: str,
    cutoff: datetime,
    settings: Settings,
    locust: subprocess.Popen,
    timeline_path: Path,
    tables: dict,
    progress: Callable[..., None],
) -> dict:
    """Writing before, then the retention (and, plain, the VACUUM), each timed with its WAL; `tables` gains each
    step's table figures."""

    def writing() -> bool:
        return timeline_path.exists() and Timeline.read(timeline_path).first_acknowledged_at() is not None

    wait_for(writing, "the run's first rows committed", locust, deadline_s=FIRST_ROWS_S)
    steps = {"before": _step(dsn, lambda: _wait_while_running(locust, settings.before_s))}
    progress(f"{layout}: writing; removing rows older than {cutoff:%Y-%m-%d %H:%M} UTC", flush=True)
    if layout == "partitioned":
        steps["retention"] = _step(dsn, lambda: remove.detach_and_drop(dsn, cutoff))
        tables["after_retention"] = remove.table_stats(dsn)
    else:
        steps["retention"] = _step(dsn, lambda: remove.delete_older(dsn, cutoff))
        tables["after_retention"] = remove.table_stats(dsn)
        progress(f"{layout}: VACUUM", flush=True)
        steps["vacuum"] = _step(dsn, lambda: remove.vacuum(dsn))
        tables["after_vacuum"] = remove.table_stats(dsn)
    if locust.poll() is not None:
        raise RuntimeError(f"the Locust run ended (exit code {locust.returncode}) before the retention was measured")
    return steps


def _step(dsn: str, action: Callable[[], object]) -> dict:
    """`action()` timed: its start and end (seconds since the epoch), WAL positions around it, what it returned."""
    lsn_from, start = remove.wal_lsn(dsn), time.time()
    outcome = action()
    end, lsn_to = time.time(), remove.wal_lsn(dsn)
    return {"start": start, "end": end, "wal_bytes": remove.wal_bytes(dsn, lsn_from, lsn_to), "outcome": outcome}


def _wait_while_running(locust: subprocess.Popen, seconds: float) -> None:
    """The measuring window before the retention: the run writes undisturbed for `seconds` (a measurement, not a
    wait for a state); an error if the run ends meanwhile."""
    try:
        locust.wait(seconds)
    except subprocess.TimeoutExpired:
        return
    raise RuntimeError(f"the Locust run ended (exit code {locust.returncode}) while measuring the writing before")


def assemble(
    dsn: str,
    layout: str,
    settings: Settings,
    cutoff: datetime,
    prefilled: dict[str, int],
    prefill_key: int,
    prefill_s: float,
    older: dict[str, int],
    tables: dict,
    steps: dict,
    timeline: Timeline,
    summary: dict | None,
    returncode: int,
) -> dict:
    """One layout's JSON document: each step's figures, the tables, the run and the checks."""
    probe = (summary or {}).get("migration_probe") or {"timeline": [], "lock_timeout_ms": 0}
    before = steps["before"]
    writers_wal_per_row = before["wal_bytes"] / max(timeline.rows_between(before["start"], before["end"]), 1)
    figures = {}
    for name, step in steps.items():
        writers_wal = writers_wal_per_row * timeline.rows_between(step["start"], step["end"])
        figures[name] = {
            "wall_s": round(step["end"] - step["start"], 3),
            "wal_bytes": step["wal_bytes"],
            "wal_bytes_beyond_writers": None if name == "before" else round(step["wal_bytes"] - writers_wal),
            "writers": timeline.writers(step["start"], step["end"], "COPY"),
            "probe": probe_during(probe["timeline"], probe["lock_timeout_ms"], step["start"], step["end"]),
        }  # fmt: skip
    removed = steps["retention"]["outcome"] if layout == "plain" else older
    figures["retention"]["method"] = (
        "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY, then DROP TABLE" if layout == "partitioned"
        else "DELETE ... WHERE <time> < cutoff"
    )  # fmt: skip
    if layout == "partitioned":
        figures["retention"].update(steps["retention"]["outcome"])  # partitions, detach_s, drop_s, slowest_detach_s
    kept_prefill, left_older = rows_of_key(dsn, prefill_key), remove.rows_older_than(dsn, cutoff)
    events = (summary or {}).get("events", {})
    checks = {
        "removed_equal_older": {"ok": removed == older, "removed": removed, "older_than_cutoff": older},
        "nothing_older_left": {"ok": not any(left_older.values()), "older_than_cutoff_after": left_older},
        "prefill_kept": {
            "ok": kept_prefill == sum(prefilled.values()) - sum(older.values()),
            "in_database": kept_prefill,
            "expected": sum(prefilled.values()) - sum(older.values()),
        },
        "run_reconciled": {
            "ok": summary is not None and summary["run"]["verdict"] == "OK" and events.get("lost") == 0,
            "returncode": returncode,
            "verdict": (summary or {}).get("run", {}).get("verdict"),
            "events": events,
        },
    }
    return {
        "layout": layout,
        "cutoff": cutoff.isoformat(),
        "prefill": {"rows": prefilled, "seconds": round(prefill_s, 1), "writer_key": prefill_key},
        "rows_removed": sum(removed.values()),
        "steps": figures,
        "tables": tables,
        "run": {
            "rows_per_s": (summary or {}).get("writes", {}).get("rows_per_s"),
            "probe_attempts": probe.get("attempts"),
        },
        "checks": checks,
        "ok": all(check["ok"] for check in checks.values()),
    }


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)
