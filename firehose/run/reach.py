"""Whether a worker can reach the addresses the master handed it, decided before it connects anywhere.

127.0.0.1 names a different server on every machine, and in every network namespace: an address on the
master's loopback is useless to a worker elsewhere, and worse, another server may answer there. So the
run-start message says whose loopback its addresses mean (`loopback_identity`, filled in by the master), and
a worker with another loopback refuses to start on such an address with one line saying what to pass.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from firehose.run.endpoints import FLAGS

SERVICE_NAMES = {
    "postgres": "PostgreSQL",
    "pgbouncer": "pgBouncer",
    "redis": "Redis",
    "analysts": "analysts' PostgreSQL",
}
"""Service -> how the refusal names it."""
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_NETWORK_NAMESPACE = Path("/proc/self/ns/net")


def loopback_identity() -> str:
    """Who shares this process's 127.0.0.1: the machine (its boot id, else its host name) and, on Linux, the
    network namespace (a container, or a test's namespace, has a loopback of its own)."""
    try:
        machine = _BOOT_ID.read_text().strip()
    except OSError:
        machine = os.uname().nodename
    try:
        namespace = os.stat(_NETWORK_NAMESPACE).st_ino
    except OSError:
        namespace = 0
    return f"{machine}/{namespace}"


def loopback_host(address: str) -> str | None:
    """The loopback host a libpq DSN or a redis:// URL names (127.0.0.1, ::1, localhost), else None."""
    if "://" in address and not address.startswith(("postgres://", "postgresql://")):
        hosts = [urlsplit(address).hostname or ""]
    else:
        params = conninfo_to_dict(address)
        hosts = str(params.get("hostaddr") or params.get("host") or "").split(",")
    for host in hosts:
        if host == "localhost":
            return host
        try:
            if ipaddress.ip_address(host).is_loopback:
                return host
        except ValueError:
            continue  # a host name, a socket directory, or none (libpq's default)
    return None


def refusal(loopback: str, addresses: dict[str, str], own: dict[str, str]) -> str | None:
    """The line a worker refuses a run with, when an address the master gave (`addresses`, meant on the
    master's `loopback`) is on a loopback that is not this process's; None when it may go ahead. An address the
    worker was given itself (`own`) is never the master's."""
    if loopback == loopback_identity():
        return None
    unreachable = {
        name: host
        for name, address in addresses.items()
        if name not in own and (host := loopback_host(address)) is not None
    }
    if not unreachable:
        return None
    names = " and ".join(SERVICE_NAMES[name] for name in unreachable)
    flags = " and ".join(FLAGS[name] for name in unreachable)
    hosts = ", ".join(sorted(set(unreachable.values())))
    verb = "listens" if len(unreachable) == 1 else "listen"
    return (
        f"the master's {names} {verb} on {hosts} only, the master's loopback, which this worker cannot reach: "
        f"start the master with --embedded-listen ADDRESS, or give this worker {flags}"
    )
