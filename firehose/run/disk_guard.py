"""The disk guard: stop writing before a run spends its byte budget, or fills the server's volume.

A greenlet of the coordinator checks every `CHECK_S`:
- `--disk-budget SIZE`: the growth of `pg_database_size` since the run started (any server), with the WAL in
  pg_wal (`pg_ls_waldir`) when a replica's slot may hold it back (`count_wal`: --replica);
- `--disk-floor SIZE` (default `DEFAULT_FLOOR`): the free bytes on the volume of the server's data directory, for a
  server on this machine only (the embedded one, or one reached over loopback whose `SHOW data_directory` is a local
  folder). SIZE may be a share of the volume (`5%`); 0 turns the floor off.
When one is crossed, the run stops through the coordinator's path for errors of the setup ("firehose stops the run:
..."): writers commit what they buffered, the summary says why, the exit code is STOPPED (firehose.run.exit_codes).

The guard outlives database restarts: when its connection drops it says so once ("disk guard blind: ..."), keeps
checking the floor (a local volume needs no connection), reconnects every `CHECK_S` and says when it watches again.
Its budget keeps the baseline of the run's start. What it could not watch (a floor on a server elsewhere, the time
it was blind, blind at the end) is its summary section (`report`).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import psycopg
from psycopg.conninfo import conninfo_to_dict

from firehose.run.preflight import CONNECT_TIMEOUT_S, Refused
from services.postgres import default_data_dir
from writers.spool import parse_size  # the one size parser (the valve's --valve-max-spool reads sizes too)

logger = logging.getLogger("firehose")

CHECK_S = 1.0
"""How often the guard looks: at ~40 MB/s of rows here, a budget is overshot by about this much writing."""
DEFAULT_FLOOR = "1GB"
"""Free bytes a local server's volume keeps by default: room for WAL (max_wal_size is 4GB, but checkpoints recycle
it) and for the server to shut down cleanly."""
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", ""}
"""libpq hosts that are this machine (empty: the default Unix socket)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disk-budget",
        default=None,
        help="Stop writing once the database has grown by this much since the run started (pg_database_size; "
        "e.g. 500MB, 20GB; any server). Default: no budget.",
    )
    parser.add_argument(
        "--disk-floor",
        default=DEFAULT_FLOOR,
        help="For a server on this machine (embedded, or over loopback): stop writing once its data directory's "
        f"volume has less free space than this (e.g. 2GB, or 5%% of the volume; 0: off). Default: {DEFAULT_FLOOR}.",
    )


def floor_bytes(text: str, volume_bytes: int) -> int:
    """The floor `text` gives on a volume of `volume_bytes`: a size, or a share of the volume (`5%`)."""
    text = str(text).strip()
    if text.endswith("%"):
        share = float(text[:-1])
        if not 0 <= share < 100:
            raise ValueError(f"{text!r} is not a share of the volume: give 0% to 99%")
        return int(volume_bytes * share / 100)
    return parse_size(text)


def check_options(options: argparse.Namespace) -> None:
    """--disk-budget and --disk-floor parse (one line, exit code 2 otherwise)."""
    for flag, dest, parse in (
        ("--disk-budget", "disk_budget", parse_size),
        ("--disk-floor", "disk_floor", lambda text: floor_bytes(text, 0)),
        ("--valve-max-spool", "valve_max_spool", parse_size),
    ):
        value = getattr(options, dest, None)
        if value in (None, ""):  # the web UI's form sends "" for an empty field
            continue
        try:
            parse(value)
        except ValueError as error:
            raise Refused(f"{flag}: {error}", dest) from None
    if getattr(options, "disk_budget", None) not in (None, "") and parse_size(options.disk_budget) == 0:
        raise Refused("--disk-budget must be more than 0 bytes (leave it out for no budget)", "disk_budget")


