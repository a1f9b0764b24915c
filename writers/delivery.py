"""The one delivery loop: every database round trip of every writer goes through `deliver`.

A round trip runs `attempt(conn, retry)` on a pooled connection, timed as one Locust request. What
happens after an error depends only on its class (`classify`), the same for every strategy:

- TRANSIENT: the connection was lost or the server is restarting (SQLSTATE class 08, 57P0x, no SQLSTATE at
  all, a pool that cannot connect). Retried with exponential backoff within a deadline; every retry runs with
  `retry=True`, so the attempt goes through its de-duplicating path: the rows may have committed just before
  the connection dropped. Past the deadline (--outage-deadline) the rows are UNAVAILABLE, and the database
  is taken for gone for the whole process: every other delivery gives up at once (`RetryPolicy.gone`), its
  rows counted as not written, instead of each batch waiting out a deadline of its own while the run stops.
- ROWS: the server refused the rows themselves (a bad value, a constraint, a row too big: classes 22, 23,
  54), or the client could not even encode them (text that is not valid UTF-8). Returned as REFUSED: the
  validated path splits the batch and quarantines the culprit, the others count the batch's rows as failed.
  Retrying cannot help.
- SETUP: anything else the server says is wrong with the statement or the setup (permission denied, a
  missing table or column, a read-only server, a wrong password). Never retried, never quarantined as
  "malformed rows": `deliver` raises `SetupError`, one clear line naming the cause, and the run stops.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import gevent
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

BACKOFF_S = 0.5
"""First wait before a retry, doubled each time (0.5, 1, 2, 4, 8, 8, ... s): a fast restart fits in the first
waits, crash recovery of a busy server in the later ones."""
MAX_BACKOFF_S = 8.0
DEADLINE_S = 60.0
"""A delivery gives up this long after its first failed attempt (--outage-deadline): past it the database is
taken for gone, the run stops, and the rows count as not written."""
PROBE_TIMEOUT_S = 5
"""Bound on the one connection that asks libpq why the database is unreachable, once the deadline has passed."""
POOL_OPEN_TIMEOUT_S = 30
"""Bound on opening a pool's connections: generous for a remote server or many processes connecting at once."""

TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
"""admin/crash shutdown, cannot connect now (starting up), too many connections, serialization failure,
deadlock: the same statement can succeed a moment later. Class 08 (connection exception) is transient too."""
ROW_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
"""data exception, integrity constraint violation, program limit exceeded: the rows' fault."""
_HINTS = {
    "42501": "grant the run's role the privilege the statement needs",
    "42P01": "create the tables with schema/tables.sql",
    "42703": "the table's columns differ from schema/tables.sql",
    "42804": "the table's column types differ from schema/tables.sql",
    "25006": "the server is read-only (a replica or a standby?): point --pg-dsn at the primary",
    "28P01": "check the user and password of the DSN",
    "28000": "check the user and password of the DSN, and pg_hba.conf",
    "3D000": "the database does not exist",
}
_PRIVILEGE_OF_VERB = {"COPY": "INSERT", "INSERT": "INSERT"}

# psycopg_pool logs a warning for every failed reconnection: through an outage, dozens of lines per pool. The
# delivery loop counts the retries and, when the database stays away, says the one line that matters.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class ErrorClass(enum.Enum):
    TRANSIENT = "transient"
    ROWS = "rows"
    SETUP = "setup"


class Outcome(enum.Enum):
    COMMITTED = "committed"
    REFUSED = "refused"
    """The server refused the rows (ErrorClass.ROWS): `Delivery.error` says why."""
    UNAVAILABLE = "unavailable"
    """The database could not be reached within the deadline."""


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    error: Exception | None = None


class RowsRefused(Exception):
    """Raised by an attempt that found the rows unacceptable without a server error (ErrorClass.ROWS)."""


