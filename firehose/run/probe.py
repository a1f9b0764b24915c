"""Can a migration get its lock while the strategy writes? A probe, on by option (`--migration-probe SECONDS`).

The reference benchmark's outage: under naive INSERTs, a migration could not get its lock. Every SECONDS
the probe opens a connection of its own (the time it takes is the connect time: a server at
max_connections refuses it) and, in a transaction it rolls back at once, takes the lock a migration on a
written table needs: `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE`, under `lock_timeout`
(`--migration-probe-timeout`), on spans, metrics and logs in turn. It measures how long it waited for the
lock; a lock not granted in time, or a refused connection, is a failure. Holding the lock for the length
of a ROLLBACK, it barely disturbs the writers.

One probe runs in each writing process, as one of its run's shared objects (`ProcessRun.shared`): its
`report()` goes to the master with the process's drain report and the summary merges them
(`merge_probe_reports`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gevent
import psycopg
from locust.env import Environment
from locust.event import Events

from telemetry.layout import TABLES

LOCK_TIMEOUT_MS = 2_000
"""How long the probe's migration waits for its lock: a deploy tool's usual bound before it gives up."""
CONNECT_TIMEOUT_S = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


class MigrationProbe:
    """A greenlet that tries a migration's lock every `interval_s` seconds until `close`."""

    def __init__(self, conninfo: str, interval_s: float, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
        self.conninfo = conninfo
        self.interval_s = interval_s
        self.lock_timeout_ms = lock_timeout_ms
        self.connect_ms: list[float] = []
        self.lock_wait_ms: list[float] = []
        self.failures: dict[str, int] = {}
        self.attempts = 0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        number = 0
        while True:
            self.try_once(TABLES[number % len(TABLES)])
            number += 1
            gevent.sleep(self.interval_s)

    def try_once(self, table: str) -> None:
        """One attempt: connect, take the lock under lock_timeout, roll back."""
        self.attempts += 1
        start = time.perf_counter()
        try:
            conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="firehose probe"
            )
        except psycopg.Error as error:
            self._fail(f"connect: {error.sqlstate or type(error).__name__}")
            return
        self.connect_ms.append((time.perf_counter() - start) * 1000)
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                start = time.perf_counter()
                conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                self.lock_wait_ms.append((time.perf_counter() - start) * 1000)
        except psycopg.errors.LockNotAvailable:
            self._fail("lock_timeout")
        except psycopg.Error as error:
            self._fail(f"lock: {error.sqlstate or type(error).__name__}")
        finally:
            conn.close()

    def _fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

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
        }


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


def _start(run) -> MigrationProbe:  # run: a firehose.run.process_run.ProcessRun (it imports this module's layer)
    return MigrationProbe(run.conninfo, run.options.migration_probe, run.options.migration_probe_timeout)


def register(events: Events) -> None:
    """Declare the options; at each test start, a probe in this writing process's run (when asked for)."""

    @events.init_command_line_parser.add_listener
    def _(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)

    @events.init.add_listener
    def _(environment: Environment, **_kwargs) -> None:
        @events.test_start.add_listener
        def _(**_kwargs) -> None:  # after firehose's own: the process's run is open
            run = environment.firehose.process_run
            if run is not None and getattr(run.options, "migration_probe", 0) > 0:
                run.shared(_start)