def local_data_dir(conninfo: str) -> Path | None:
    """The data directory of the server at `conninfo` when it is on this machine and readable from here, else None."""
    host = conninfo_to_dict(conninfo).get("host") or os.environ.get("PGHOST", "")
    if not all(part in LOOPBACK_HOSTS or part.startswith("/") for part in host.split(",")):
        return None
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            path = Path(conn.execute("SHOW data_directory").fetchone()[0])
    except psycopg.Error:  # reading it needs a superuser or pg_read_all_settings
        return None
    return path if path.exists() else None


def pretty(size: float) -> str:
    """`size` bytes in the largest unit that keeps it at 1 or more (MB, GB, as PostgreSQL's pg_size_pretty)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024:
            return f"{size:,.1f} {unit}" if unit != "B" else f"{size:,.0f} B"
        size /= 1024
    return f"{size:,.1f} TB"


LARGE_DATA_DIR = 2 * 1024**3
"""Size of the embedded data directory past which a run says so, with the command that empties it: a few bursts
leave this much (a row costs ~2.6 KB on disk, ~2.5 KB of WAL)."""


def directory_size(path: Path) -> int:
    """Bytes of the files under `path` (WAL included)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # a running server removes WAL and temporary files as we walk
                continue
    return total


def reset_command(data_dir: Path) -> str:
    """The command that empties this data directory, as a user types it."""
    default = data_dir == default_data_dir()
    return "firehose reset" + ("" if default else f" --embedded-data-dir {data_dir}")


def warn_if_large(data_dir: Path, threshold: int = LARGE_DATA_DIR) -> None:
    """Log the data directory's size, with the command that empties it, when it passes `threshold` bytes."""
    size = directory_size(data_dir)
    if size > threshold:
        logger.warning(
            "the embedded PostgreSQL's data in %s takes %s: `%s` empties it (`--remove` deletes it)",
            data_dir,
            pretty(size),
            reset_command(data_dir),
        )


