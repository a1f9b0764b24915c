"""The run's tables and time: --layout, --partition-interval, --timestamps, --time-scale, and the partitions made ahead.

On the partitioned layout (schema/partitioned.sql) a row whose time has no partition is refused, so the coordinator
makes every partition the run will write before it starts: with `--timestamps history` the span of --history ending
at the run's anchor (plus the longest trace), with `--timestamps live` the data's time from the anchor on, kept
`AHEAD_S` of wall-clock time ahead by a greenlet for as long as the run lasts (a run without -t has no end to make
them for). One interval of margin on each side: a worker whose clock runs a little ahead still finds its partition.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime

import gevent
import psycopg

from firehose.run.preflight import partition_interval_s
from services.postgres import LAYOUTS, create_partitions
from telemetry.generator import TRACE_SECONDS, LiveClock

logger = logging.getLogger(__name__)

TIMESTAMPS = ("history", "live")
"""--timestamps: spread over --history ending at the run's start (every partition of the span takes writes), or
the time each trace is composed (time moves forward: old partitions stop taking writes, and can be dropped)."""
AHEAD_S = 60
"""Wall-clock seconds of data time the keeper holds partitions for, ahead of now (x --time-scale)."""
KEEP_EVERY_S = 10
"""How often the keeper makes the next partitions of a live run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Tables and time")
    group.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="plain",
        help="The telemetry tables: plain (schema/tables.sql) or partitioned by time (schema/partitioned.sql, one "
        "partition per --partition-interval, made ahead by the run). A database whose tables are in the other "
        "layout is refused, with the fix.",
    )
    group.add_argument(
        "--partition-interval",
        default="1d",
        metavar="DURATION",
        help="Time each partition holds on the partitioned layout (e.g. 1d, 6h, 1h).",
    )
    group.add_argument(
        "--timestamps",
        choices=TIMESTAMPS,
        default="history",
        help="The rows' times: spread over --history ending when the run starts (history), or the time each trace "
        "is written (live: time moves forward, as in production, so old partitions stop taking writes).",
    )
    group.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="With --timestamps live: data time passes this many times faster than the clock (60: a run's minute "
        "stands for an hour, so a short run spans several partitions).",
    )


def layout(options: argparse.Namespace) -> str:
    """--layout ("plain" when the option is absent, as in tools that build their own parser)."""
    return getattr(options, "layout", None) or "plain"


def live_clock(options: argparse.Namespace, anchor_us: int) -> LiveClock | None:
    """The data's clock under --timestamps live; None under history."""
    if getattr(options, "timestamps", "history") != "live":
        return None
    return LiveClock(anchor_us, getattr(options, "time_scale", 1.0))


class PartitionKeeper:
    """Makes the partitions a run writes, before it starts and, for live timestamps, ahead of the data's time."""

    def __init__(self, conninfo: str, options: argparse.Namespace, anchor_us: int, history_s: int) -> None:
        self.conninfo = conninfo
        self.interval_s = partition_interval_s(options)
        self.clock = live_clock(options, anchor_us)
        self.anchor_us = anchor_us
        self.history_s = history_s
        self.made: list[str] = []
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """The partitions of the run's first times now (errors raise: the run cannot start without them); a live
        run's next ones from a greenlet."""
        margin_us = self.interval_s * 1_000_000
        if self.clock is None:
            start = self.anchor_us - self.history_s * 1_000_000
            self._make(start - margin_us, self.anchor_us + TRACE_SECONDS * 1_000_000 + margin_us)
        else:
            self._make_ahead()
            self._greenlet = gevent.spawn(self._keep)
        if self.made:
            logger.info("partitioned layout: %d partitions made ahead of the run", len(self.made))

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def _make_ahead(self) -> None:
        margin_us = self.interval_s * 1_000_000
        self._make(self.anchor_us - margin_us, self.clock.at(time.time() + AHEAD_S) + margin_us)

    def _keep(self) -> None:
        while True:
            gevent.sleep(KEEP_EVERY_S)
            try:
                self._make_ahead()
            except psycopg.Error as error:  # the database restarting: the next turn makes them
                logger.warning("partitioned layout: partitions not made ahead yet (%s)", error)

    def _make(self, start_us: int, end_us: int) -> None:
        start, end = (datetime.fromtimestamp(us / 1_000_000, UTC) for us in (start_us, end_us))
        self.made += create_partitions(self.conninfo, start, end, self.interval_s)
