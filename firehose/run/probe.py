"""Can a migration get its lock while the strategy writes? A probe, on by option (`--migration-probe SECONDS`).

The reference benchmark's outage: under naive INSERTs, a migration could not get its lock. Every SECONDS
the probe opens a connection of its own (the time it takes is the connect time: a server at
max_connections refuses it) and, in a transaction it rolls back at once, takes the lock a migration on a
written table needs: `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE`, under `lock_timeout`
(`--migration-probe-timeout`), on spans, metrics and logs in turn. It measures how long it waited for the
lock; a lock not granted in time, or a refused connection, is a failure. Holding the lock for the length
of a ROLLBACK, it barely disturbs the writers.

One probe runs in each writing process, as a part of its run (users.run.Part) that starts with it when the
option asks for one: its `report()` goes to the master with the process's drain report and the summary
merges them (`merge_probe_reports`). Each attempt is also kept with its time (`timeline`), so that a tool can
say what the probe met during one stretch of the run (`firehose retention`: during a DETACH or a DELETE).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gevent
import psycopg

from telemetry.layout import TABLES
from users.run import Part, Run

LOCK_TIMEOUT_MS = 2_000
"""How long the probe's migration waits for its lock: a deploy tool's usual bound before it gives up."""
CONNECT_TIMEOUT_S = 10


class MigrationProbe(Part):
    """A greenlet that tries a migration's lock every `interval_s` seconds until `close`."""

    name = "migration_probe"

    def __init__(self, conninfo: str, interval_s: float, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
        self.conninfo = conninfo
        self.interval_s = interval_s
        self.lock_timeout_ms = lock_timeout_ms
        self.connect_ms: list[float] = []
        self.lock_wait_ms: list[float] = []
        self.failures: dict[str, int] = {}
        self.attempts = 0
        self.timeline: list[list] = []
        """Per attempt: [when it ended (seconds since the epoch), table, lock wait ms or None, failure or None]."""
        self._greenlet = gevent.spawn(self._run)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--migration-probe",
            type=float,
            default=0,
            metavar="SECONDS",
            help="Every SECONDS, try a migration's lock (LOCK TABLE ... ACCESS EXCLUSIVE under lock_timeout) on its "
            "own connection and report connect time, lock wait and failures in the summary. 0 (default): off.",
        )
        parser.add_argument(
            "--migration-probe-timeout",
            type=int,
            default=LOCK_TIMEOUT_MS,
            metavar="MS",
            help="The probe's lock_timeout in milliseconds (default: %(default)s).",
        )

    @classmethod
    def for_run(cls, run: Run) -> MigrationProbe:
        return cls(run.conninfo, run.options.migration_probe, run.options.migration_probe_timeout)

    @classmethod
    def starts_with_run(cls, options: argparse.Namespace) -> bool:
        """Asked for (--migration-probe): it runs from the opening of the run to its drain."""
        return getattr(options, "migration_probe", 0) > 0

    def _run(self) -> None:
        number = 0
        while True:
            self.try_once(TABLES[number % len(TABLES)])
            number += 1
            gevent.sleep(self.interval_s)

    def try_once(self, table: str) -> None:
        """One attempt: connect, take the lock under lock_timeout, roll back. Counted once it has an outcome (the
        lock, or a failure): one cut short by `close` at the drain is not an attempt."""
        start = time.perf_counter()
        try:
            conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="firehose probe"
            )
        except psycopg.Error as error:
            self._fail(table, f"connect: {error.sqlstate or type(error).__name__}")
            return
        self.connect_ms.append((time.perf_counter() - start) * 1000)
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                start = time.perf_counter()
                conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                waited_ms = (time.perf_counter() - start) * 1000
        except psycopg.errors.LockNotAvailable:
            self._fail(table, "lock_timeout")
        except psycopg.Error as error:
            self._fail(table, f"lock: {error.sqlstate or type(error).__name__}")
        else:
            self.attempts += 1
            self.lock_wait_ms.append(waited_ms)
            self.timeline.append([round(time.time(), 3), table, round(waited_ms, 3), None])
        finally:
            conn.close()

    def _fail(self, table: str, kind: str) -> None:
        self.attempts += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.timeline.append([round(time.time(), 3), table, None, kind])

    def close(self) -> None:
        self._greenlet.kill()

    def report(self) -> dict:
        return {
            "interval_s": self.interval_s,
            "lock_timeout_ms": self.lock_timeout_ms,
            "attempts": self.attempts,
            "failures": dict(self.failures),
            "connect_ms": self.connect_ms,
            "lock_wait_ms": self.lock_wait_ms,
            "timeline": self.timeline,
        }

    @staticmethod
    def merge(reports: list[dict]) -> dict | None:
        return merge_probe_reports(reports)

    @staticmethod
    def render(section: dict) -> list[str]:
        return [render_probe(section)]


def merge_probe_reports(reports: list[dict]) -> dict | None:
    """The probes of every process as one: attempts, failures by kind, connect and lock-wait percentiles (ms)."""
    if not reports:
        return None
    connect = [ms for report in reports for ms in report["connect_ms"]]
    waits = [ms for report in reports for ms in report["lock_wait_ms"]]
    failures: dict[str, int] = {}
    for report in reports:
        for kind, count in report["failures"].items():
            failures[kind] = failures.get(kind, 0) + count
    return {
        "interval_s": reports[0]["interval_s"],
        "lock_timeout_ms": reports[0]["lock_timeout_ms"],
        "attempts": sum(report["attempts"] for report in reports),
        "failed": sum(failures.values()),
        "failures": failures,
        "connect_ms": _percentiles(connect),
        "lock_wait_ms": _percentiles(waits),
        "timeline": sorted(attempt for report in reports for attempt in report.get("timeline", [])),
    }


def render_probe(probe: dict) -> str:
    """One line of the summary."""
    connect, wait = probe["connect_ms"], probe["lock_wait_ms"]
    failures = ", ".join(f"{kind} {count}" for kind, count in probe["failures"].items())
    return (
        f"migration probe (LOCK TABLE ... ACCESS EXCLUSIVE every {probe['interval_s']:g} s, lock_timeout "
        f"{probe['lock_timeout_ms']} ms): {probe['attempts']} attempts, {probe['failed']} failed"
        + (f" ({failures})" if failures else "")
        + f"; connect p50 {_ms(connect['p50'])}, max {_ms(connect['max'])}"
        + f"; lock wait p50 {_ms(wait['p50'])}, p95 {_ms(wait['p95'])}, max {_ms(wait['max'])}"
    )


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"
