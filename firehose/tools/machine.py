"""The machine and server a tool measured on, recorded beside its results."""

from __future__ import annotations

import os
import platform

import locust
import psycopg

from services.postgres import server_settings


def machine_info(dsn: str) -> dict:
    """Cores, PostgreSQL's version and the server's settings of the reference benchmark, and the software."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in server_settings()}
    return {
        "cores": os.cpu_count(),
        "postgres_version": version,
        "postgres_settings": settings,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "locust": locust.__version__,
    }
