"""Who used the CPU during a run: the server's backends (writers, analysts, background) and the Locust client.

A greenlet samples /proc every SAMPLE_S while the run goes on: each PostgreSQL backend's user + system time,
classified by pg_stat_activity (analysts by their application_name, other client backends as writers, the rest
as the server's background work: checkpointer, WAL writer, autovacuum), and each Locust process's (its command
line names our locustfile). A process's time is its last sample's minus what it had used at `start` (the
server's background processes outlive runs), so a backend that exits loses at most SAMPLE_S of its time.
Only a server on this machine can be measured: elsewhere its pids are not in /proc.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import gevent
import psycopg

from firehose.tools.headless import LOCUSTFILE
from users.analyst import APPLICATION_NAME

SAMPLE_S = 0.5
"""Sampling period: short against a 30 s run, and /proc reads of a few dozen processes cost ~1 ms."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CLASSES = ("server: writers' backends", "server: analysts' backends", "server: background")
CLIENT_CLASS = "client: Locust processes"
REPLICA_CLASSES = ("replica: startup and walreceiver", "replica: analysts' backends", "replica: background")
"""A streaming replica's processes on this machine: replaying WAL (startup) and receiving it, serving the analysts,
and the rest (checkpointer, ...)."""


def _cpu_ticks(pid: int) -> int | None:
    """User + system clock ticks of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def _busy_ticks() -> tuple[int, int]:
    """The machine's (busy, total) clock ticks from /proc/stat's first line."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class CpuUsage:
    """Samples who used the CPU from `start` to `stop`; `as_dict` gives CPU seconds per class of process."""

    def __init__(self, dsn: str, replica_dsn: str | None = None) -> None:
        """`replica_dsn`: a streaming replica on this machine too, its processes counted apart."""
        self.dsn = dsn
        self.replica_dsn = replica_dsn
        self._ticks: dict[int, tuple[str, int]] = {}
        self._baseline: dict[int, int] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._replica_greenlet: gevent.Greenlet | None = None
        self._started = 0.0
        self._elapsed = 0.0
        self._busy_start = (0, 0)
        self._busy_end = (0, 0)
        self.server_visible = False

    def start(self) -> None:
        self._baseline = {
            int(entry.name): ticks
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and (ticks := _cpu_ticks(int(entry.name))) is not None
        }
        self._started, self._busy_start = time.monotonic(), _busy_ticks()
        self._greenlet = gevent.spawn(self._sample_forever)
        self._replica_greenlet = gevent.spawn(self._sample_replica_forever) if self.replica_dsn else None

    def stop(self) -> None:
        for greenlet in (self._greenlet, self._replica_greenlet):
            if greenlet is not None:
                greenlet.kill()
        self._sample_clients()
        self._elapsed, self._busy_end = time.monotonic() - self._started, _busy_ticks()

    def _sample_forever(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            while True:
                backends = conn.execute("SELECT pid, backend_type, application_name FROM pg_stat_activity").fetchall()
                for pid, backend_type, application in backends:
                    if pid == own:
                        continue
                    if backend_type != "client backend":
                        kind = SERVER_CLASSES[2]
                    else:
                        kind = SERVER_CLASSES[1] if application == APPLICATION_NAME else SERVER_CLASSES[0]
                    self._record(pid, kind)
                self._sample_clients()
                gevent.sleep(SAMPLE_S)

    def _sample_replica_forever(self) -> None:
        with psycopg.connect(self.replica_dsn, autocommit=True) as conn:
            own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            while True:
                for pid, backend_type in conn.execute("SELECT pid, backend_type FROM pg_stat_activity").fetchall():
                    if pid == own:
                        continue
                    if backend_type in ("startup", "walreceiver"):
                        self._record(pid, REPLICA_CLASSES[0])
                    else:
                        self._record(pid, REPLICA_CLASSES[1 if backend_type == "client backend" else 2])
                gevent.sleep(SAMPLE_S)

    def _sample_clients(self) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if str(LOCUSTFILE).encode() in command:
                    self._record(int(entry.name), CLIENT_CLASS)

    def _record(self, pid: int, kind: str) -> None:
        ticks = _cpu_ticks(pid)
        if ticks is None:
            return
        if kind in SERVER_CLASSES:
            self.server_visible = True
        known_kind, _ = self._ticks.get(pid, (kind, 0))
        self._ticks[pid] = (known_kind, ticks - self._baseline.get(pid, 0))

    def as_dict(self) -> dict:
        """CPU seconds per class, the machine's busy share of all cores, and the run's wall time."""
        seconds = dict.fromkeys((*SERVER_CLASSES, *(REPLICA_CLASSES if self.replica_dsn else ()), CLIENT_CLASS), 0.0)
        for kind, ticks in self._ticks.values():
            seconds[kind] += ticks / CLOCK_TICKS
        busy = self._busy_end[0] - self._busy_start[0]
        total = self._busy_end[1] - self._busy_start[1]
        return {
            "cpu_s": {kind: round(value, 1) for kind, value in seconds.items()},
            "server_measured": self.server_visible,
            "wall_s": round(self._elapsed, 1),
            "cores": os.cpu_count(),
            "machine_busy_share": round(busy / total, 3) if total else None,
        }
