"""Run the same headless Locust run N times under one label, then show the group's medians with min-max.

    firehose run --repeat 3 --label "no indexes" -- CopyEngineer Analyst -u 58 --analysts 8 -t 20s

Everything after `--` goes to `locust -f locustfile.py --headless --only-summary` as is; each run is kept
(firehose.report.store) under the label, so `firehose compare LABEL OTHER` compares the groups with their spread.
The exit code is the first run's that was not 0 (0 when all passed).
"""

from __future__ import annotations

import argparse
import sys
import time

from firehose.report.compare import Group, comparison, render
from firehose.report.store import resolve
from firehose.tools.headless import locust_command, passed_to_locust, run_bounded

RUN_TIMEOUT_S = 3600
"""A bound on each run (Locust's own -t ends it long before): a run that hangs is killed, not waited for forever."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=1, help="How many runs (default %(default)s).")
    parser.add_argument("--label", default=None, help="The runs' label (default: repeat-<date and time>).")
    parser.add_argument("locust_args", nargs=argparse.REMAINDER, help="-- and Locust's arguments.")


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        sys.stderr.write(f"firehose run: --repeat must be at least 1, got {args.repeat}\n")
        return 2
    label = args.label or time.strftime("repeat-%Y%m%dT%H%M%S")
    locust_args = passed_to_locust(args.locust_args)
    code = 0
    for n in range(1, args.repeat + 1):
        sys.stdout.write(f"firehose run: run {n} of {args.repeat}, label {label!r}\n")
        sys.stdout.flush()
        returncode, timed_out = run_bounded(
            locust_command(*locust_args, "--label", label), RUN_TIMEOUT_S, sys.stdout, sys.stderr
        )
        if timed_out:
            sys.stderr.write(f"firehose run: run {n} killed after {RUN_TIMEOUT_S} s\n")
        if returncode and not code:
            code = returncode
    if runs := resolve(label):
        sys.stdout.write(render(comparison([Group(label, runs)])) + "\n")
    return code