class DiskGuard:
    """Watches a run's database growth and its server volume's free space; tells `on_crossed` once, then stops.
    Through a database restart it reconnects and goes on watching (see the module's docstring)."""

    def __init__(
        self,
        conninfo: str,
        *,
        budget: int | None,
        floor: str | None,
        data_dir: Path | None,
        on_crossed: Callable[[str], None],
    ) -> None:
        self.conninfo = conninfo
        self.budget = budget
        self.data_dir = data_dir
        self.floor = None
        if data_dir is not None and floor not in (None, ""):
            volume = os.statvfs(data_dir)
            self.floor = floor_bytes(floor, volume.f_blocks * volume.f_frsize) or None
        self.floor_text = floor
        self.floor_unwatched = (
            "the server's data directory is not on this machine (or not readable from here)"
            if data_dir is None and floor not in (None, "") and floor_bytes(floor, 1024**4) > 0
            else None
        )
        """Why a floor asked for is not watched (None when it is, or none was asked for)."""
        self.on_crossed = on_crossed
        self.also_watched: list[Path] = []
        """Other folders whose volume the floor watches too (the valve's spool: its bytes count in the floor)."""
        self._greenlet: gevent.Greenlet | None = None
        self.growth: int | None = None
        """The database's growth at the last look (None before the first)."""
        self.reconnects = 0
        """Times the guard lost its connection (a restart, an outage) and reconnected."""
        self.blind_s = 0.0
        """Seconds the guard could not read the database's size, summed over its outages."""
        self.blind_since: float | None = None
        """monotonic() when its current outage began; None while it watches."""
        self.count_wal = False
        """Count pg_wal's size with the database's: a replication slot (--replica) keeps WAL the replica needs."""

    @classmethod
    def from_options(
        cls, conninfo: str, options: argparse.Namespace, data_dir: Path | None, on_crossed: Callable[[str], None]
    ) -> DiskGuard:
        """The guard the options ask for; `data_dir` is the embedded server's, else looked up (a local server's)."""
        budget = getattr(options, "disk_budget", None)
        return cls(
            conninfo,
            budget=parse_size(budget) if budget not in (None, "") else None,
            floor=getattr(options, "disk_floor", DEFAULT_FLOOR),
            data_dir=data_dir if data_dir is not None else local_data_dir(conninfo),
            on_crossed=on_crossed,
        )

    def also_watch(self, folder: Path) -> None:
        """Watch the floor on `folder`'s volume too, unless it is the data directory's (watched already)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.data_dir is not None and folder.stat().st_dev != self.data_dir.stat().st_dev:
            self.also_watched.append(folder)

    @property
    def active(self) -> bool:
        return self.budget is not None or self.floor is not None

    def start(self) -> None:
        """Start watching from now (the budget counts growth from the database's size at this moment)."""
        if self.floor_unwatched is not None:
            logger.info("disk floor not watched: %s", self.floor_unwatched)
        if self.active and self._greenlet is None:
            self.growth, self.reconnects, self.blind_s, self.blind_since = None, 0, 0.0, None
            self._greenlet = gevent.spawn(self._watch)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def report(self) -> dict:
        """The summary's section: what was watched, and what was not (blind time, a floor it could not watch)."""
        blind_now = time.monotonic() - self.blind_since if self.blind_since is not None else 0.0
        return {
            "budget_bytes": self.budget,
            "floor_bytes": self.floor,
            "floor_unwatched": self.floor_unwatched,
            "growth_bytes": self.growth,
            "reconnects": self.reconnects,
            "blind_s": self.blind_s + blind_now,
            "blind_at_end": self.blind_since is not None,
        }

    def _watch(self) -> None:
        size = "SELECT pg_database_size(current_database())" + (
            " + (SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir())" if self.count_wal else ""
        )
        baseline: int | None = None
        while True:
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    if baseline is None:  # at the run's start (or the first look the database allowed)
                        baseline = conn.execute(size).fetchone()[0]
                    self._seeing()
                    while True:
                        gevent.sleep(CHECK_S)
                        self.growth = conn.execute(size).fetchone()[0] - baseline
                        if (reason := self._crossed(self.growth)) is not None:
                            self.on_crossed(reason)
                            return
            except psycopg.OperationalError as error:  # a restart or an outage: the writers meet and report it too
                self._blind(error)
            gevent.sleep(CHECK_S)
            if (reason := self._crossed(None)) is not None:  # the floor needs no connection
                self.on_crossed(reason)
                return

    def _blind(self, error: Exception) -> None:
        if self.blind_since is None:
            self.blind_since = time.monotonic()
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            logger.warning("disk guard blind: %s; reconnecting every %g s", first_line, CHECK_S)

    def _seeing(self) -> None:
        if self.blind_since is not None:
            blind = time.monotonic() - self.blind_since
            self.blind_s += blind
            self.blind_since = None
            self.reconnects += 1
            logger.info("disk guard watching again after %.1f s blind", blind)

    def _crossed(self, growth: int | None) -> str | None:
        """Why the run must stop now, if it must; `growth` None: not known (the database out of reach)."""
        if self.budget is not None and growth is not None and growth > self.budget:
            return (
                f"disk budget spent: the database grew by {pretty(growth)} since the run started, past "
                f"--disk-budget {pretty(self.budget)}"
            )
        for folder in (self.data_dir, *self.also_watched) if self.floor is not None else ():
            volume = os.statvfs(folder)
            free = volume.f_bavail * volume.f_frsize
            if free < self.floor:
                return (
                    f"disk floor reached: {pretty(free)} free on the volume of {folder}, under --disk-floor "
                    f"{self.floor_text} ({pretty(self.floor)})"
                )
        return None


def render(section: dict) -> list[str]:
    """The summary's lines on the disk guard: only what a user must know (it was blind, or could not watch)."""
    lines = []
    if section["floor_unwatched"]:
        lines.append(f"disk floor not watched: {section['floor_unwatched']}")
    if section["reconnects"] or section["blind_at_end"]:
        end = "; blind at the end (the database out of reach)" if section["blind_at_end"] else ""
        lines.append(
            f"disk guard: lost the database {section['reconnects'] + section['blind_at_end']:,} time(s), reconnected "
            f"{section['reconnects']:,}, blind {section['blind_s']:,.1f} s in all{end}"
        )
    return lines
