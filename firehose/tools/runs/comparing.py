"""Runs side by side: rows/s and MB/s per table, freshness, query p95s, lost and duplicates, with deltas.

    firehose compare 20261203T161502-run12 20261203T163010-run13    # two runs (references from `firehose runs`)
    firehose compare "before index" "after index"                   # two labels: medians [min-max] of each group
    firehose compare run.json other.json                            # summary JSON files

Each column after the first shows its delta to the first; "within spread" marks a difference smaller than the
runs' own spread (min-max of each group). A warning line names each setting, version or machine that differs.
"""

from __future__ import annotations

import argparse
import json
import sys

from firehose.report.compare import Group, comparison, render
from firehose.report.store import load_all, load_database, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN|LABEL", help="Runs (references, run ids or JSON files) or labels to compare."
    )
    parser.add_argument("--json", action="store_true", help="Print the comparison as JSON.")
    parser.add_argument(
        "--pg-dsn", default=None, help="Compare the runs the database keeps (references run<id>), not the local store."
    )


def run(args: argparse.Namespace) -> int:
    stored = load_database(args.pg_dsn) if args.pg_dsn is not None else load_all()
    groups = []
    for ref in args.runs:
        runs = resolve(ref, stored)
        if not runs:
            sys.stderr.write(f"firehose compare: {ref} names no kept run, label or summary file: see `firehose runs`\n")
            return 2
        groups.append(Group(ref, runs))
    result = comparison(groups)
    sys.stdout.write((json.dumps(result, indent=2) if args.json else render(result)) + "\n")
    return 0