class SetupError(RuntimeError):
    """The statement or the setup is wrong: the run must stop. Its message is one line naming the cause."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @classmethod
    def of(cls, error: psycopg.Error, verb: str, name: str) -> SetupError:
        diag = error.diag
        message = (diag.message_primary or str(error).strip().splitlines()[0]) if error.sqlstate else str(error)
        sqlstate = error.sqlstate
        hint = _HINTS.get(sqlstate or "")
        if sqlstate == "42501" and verb in _PRIVILEGE_OF_VERB:
            hint = f"the role needs the {_PRIVILEGE_OF_VERB[verb]} privilege on {name}"
        line = f"{verb} into {name} refused: {message}" + (f" [SQLSTATE {sqlstate}]" if sqlstate else "")
        return cls(f"{line}: {hint}" if hint else line, sqlstate)


def classify(error: Exception) -> ErrorClass:
    """What an error of a round trip means for the rows (see the module's docstring)."""
    if isinstance(error, RowsRefused | UnicodeEncodeError):  # the rows themselves cannot be sent
        return ErrorClass.ROWS
    if isinstance(error, PoolTimeout):
        return ErrorClass.TRANSIENT
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is None:
        # No answer from the server at all: the connection dropped, or was already closed.
        return (
            ErrorClass.TRANSIENT
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
            else (ErrorClass.SETUP)
        )
    if sqlstate[:2] in ROW_SQLSTATE_CLASSES:
        return ErrorClass.ROWS
    if sqlstate[:2] == "08" or sqlstate in TRANSIENT_SQLSTATES:
        return ErrorClass.TRANSIENT
    return ErrorClass.SETUP


class RetriedRoundTrip(Exception):
    """A round trip a lost connection broke, as Locust's Failures tab shows it: retried (until --outage-deadline),
    its rows not lost. Locust counts it as a failed request; the run's exit code does not (firehose.run.exit_codes)."""

    @classmethod
    def of(cls, error: Exception) -> RetriedRoundTrip:
        return cls(f"connection lost, round trip retried: {_first_line(error)}")


def as_failure(error: Exception, lost_connection: tuple[type[Exception], ...] = ()) -> Exception:
    """How a round trip's error shows as a Locust failure: a TRANSIENT one (or one of `lost_connection`, another
    service's) says it was retried."""
    retried = isinstance(error, lost_connection) or classify(error) is ErrorClass.TRANSIENT
    return RetriedRoundTrip.of(error) if retried else error


class Timed(Protocol):
    def timed(self, verb: str, name: str, size: int) -> AbstractContextManager[None]: ...


class DatabaseUnreachable(SetupError):
    """The database stayed out of reach past the outage deadline: the run stops, as for an error of the setup."""

    def __init__(self, deadline_s: float, error: Exception) -> None:
        super().__init__(f"the database has been unreachable for {deadline_s:g} s ({_first_line(error)})")


class RetryPolicy:
    """How long deliveries retry a database out of reach, and the verdict once one of them gave up.

    One per process, shared by its writers (`WriterContext.retry_policy`): the first delivery that waits out
    `deadline_s` sets `gone`, and from then on every delivery of the process gives up without a round trip.
    """

    def __init__(
        self, deadline_s: float = DEADLINE_S, backoff_s: float = BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S
    ) -> None:
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.gone: DatabaseUnreachable | None = None
        """Set by the first delivery that gave up: the database is taken for gone for the rest of the run."""

    def waits(self) -> Iterator[float]:
        """The wait before each retry, the last one cut short at the deadline; none once the database is gone."""
        deadline = time.monotonic() + self.deadline_s
        for number in itertools.count():
            left = deadline - time.monotonic()
            if left <= 0 or self.gone is not None:
                return
            yield min(self.backoff_s * 2**number, self.max_backoff_s, left)

    def give_up(self, error: Exception, pool: Connections) -> DatabaseUnreachable:
        """The verdict after a delivery waited out the deadline (the first one's, for every later delivery)."""
        if self.gone is None:
            self.gone = DatabaseUnreachable(self.deadline_s, _why_unreachable(error, pool))
        return self.gone


class Connections(Protocol):
    """Where `deliver` takes its connection: a psycopg_pool pool, or a `HeldConnection`."""

    conninfo: str

    def connection(self, timeout: float | None = None) -> AbstractContextManager[psycopg.Connection]: ...

    def check(self) -> None: ...


class HeldConnection:
    """One connection of an autocommit pool, held for a sequence of round trips (a trace's INSERTs).

    A checkout per round trip costs the client more CPU than the INSERT's own Python path: a writer that sends
    many short statements in a row holds one connection for all of them. After a lost connection (`check`,
    called by `deliver` before a retry) it gives the connection back for the pool to replace, and the retry
    takes another. `release` gives it back for good.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: psycopg.Connection | None = None

    @property
    def conninfo(self) -> str:
        return self._pool.conninfo

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        if self._conn is None:
            self._conn = self._pool.getconn(timeout)
        yield self._conn

    def check(self) -> None:
        self.release()
        self._pool.check()

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool.putconn(conn)


def deliver(
    writer: Timed,
    pool: Connections,
    verb: str,
    name: str,
    size: int,
    attempt: Callable[[psycopg.Connection, bool], None],
    *,
    deduplicate: bool = False,
    policy: RetryPolicy | None = None,
) -> Delivery:
    """Run `attempt(conn, retry)` in one transaction of a pooled (or held) connection, as one timed `verb` request.

    The transaction commits when `attempt` returns (unless the pool's connections are autocommit).
    `retry` is True after a lost connection, or from the start with `deduplicate` (rows that may already be
    stored, e.g. claimed from a dead consumer): the attempt must then skip rows already stored.
    Once `policy` has taken the database for gone, returns UNAVAILABLE (its `gone` the error) without trying.
    Raises SetupError for an error of the statement or the setup.
    The writer's tally (if it has one) counts each retry, and the seconds from the first failed attempt to the
    outcome (`blocked_s`).
    """
    policy = policy or RetryPolicy()
    if policy.gone is not None:
        return Delivery(Outcome.UNAVAILABLE, policy.gone)
    tally = getattr(writer, "tally", None)
    waits: Iterator[float] | None = None
    blocked_since = 0.0
    retry = deduplicate
    while True:
        try:
            # A checkout waits at most the deadline: a pool that cannot reconnect must not outwait it.
            with writer.timed(verb, name, size), pool.connection(timeout=policy.deadline_s) as conn:
                attempt(conn, retry)
            outcome = Delivery(Outcome.COMMITTED)
        except (psycopg.Error, RowsRefused, UnicodeEncodeError) as error:
            kind = classify(error)
            if kind is ErrorClass.ROWS:
                outcome = Delivery(Outcome.REFUSED, error)
            elif kind is ErrorClass.SETUP:
                raise SetupError.of(error, verb, name) from error
            else:
                if waits is None:
                    waits, blocked_since = policy.waits(), time.monotonic()
                wait = next(waits, None)
                if wait is None:
                    outcome = Delivery(Outcome.UNAVAILABLE, policy.give_up(error, pool))
                else:
                    retry = True
                    if tally is not None:
                        tally.retries[name] += 1
                    gevent.sleep(wait)
                    # What dropped this connection (a restart, a proxy) likely dropped its idle siblings too:
                    # replace the broken ones now, or the retries could draw one dead connection after another.
                    pool.check()
                    continue
        if waits is not None and tally is not None:
            tally.blocked_s[name] += time.monotonic() - blocked_since
        return outcome


def _why_unreachable(error: Exception, pool: Connections) -> Exception:
    """The error that tells why: a pool's timeout says only that it waited, so ask libpq with one connection."""
    if isinstance(error, PoolTimeout):
        try:
            psycopg.connect(pool.conninfo, connect_timeout=PROBE_TIMEOUT_S).close()
        except psycopg.Error as probe:
            return probe
    return error


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The option every writer's deliveries obey."""
    parser.add_argument(
        "--outage-deadline",
        type=float,
        default=DEADLINE_S,
        metavar="SECONDS",
        help="How long a writer retries a database (or Redis) out of reach before the run stops, the rows it "
        "still holds counted as not written (exit code 4).",
    )


def open_pool(
    conninfo: str,
    size: int,
    name: str,
    connection_class: type[psycopg.Connection] = psycopg.Connection,
    **connect_kwargs: object,
) -> ConnectionPool:
    """A pool of exactly `size` connections, all open before it returns (or PoolTimeout)."""
    pool = ConnectionPool(
        conninfo,
        min_size=size,
        max_size=size,
        kwargs=connect_kwargs,
        name=name,
        open=False,
        connection_class=connection_class,
    )
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    return pool
