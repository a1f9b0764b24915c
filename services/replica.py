"""A streaming hot-standby replica of the embedded PostgreSQL, for the analysts (`--replica`).

Made with `pg_basebackup` from the primary's own binaries (`-R -X stream -C -S`: a standby that streams through a
replication slot of its own, SLOT), on its own port and in its own data directory, and kept there between runs:
the next run starts it again and it replays what it missed through the slot. It is rebuilt only when the
directory is not a standby of this primary (another system identifier, no standby.signal) or the slot is gone
or lost; a slot left with no replica (an orphan: its directory removed, or rebuilt) is dropped first. The slot
keeps WAL for the replica, at most MAX_SLOT_WAL_KEEP: a replica far behind loses its slot rather than filling the
disk. The replica's postmaster, like the primary's, is stopped by a `Watchdog` if the process that started it dies.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import psycopg
from psycopg import sql

from services.postgres import EmbeddedPostgres, _allow_traversal, server_user
from services.watchdog import Watchdog

logger = logging.getLogger("firehose")

SLOT = "firehose_replica"
"""The replication slot of the primary's one replica."""
MAX_SLOT_WAL_KEEP = "4GB"
"""The primary's max_slot_wal_keep_size: a stopped or slow replica holds back at most this much WAL (a burst of
1M rows writes ~2.5 GB of it); past it the slot is lost and the next run rebuilds the replica."""
STANDBY_SETTINGS = {"hot_standby": "on", "hot_standby_feedback": "off"}
"""The replica serves queries while it replays; without feedback, a query that holds back the replay of a vacuum's
cleanup longer than max_standby_streaming_delay (30 s) is cancelled (a recovery conflict, SQLSTATE 40001)."""


def default_replica_dir(primary_dir: Path) -> Path:
    """Beside the primary's data directory: `<primary dir>-standby`."""
    return primary_dir.with_name(f"{primary_dir.name}-standby")


class StreamingReplica:
    """The replica of `primary` (an `EmbeddedPostgres` that runs) on 127.0.0.1:`port`, its data in `data_dir`."""

    def __init__(
        self, primary: EmbeddedPostgres, port: int, data_dir: Path | None = None, watchdog: Watchdog | None = None
    ) -> None:
        self.primary = primary
        self.data_dir = Path(data_dir) if data_dir else default_replica_dir(primary.data_dir)
        settings = {**primary.settings, **STANDBY_SETTINGS}
        self.server = EmbeddedPostgres(self.data_dir, port, settings, bin_dir=primary.bin, watchdog=watchdog)
        self.backup: dict | None = None
        """The base backup made by this `start` (seconds, bytes), None when the directory was reused."""

    @property
    def dsn(self) -> str:
        return self.server.dsn

    def start(self) -> str:
        """Make (or reuse) the replica, start it; returns its DSN."""
        with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET max_slot_wal_keep_size = {}").format(sql.Literal(MAX_SLOT_WAL_KEEP)))
            conn.execute("SELECT pg_reload_conf()")
            primary_id = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
            slot = conn.execute(
                "SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            ).fetchone()
            reusable = slot is not None and slot[1] != "lost" and self.standby_of() == primary_id
            if not reusable:
                if self.server.running():  # a replica left running, of a lost slot: it is rebuilt
                    self.server.started_here = True
                    self.server.stop()
                if slot is not None:  # an orphan: no replica of this primary follows it
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
        if not reusable:
            self._base_backup()
        return self.server.start()

    def standby_of(self) -> int | None:
        """The system identifier of the primary this directory is a standby of (None: not a standby)."""
        if not (self.data_dir / "standby.signal").exists():
            return None
        result = self.server._run([str(self.server.bin / "pg_controldata"), "-D", str(self.data_dir)], check=False)
        for line in result.stdout.splitlines():
            if line.startswith("Database system identifier:"):
                return int(line.split(":", 1)[1])
        return None

    def _base_backup(self) -> None:
        """pg_basebackup of the primary into a fresh directory, creating the slot; its time and size logged."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if server_user() is not None:  # pg_basebackup runs as the server's user: it must reach the directory
            _allow_traversal(self.data_dir.parent)
        self.data_dir.mkdir(mode=0o700)
        self.server._chown(self.data_dir)
        started = time.monotonic()
        self.server._run(
            [
                str(self.server.bin / "pg_basebackup"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                "-p", str(self.primary.port), "-U", "postgres", "-X", "stream", "-c", "fast", "-R", "-C",
                "-S", SLOT,
            ]
        )  # fmt: skip
        self.backup = {"seconds": time.monotonic() - started, "bytes": _size(self.data_dir)}
        logger.info(
            "replica made: pg_basebackup of the primary in %.1f s, %.0f MB, in %s",
            self.backup["seconds"],
            self.backup["bytes"] / 1e6,
            self.data_dir,
        )

    def stop(self) -> None:
        """Stop the replica (fast shutdown), if this object started it."""
        self.server.stop()


_BEHIND = "SELECT greatest(pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn()), 0)::bigint"


def wait_caught_up(primary_dsn: str, replica_dsn: str, timeout_s: float, poll_s: float = 0.1) -> int:
    """Wait at most `timeout_s` for the replica to replay the primary's current WAL position; the bytes it is still
    behind (0: caught up)."""
    with psycopg.connect(primary_dsn, autocommit=True) as primary:
        target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(replica_dsn, autocommit=True) as replica:
        while True:
            behind = replica.execute(_BEHIND, [target]).fetchone()[0]
            if behind == 0 or time.monotonic() >= deadline:
                return behind
            time.sleep(poll_s)


def remove(data_dir: Path, primary_dsn: str | None) -> None:
    """`firehose reset`: delete a replica's directory and log, and its slot on the primary when one is given."""
    if primary_dsn is not None:
        with psycopg.connect(primary_dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [SLOT]).fetchone():
                conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    shutil.rmtree(data_dir, ignore_errors=True)
    for leftover in (data_dir.parent / f"{data_dir.name}.log", data_dir.parent / f".{data_dir.name}.lock"):
        leftover.unlink(missing_ok=True)


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
