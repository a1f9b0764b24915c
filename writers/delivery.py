"""The one delivery loop: every database round trip of every writer goes through `deliver`.

A round trip runs `attempt(conn, retry)` on a pooled connection, timed as one Locust request. What
happens after an error depends only on its class (`classify`), the same for every strategy:

- TRANSIENT: the connection was lost or the server is restarting (SQLSTATE class 08, 57P0x, no SQLSTATE at
  all, a pool that cannot connect). Retried with exponential backoff within a deadline; every retry runs with
  `retry=True`, so the attempt goes through its de-duplicating path: the rows may have committed just before
  the connection dropped. Past the deadline the rows are UNAVAILABLE.
- ROWS: the server refused the rows themselves (a bad value, a constraint, a row too big: classes 22, 23,
  54), or the client could not even encode them (text that is not valid UTF-8). Returned as REFUSED: the
  validated path splits the batch and quarantines the culprit, the others count the batch's rows as failed.
  Retrying cannot help.
- SETUP: anything else the server says is wrong with the statement or the setup (permission denied, a
  missing table or column, a read-only server, a wrong password). Never retried, never quarantined as
  "malformed rows": `deliver` raises `SetupError`, one clear line naming the cause, and the run stops.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import gevent
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

ATTEMPTS = 6
"""Round trips per delivery at most: the first and five retries."""
BACKOFF_S = 0.5
"""First wait before a retry, doubled each time (0.5, 1, 2, 4, 8 s): a fast restart fits in the first
waits, crash recovery of a busy server in the later ones."""
MAX_BACKOFF_S = 8.0
DEADLINE_S = 60.0
"""A delivery gives up this long after its first attempt, retries included: past it the database is taken
for gone and the rows count as not written."""
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


class Timed(Protocol):
    def timed(self, verb: str, name: str, size: int) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = ATTEMPTS
    backoff_s: float = BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    deadline_s: float = DEADLINE_S

    def waits(self) -> Iterator[float]:
        """The wait before each retry, until the attempts or the deadline run out."""
        deadline = time.monotonic() + self.deadline_s
        for number in range(self.attempts - 1):
            wait = min(self.backoff_s * 2**number, self.max_backoff_s)
            if time.monotonic() + wait > deadline:
                return
            yield wait


RETRY_POLICY = RetryPolicy()


class Connections(Protocol):
    """Where `deliver` takes its connection: a psycopg_pool pool, or a `HeldConnection`."""

    def connection(self) -> AbstractContextManager[psycopg.Connection]: ...

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

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self._conn is None:
            self._conn = self._pool.getconn()
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
    policy: RetryPolicy = RETRY_POLICY,
) -> Delivery:
    """Run `attempt(conn, retry)` in one transaction of a pooled (or held) connection, as one timed `verb` request.

    The transaction commits when `attempt` returns (unless the pool's connections are autocommit).
    `retry` is True after a lost connection, or from the start with `deduplicate` (rows that may already be
    stored, e.g. claimed from a dead consumer): the attempt must then skip rows already stored.
    Raises SetupError for an error of the statement or the setup.
    """
    waits = policy.waits()
    retry = deduplicate
    while True:
        try:
            with writer.timed(verb, name, size), pool.connection() as conn:
                attempt(conn, retry)
            return Delivery(Outcome.COMMITTED)
        except (psycopg.Error, RowsRefused, UnicodeEncodeError) as error:
            kind = classify(error)
            if kind is ErrorClass.ROWS:
                return Delivery(Outcome.REFUSED, error)
            if kind is ErrorClass.SETUP:
                raise SetupError.of(error, verb, name) from error
            wait = next(waits, None)
            if wait is None:
                return Delivery(Outcome.UNAVAILABLE, error)
            retry = True
            if (tally := getattr(writer, "tally", None)) is not None:
                tally.retries[name] += 1
            gevent.sleep(wait)
            # What dropped this connection (a restart, a proxy) likely dropped its idle siblings too:
            # replace the broken ones now, or the retries could draw one dead connection after another.
            pool.check()


def open_pool(conninfo: str, size: int, name: str, **connect_kwargs: object) -> ConnectionPool:
    """A pool of exactly `size` connections, all open before it returns (or PoolTimeout)."""
    pool = ConnectionPool(conninfo, min_size=size, max_size=size, kwargs=connect_kwargs, name=name, open=False)
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    return pool
