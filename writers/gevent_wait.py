"""A psycopg connection that waits for its socket the way gevent's own sockets do.

Under gevent's monkey-patching psycopg waits with `wait_poll` on gevent's patched `select.poll`, which builds a
poll object, a watcher and a timeout for every wait of every round trip. A naive INSERT is one round trip per
row, and that machinery was a noticeable share of the naive writer's client CPU. This connection keeps one
gevent io watcher per kind of wait (read, write, both) for its socket and parks the greenlet on it, as a gevent
socket does (what it saved: docs/performance-notes.md).
"""

from __future__ import annotations

import psycopg
from gevent import get_hub
from psycopg.abc import RV, PQGen
from psycopg.waiting import READY_R, READY_RW, READY_W, WAIT_R, WAIT_RW, WAIT_W

_EVENTS = {WAIT_R: 1, WAIT_W: 2, WAIT_RW: 3}
"""libev's event mask of each psycopg wait: 1 readable, 2 writable."""
_READY = {WAIT_R: READY_R, WAIT_W: READY_W, WAIT_RW: READY_RW}
"""What the generator is told once the watcher fired. For a wait on both, it may be told ready for the one that is
not: psycopg then reads or flushes without blocking and finds nothing to do, and asks again."""


class GeventConnection(psycopg.Connection):
    """A `psycopg.Connection` whose waits park the greenlet on a reused gevent io watcher."""

    _watchers: dict
    _watched_fileno = -1

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if timeout is not None:  # psycopg's own bounded waits (cancel, notifies): rare, keep its implementation
            return super().wait(gen, interval, timeout)
        fileno, hub = self.pgconn.socket, get_hub()
        if fileno != self._watched_fileno:
            self._close_watchers()
            self._watchers = {state: hub.loop.io(fileno, events) for state, events in _EVENTS.items()}
            self._watched_fileno = fileno
        try:
            state = next(gen)
            while True:
                hub.wait(self._watchers[state])
                state = gen.send(_READY[state])
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        super().close()
        self._close_watchers()

    def _close_watchers(self) -> None:
        if self._watched_fileno >= 0:
            for watcher in self._watchers.values():
                watcher.close()
            self._watched_fileno = -1
