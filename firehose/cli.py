"""The `firehose` command: one subcommand per module (`firehose sweep ...`).

Each command's module exposes `add_arguments(parser)` and `run(args) -> int` (the exit code); its
docstring's first line is the command's help. Adding a command is one entry in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "sweep": "firehose.tools.sweep.main",
    "bench": "firehose.tools.bench.main",
    "optimize": "firehose.tools.optimize.main",
    "chaos": "firehose.tools.chaos.main",
    "soak": "firehose.tools.soak.main",
    "capacity": "firehose.tools.capacity.main",
    "grow": "firehose.tools.grow.main",
    "retention": "firehose.tools.retention.main",
    "roles": "firehose.admin.roles",
    "reset": "firehose.admin.reset",
    "runs": "firehose.tools.runs.listing",
    "compare": "firehose.tools.runs.comparing",
    "run": "firehose.tools.runs.repeat",
    "valve": "firehose.admin.valve",
}
"""Subcommand name -> the module that implements it."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with a subparser per command."""
    parser = argparse.ArgumentParser(prog="firehose", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        subparser = subparsers.add_parser(name, help=summary, description=module.__doc__)
        subparser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's paragraphs
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; returns its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
