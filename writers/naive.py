"""Naive strategy, the seed's "please don't" baseline: one INSERT per event, each committed on its own.

Every engineer inserts its rows one statement at a time, in autocommit, through a pool of
`pool_size` connections its process shares; nothing is buffered, so `write` returns once each of
its rows is committed, and an engineer waits on every round trip.
"""

from __future__ import annotations

import argparse

import psycopg
from gevent.pool import Group
from locust.event import Events
from psycopg_pool import ConnectionPool

from telemetry.generator import TraceRows
from writers.base import Writer
from writers.buffered import POOL_OPEN_TIMEOUT_S, deliver
from writers.rows import COLUMNS, parse_row

POOL_SIZE = 50
"""Connections per process, the seed's value (its naive INSERT ran on 50 connections)."""


class NaiveWriter(Writer):
    """INSERTs each row on its own, autocommit; acknowledges a row once its INSERT returned."""

    verb = "INSERT"

    def __init__(
        self, conninfo: str, events: Events, *, pool_size: int = POOL_SIZE, connect_kwargs: dict | None = None
    ) -> None:
        super().__init__(events)
        self._pool = ConnectionPool(
            conninfo,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={**(connect_kwargs or {}), "autocommit": True},
            name=type(self).__name__,
            open=False,
        )
        self._pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        self._traces = Group()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("naive INSERT strategy")
        group.add_argument("--naive-pool-size", type=int, default=POOL_SIZE, help="Connections per process.")

    @classmethod
    def from_options(cls, conninfo: str, options: argparse.Namespace, events: Events) -> NaiveWriter:
        return cls(conninfo, events, pool_size=options.naive_pool_size)

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
        for table, lines in (("spans", rows.spans), ("metrics", rows.metrics), ("logs", rows.logs)):
            for line in lines:
                self._insert(table, line)

    def _insert(self, table: str, line: str) -> None:
        values = parse_row(line)

        def attempt(conn: psycopg.Connection, retry: bool) -> None:
            # Only a retry may find its row stored: the connection can drop after the commit.
            conn.execute(_INSERT_DEDUPLICATED[table] if retry else _INSERT[table], values)

        # The COPY text's size, so MB/s compare across strategies.
        deliver(self, self.verb, self._pool, table, 1, len(line.encode()), attempt)


_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    for table, columns in COLUMNS.items()
}
_INSERT_DEDUPLICATED = {table: f"{statement} ON CONFLICT (event_id) DO NOTHING" for table, statement in _INSERT.items()}
