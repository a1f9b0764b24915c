"""Past runs, newest first, from the local store of summaries (firehose.report.store).

    firehose runs                                  # a table: reference, start, label, classes, rows/s, ...
    firehose runs --label "after index change" --class CopyEngineer --since 2026-12-01 --format csv

Each run's reference (first column) names it in `firehose compare` and `--baseline`; so does its label, for every
run under it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime

from firehose.report.compare import OVERVIEW_COLUMNS, overview
from firehose.report.store import StoredRun, load_all, load_database, store_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", default=None, help="Only runs with this label.")
    parser.add_argument("--class", dest="user_class", default=None, help="Only runs with this user class.")
    parser.add_argument("--since", default=None, help="Only runs started on or after this date (YYYY-MM-DD[THH:MM]).")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="Output format.")
    parser.add_argument("--limit", type=int, default=None, help="At most this many runs (the newest).")
    parser.add_argument(
        "--pg-dsn", default=None, help="Read the runs the database keeps (firehose_run_summaries), not the local store."
    )


def selected(runs: list[StoredRun], label: str | None, user_class: str | None, since: str | None) -> list[StoredRun]:
    """The runs that match every filter given."""
    start = datetime.fromisoformat(since).isoformat() if since else ""
    return [
        run
        for run in runs
        if (label is None or run.label == label)
        and (user_class is None or user_class in run.classes)
        and (not start or run.started_at[: len(start)] >= start)
    ]


def run(args: argparse.Namespace) -> int:
    try:
        kept = load_database(args.pg_dsn) if args.pg_dsn is not None else load_all()
        runs = selected(kept, args.label, args.user_class, args.since)
    except ValueError:
        sys.stderr.write(f"firehose runs: --since {args.since}: give a date, e.g. 2026-12-01\n")
        return 2
    rows = [overview(stored) for stored in runs[: args.limit]]
    if args.format == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, OVERVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    elif not rows:
        sys.stdout.write(f"no runs kept in {store_dir()} match\n")
    else:
        text = [[("" if value is None else str(value)) for value in r.values()] for r in rows]
        widths = [max(len(column), *(len(line[i]) for line in text)) for i, column in enumerate(OVERVIEW_COLUMNS)]
        for line in (list(OVERVIEW_COLUMNS), *text):
            sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")
    return 0
