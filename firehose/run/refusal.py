"""A run refused before it starts: one line naming the option, exit code 2 (ExitCode.BAD_SETTING), no traceback,
nothing left behind.

Two moments, both before anything is started or recorded:
- as soon as Locust has parsed the command line (with locust.conf and the LOCUST_* variables), before it forks
  --processes workers and binds its ports: the values (`preflight.check_options`), the class names, the ports;
- at Locust's init (the database, the services' binaries, the connection budget), after the fork: the workers
  Locust forked are ended, or they would try to reach this master for a minute and join the next one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from locust import User

from firehose.run import endpoints, preflight
from firehose.run.exit_codes import ExitCode
from firehose.run.preflight import Refused


def refuse(refusal: Refused) -> NoReturn:
    """One line, exit code 2 (ExitCode.BAD_SETTING), no traceback: a setting refused before anything started."""
    sys.stderr.write(f"firehose: {refusal}\n")
    sys.stderr.flush()
    raise SystemExit(ExitCode.BAD_SETTING) from None


def check_when_parsed(
    parser: argparse.ArgumentParser, user_classes: list[type[User]], on_checked: Callable[[], None]
) -> None:
    """Check the options as soon as Locust has parsed them (command line, locust.conf, LOCUST_* variables):
    Locust forks --processes workers and binds its master port right after, before any event, so a refusal at
    init would leave those workers behind. `parse_args` of the parser Locust's main uses is the one seam there.
    `on_checked` is called once they pass (Locust's web UI parses the command line again later, to fill its form,
    and its own port is taken then)."""
    parse_args = parser.parse_args
    available = [user_class.__name__ for user_class in user_classes]

    def parse_and_check(*args, **kwargs) -> argparse.Namespace:
        options = parse_args(*args, **kwargs)
        try:
            preflight.check_user_classes(getattr(options, "user_classes", None) or [], available)
            preflight.check_options(options)
            endpoints.choose_master_port(options)
            endpoints.check_web_port(options)
        except Refused as refusal:
            refuse(refusal)
        on_checked()
        return options

    parser.parse_args = parse_and_check


def forked_workers() -> list[int]:
    """This process's children: at init, before firehose starts anything, the workers Locust forked."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if parent == os.getpid():
            children.append(int(stat.parent.name))
    return children


def end_workers(workers: list[int]) -> None:
    """SIGKILL the forked workers of a run refused at init and wait until they are gone, leaving them to Locust's
    exit to reap (its own exit handler forgets a worker that has not exited yet, which then lives on ~60 s)."""
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except (ProcessLookupError, ChildProcessError):
            pass
