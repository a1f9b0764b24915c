"""Naive strategy, the seed's "please don't" baseline: one INSERT per event, each committed on its own.

Every engineer inserts its rows one statement at a time, in autocommit, through a pool of
`pool_size` connections its process shares; nothing is buffered, so `write` returns once each of
its rows is committed, and an engineer waits on every round trip. An engineer holds one connection for
the length of a trace (`writers.delivery.HeldConnection`), as an application holds one for a request:
a pool checkout per row cost more client CPU than the INSERT's own Python path. Each trace reuses one cursor
per connection, its statement prepared on first use, and the connections wait on gevent io watchers
(`writers.gevent_wait`): what each saved is in docs/performance-notes.md.
"""

from __future__ import annotations

import argparse

import psycopg
from gevent.pool import Group
from locust.event import Events

from telemetry.generator import TraceRows
from telemetry.layout import COLUMNS, parse_row
from writers.base import OnFatal, Writer, WriterContext
from writers.delivery import HeldConnection, Outcome, RetryPolicy, SetupError, open_pool
from writers.gevent_wait import GeventConnection

POOL_SIZE = 50
"""Connections per process, the seed's value (its naive INSERT ran on 50 connections)."""


class NaiveWriter(Writer):
    """INSERTs each row on its own, autocommit; acknowledges a row once its INSERT returned."""

    verb = "INSERT"
    default_pool_size = POOL_SIZE

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        pool_size: int = POOL_SIZE,
        connect_kwargs: dict | None = None,
        on_fatal: OnFatal | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(events, on_fatal, retry_policy)
        self._pool = open_pool(
            conninfo, pool_size, type(self).__name__, GeventConnection, **(connect_kwargs or {}), autocommit=True
        )
        self._traces = Group()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("naive INSERT strategy")
        group.add_argument("--naive-pool-size", type=int, default=POOL_SIZE, help="Connections per process.")

    @classmethod
    def pool_option(cls) -> str | None:
        return "naive_pool_size"

    @classmethod
    def from_context(cls, context: WriterContext) -> NaiveWriter:
        return cls(
            context.postgres,
            context.events,
            pool_size=context.options.naive_pool_size,
            on_fatal=context.on_fatal,
            retry_policy=context.retry_policy,
        )

    def write(self, rows: TraceRows) -> None:
        self.tally.receive(rows)
        # In a greenlet of its own: Locust kills engineers mid-task at the end of a timed run, and a trace
        # it had handed over must still be written whole, or its rows would count as lost.
        self._traces.spawn(self._insert_all, rows).get()

    def flush(self) -> None:
        """Wait for the traces of engineers stopped mid-write; every other row is committed already."""
        self._traces.join()

    def close(self) -> None:
        self.flush()
        self._pool.close()

    def _insert_all(self, rows: TraceRows) -> None:
        pending = [(table, line) for table, lines in rows.by_table() for line in lines]
        held = HeldConnection(self._pool)
        cursors: dict[psycopg.Connection, psycopg.RawCursor] = {}  # one per connection the trace is sent on
        try:
            for number, (table, line) in enumerate(pending):
                try:
                    self._insert(held, cursors, table, line)
                except SetupError as error:
                    for unsent, _line in pending[number:]:
                        self.tally.failed[unsent] += 1
                    self.fail(error)
                    return
        finally:
            held.release()

    def _insert(
        self, held: HeldConnection, cursors: dict[psycopg.Connection, psycopg.RawCursor], table: str, line: str
    ) -> None:
        values = parse_row(line)
        size = len(line.encode())  # the COPY text's size, so MB/s compare across strategies

        def attempt(conn: psycopg.Connection, retry: bool) -> None:
            cursor = cursors.get(conn)
            if cursor is None:
                cursor = cursors[conn] = psycopg.RawCursor(conn)
            # Only a retry may find its row stored: the connection can drop after the commit.
            cursor.execute(_INSERT_DEDUPLICATED[table] if retry else _INSERT[table], values, prepare=True)

        if self.deliver(held, self.verb, table, size, attempt).outcome is Outcome.COMMITTED:
            self.acknowledge(table, 1, size)
        else:
            self.tally.failed[table] += 1


_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f'${n}' for n, _ in enumerate(columns, 1))})"
    for table, columns in COLUMNS.items()
}
_INSERT_DEDUPLICATED = {table: f"{statement} ON CONFLICT DO NOTHING" for table, statement in _INSERT.items()}
