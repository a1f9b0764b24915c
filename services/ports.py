"""Loopback ports for the servers and Locust masters we start ourselves."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on now (defaults such as Locust's 5557 may be another run's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
