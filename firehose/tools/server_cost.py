"""What a run cost the server, per row: WAL bytes, bytes on disk, backends' CPU, commits and WAL syncs.

`ServerCost.sample` reads, before and after a run, what PostgreSQL itself counts:
- WAL: `pg_current_wal_lsn()` (the difference is every byte of WAL the run made, full-page images included);
- bytes on disk: `pg_total_relation_size` of the telemetry tables (heap, TOAST and indexes);
- commits: `pg_stat_database.xact_commit`, and WAL syncs (fsyncs of the WAL): `pg_stat_wal.wal_sync`;
- CPU: for a server on this machine, the user + system time in `/proc` of the postmaster and every process
  it forked (a backend that exited is counted in the postmaster's children's time once reaped), so what
  every backend, the WAL writer and the checkpointer spent. None for a remote server.

Cumulative statistics reach shared memory when a backend ends its transaction at most once a second (and
at exit), so `sample` waits (bounded) for the run's client backends to leave before reading. A pgBouncer's
server connections stay (`lingering`), and their last second of commits may be missing.

These are the figures a team scales from: WAL bytes and disk bytes per row size the disks and replication,
CPU per row sizes the cores, commits per row show what a strategy asks of the WAL flush.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from telemetry.layout import TABLES

CLIENTS_GONE_TIMEOUT_S = 15.0
"""How long `sample` waits for a finished run's client backends to exit (and flush their statistics)."""
CLIENTS_POLL_S = 0.05
_TICKS = os.sysconf("SC_CLK_TCK")

_SAMPLE = """
SELECT pg_current_wal_lsn()::text,
       {disk},
       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
       {wal_syncs},
       pg_backend_pid()
"""
_DISK = " + ".join(f"pg_total_relation_size('{table}')" for table in TABLES)
_WAL_SYNCS = {
    15: "(SELECT wal_sync FROM pg_stat_wal)",
    18: "(SELECT sum(fsyncs)::bigint FROM pg_stat_io WHERE object = 'wal')",
}
"""Where the server counts WAL fsyncs: pg_stat_wal until 17, pg_stat_io from 18."""
_OTHER_CLIENTS = """
SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()
"""


@dataclass(frozen=True)
class ServerSample:
    """The server's counters at one moment."""

    wal_lsn: str
    disk_bytes: int
    commits: int
    wal_syncs: int
    cpu_s: float | None
    """User + system seconds of the postmaster and all its processes, living and reaped; None if not local."""
    clients: int = 0
    """Other client backends of the database at the time (a pgBouncer's server connections, ...)."""


class ServerCost:
    """Samples one server's counters; `per_row` turns two samples and a row count into costs per row."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def sample(self, before: ServerSample | None = None, *, lingering: int = 0) -> ServerSample:
        """The counters now; after a run (`before` given), once the run's client backends have left: at most
        `before`'s plus `lingering` (the server connections a pgBouncer keeps) are left."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            clients = conn.execute(_OTHER_CLIENTS).fetchone()[0]
            if before is not None:
                deadline = time.monotonic() + CLIENTS_GONE_TIMEOUT_S
                while clients > before.clients + lingering and time.monotonic() < deadline:
                    time.sleep(CLIENTS_POLL_S)
                    clients = conn.execute(_OTHER_CLIENTS).fetchone()[0]
            syncs = _WAL_SYNCS[15 if conn.info.server_version < 180000 else 18]
            lsn, size, commits, syncs, pid = conn.execute(_SAMPLE.format(disk=_DISK, wal_syncs=syncs)).fetchone()
            cpu = server_cpu_s(pid)  # while our backend lives: it leads to the postmaster
        return ServerSample(lsn, size, commits or 0, syncs or 0, cpu, clients)

    def per_row(self, before: ServerSample, after: ServerSample, rows: int) -> dict:
        """Costs per row between two samples (and the totals they come from)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            wal = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", [after.wal_lsn, before.wal_lsn]).fetchone()[0]
        rows = max(rows, 1)
        cpu = None if before.cpu_s is None or after.cpu_s is None else after.cpu_s - before.cpu_s
        return {
            "rows": rows,
            "wal_bytes": int(wal),
            "disk_bytes": after.disk_bytes - before.disk_bytes,
            "commits": after.commits - before.commits,
            "wal_syncs": after.wal_syncs - before.wal_syncs,
            "server_cpu_s": cpu,
            "wal_bytes_per_row": float(wal) / rows,
            "disk_bytes_per_row": (after.disk_bytes - before.disk_bytes) / rows,
            "server_cpu_us_per_row": None if cpu is None else cpu / rows * 1e6,
            "commits_per_1k_rows": (after.commits - before.commits) / rows * 1000,
            "wal_syncs_per_1k_rows": (after.wal_syncs - before.wal_syncs) / rows * 1000,
        }


def server_cpu_s(backend_pid: int) -> float | None:
    """CPU seconds of the server a backend of ours belongs to: its postmaster and every process it forked."""
    stat = _stat(backend_pid)
    if stat is None:
        return None  # not on this machine
    postmaster = int(stat[1])
    postgres = {"postgres", "postmaster"}
    if _stat(postmaster) is None or Path(f"/proc/{postmaster}/comm").read_text().strip() not in postgres:
        return None
    return process_cpu_s(postmaster)


def process_cpu_s(pid: int) -> float | None:
    """User + system seconds of a local process, its reaped children and its living children (a postmaster's
    backends, a redis-server's append-only-file rewrite); None if there is no such process."""
    parent = _stat(pid)
    if parent is None:
        return None
    # Its own time and its reaped children's (cutime, cstime), then its living children's.
    ticks = sum(int(value) for value in parent[11:15])
    ticks += sum(int(child[11]) + int(child[12]) for child in living_children(pid).values())
    return ticks / _TICKS


def living_children(pid: int) -> dict[int, list[str]]:
    """The processes `pid` forked that are still running (a postmaster's backends and auxiliary processes), each
    with its /proc/PID/stat fields as `_stat` gives them."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (child := _stat(int(entry.name))) is not None and int(child[1]) == pid:
            children[int(entry.name)] = child
    return children


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (field 3 onwards), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()
