"""The connection budget: the server connections a run will open, against what the server has free.

Computed on the master (or the only process) before the run writes: at init when the user classes are named on
the command line, else (the web UI's class picker) at test start. What a run opens on the PostgreSQL server:
- per writing process, each selected strategy's pool (`Writer.pool_option`: --copy-pool-size, --stream-consumers,
  ...), the analysts' pool (--analyst-pool-size, in the processes that run analysts), the migration probe's
  connection (--migration-probe), and one short connection that registers the process's writer key;
- once, pgBouncer's server pool when a local one is started for PooledEngineer (its clients are pgBouncer's);
- once, the coordinator's own short connections (the run's record, the end-of-run counts).
What the server has free: `max_connections - superuser_reserved_connections - reserved_connections` (the last
from PostgreSQL 16) minus the connections open now (`pg_stat_activity`'s client backends).

A run that does not fit is refused (one line, exit code 2), or with --shrink-pools its per-process pools shrink
proportionally, said in one log line and in the summary (`connection_budget`). Locust sends the master's options
to every worker with each spawn message, so a worker opens the shrunk pools.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field

import psycopg
from locust import User

from firehose.run.preflight import Refused
from firehose.strategies import strategy_of
from services.pgbouncer import DEFAULT_POOL_SIZE as BOUNCER_SERVER_POOL
from services.postgres import redact
from users.analyst import Analyst

logger = logging.getLogger("firehose")

SHRINK_FLAG = "--shrink-pools"
_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true)::int, 0),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        SHRINK_FLAG,
        action="store_true",
        default=False,
        help="When the run's server connections (pools x processes, analysts, probe, pgBouncer's server pool) "
        "exceed what PostgreSQL has free (max_connections - reserved - in use), shrink the per-process pools "
        "proportionally instead of refusing the run. firehose sweep and bench never shrink.",
    )


@dataclass(frozen=True)
class ServerLimits:
    """The server's connection limits and the connections open when they were read."""

    max_connections: int
    superuser_reserved: int
    reserved: int
    in_use: int

    @property
    def free(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved - self.in_use

    def describe(self) -> str:
        return (
            f"max_connections {self.max_connections} - superuser_reserved_connections {self.superuser_reserved}"
            f" - reserved_connections {self.reserved} - {self.in_use} in use = {self.free} free"
        )


def read_limits(conninfo: str) -> ServerLimits:
    """The limits of the server at `conninfo` (the connection reading them is not counted in use)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return ServerLimits(*conn.execute(_LIMITS).fetchone())


@dataclass
class Demand:
    """Server connections a run opens: per process (each with the option that sizes it), and once."""

    processes: int
    pools: dict[str, int] = field(default_factory=dict)
    """Option dest -> connections each writing process opens for it (the shrinkable part)."""
    analyst_processes: int = 0
    """Writing processes that run analysts (the analysts' pool is opened only there)."""
    per_process: dict[str, int] = field(default_factory=dict)
    """Other connections of each writing process (writer key, probe)."""
    once: dict[str, int] = field(default_factory=dict)
    """Connections of the run as a whole (pgBouncer's server pool, the coordinator)."""

    def total(self, pools: dict[str, int] | None = None) -> int:
        pools = self.pools if pools is None else pools
        return self.fixed() + sum(size * self._copies(dest) for dest, size in pools.items())

    def fixed(self) -> int:
        return self.processes * sum(self.per_process.values()) + sum(self.once.values())

    def describe(self, pools: dict[str, int] | None = None) -> str:
        pools = self.pools if pools is None else pools
        parts = [f"{self._copies(dest)} x --{dest.replace('_', '-')} {size}" for dest, size in pools.items()]
        parts += [f"{self.processes} x {name} {count}" for name, count in self.per_process.items()]
        parts += [f"{name} {count}" for name, count in self.once.items()]
        return " + ".join(parts)

    def _copies(self, dest: str) -> int:
        return self.analyst_processes if dest == "analyst_pool_size" else self.processes


def writing_processes(options: argparse.Namespace) -> int:
    """Processes that run users: the expected workers of a master (`--processes N` sets them too), else this one."""
    return max(int(getattr(options, "expect_workers", 1) or 1), 1) if getattr(options, "master", False) else 1


def demand(
    user_classes: list[type[User]], options: argparse.Namespace, *, processes: int, bouncer_started_here: bool
) -> Demand:
    """What the run of these user classes will open, by these options, in `processes` writing processes."""
    run = Demand(processes)
    engineers = [user for user in user_classes if getattr(user, "writer_class", None) is not None]
    rows = {strategy_of(user) for user in engineers}  # the table's row of each: a class with none is an error
    for strategy in sorted(rows, key=lambda row: row.name):
        if (dest := strategy.writer.pool_option()) is not None and getattr(options, dest, 0):
            run.pools[dest] = getattr(options, dest)
        if "pgbouncer" in strategy.services and bouncer_started_here:
            run.once["pgBouncer server pool"] = BOUNCER_SERVER_POOL  # opened on demand, up to this many
    if any(issubclass(user, Analyst) for user in user_classes):
        analysts = getattr(options, "analysts", 0) or 0
        run.analyst_processes = min(processes, analysts) if analysts > 0 else processes
        run.pools["analyst_pool_size"] = options.analyst_pool_size
    run.per_process["writer key"] = 1
    if (getattr(options, "migration_probe", 0) or 0) > 0:
        run.per_process["migration probe"] = 1
    run.once["coordinator"] = 2  # its short connections (the run's record, the counts), and the disk guard's
    return run


def shrunk_pools(run: Demand, free: int) -> dict[str, int] | None:
    """The per-process pools scaled down together to fit `free` connections (none below 1), or None if even
    that does not fit."""
    room = free - run.fixed()
    wanted = run.total() - run.fixed()
    if room <= 0 or wanted <= 0:
        return None
    factor = room / wanted
    pools = {dest: max(1, math.floor(size * factor)) for dest, size in run.pools.items()}
    return pools if run.total(pools) <= free else None


def check(
    conninfo: str,
    user_classes: list[type[User]],
    options: argparse.Namespace,
    *,
    bouncer_started_here: bool,
) -> dict:
    """Refuse a run that needs more connections than the server has free, or (--shrink-pools) shrink its pools in
    `options`. Returns the budget for the summary (`connection_budget`)."""
    limits = read_limits(conninfo)
    run = demand(user_classes, options, processes=writing_processes(options), bouncer_started_here=bouncer_started_here)
    needed = run.total()
    budget = {
        "needed": needed,
        "free": limits.free,
        "max_connections": limits.max_connections,
        "superuser_reserved_connections": limits.superuser_reserved,
        "reserved_connections": limits.reserved,
        "in_use": limits.in_use,
        "processes": run.processes,
        "shrunk": {},
    }
    if needed <= limits.free:
        return budget
    over = (
        f"the run needs {needed} server connections ({run.describe()}) but PostgreSQL at {redact(conninfo)} has "
        f"{limits.describe()}"
    )
    if not getattr(options, "shrink_pools", False):
        raise Refused(f"{over}: lower the pool sizes or the processes, or pass {SHRINK_FLAG}")
    pools = shrunk_pools(run, limits.free)
    if pools is None:
        raise Refused(f"{over}, and not even pools of 1 connection fit")
    changes = {dest: [run.pools[dest], size] for dest, size in pools.items() if size != run.pools[dest]}
    for dest, (_before, after) in changes.items():
        setattr(options, dest, after)
    logger.warning(
        "firehose shrinks the per-process pools to fit %d free server connections (%s): %s",
        limits.free,
        limits.describe(),
        ", ".join(f"--{dest.replace('_', '-')} {before} -> {after}" for dest, (before, after) in changes.items()),
    )
    budget.update(needed=run.total(pools), shrunk=changes)
    return budget
