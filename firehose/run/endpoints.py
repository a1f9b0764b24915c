"""Where a run writes: its PostgreSQL and the services its writers declared, each given by the user or started here.

The master (or the only process) resolves them once: a DSN the user gave (`--pg-dsn`, or the PG*
variables), else the embedded PostgreSQL; for each service a selected writer declares ("pgbouncer",
"redis"), the address the user gave, else a local one started in front of that PostgreSQL. The addresses
go to the writing processes in the run-start message; `stop` ends exactly what was started here.

What is started here listens on 127.0.0.1, and with `--embedded-listen ADDRESS` on ADDRESS too, for workers
on other machines: there clients must give a password drawn for this master process (loopback stays as it
was), and the addresses handed out carry it (every output shows them through `redact`).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
from collections.abc import Callable, Iterable

from firehose.run.preflight import Refused
from firehose.strategies import all_strategies
from services.pgbouncer import PgBouncer
from services.ports import free_port
from services.postgres import (
    EMBEDDED_PORT,
    EmbeddedPostgres,
    LayoutMismatch,
    ListeningElsewhere,
    apply_schema,
    dsn_from_environment,
    redact,
)
from services.redis_server import LocalRedis
from services.replica import StreamingReplica
from services.watchdog import Watchdog

logger = logging.getLogger("firehose")

GIVEN = {"postgres": "pg_dsn", "pgbouncer": "pgbouncer_dsn", "redis": "redis_url", "analysts": "analyst_dsn"}
"""Service name -> the option that gives its address ("analysts": the analysts' own DSN, e.g. a read-only role)."""
FLAGS = {"postgres": "--pg-dsn", "pgbouncer": "--pgbouncer-dsn", "redis": "--redis-url", "analysts": "--analyst-dsn"}
LOCUST_MASTER_PORT = 5557
"""Locust's default master port: a second run on the machine, or a stray worker of another, meets it there."""
PASSWORD_BYTES = 24
"""Random bytes of the password of services listening beyond loopback (32 URL-safe characters)."""


def _needing(service: str) -> str:
    """The strategies that write through this service (firehose.strategies)."""
    return " and ".join(row.name for row in all_strategies() if service in row.services)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The addresses a user may give. DSNs stay out of the web UI's form: they may hold a password."""
    parser.add_argument(
        FLAGS["postgres"],
        default=None,
        include_in_web_ui=False,
        help="libpq DSN of the target PostgreSQL. Default: the PG* variables when set, else an embedded "
        "PostgreSQL started on 127.0.0.1 (kept under the cache dir, stopped at exit). On a worker, its own "
        "value wins over the master's.",
    )
    parser.add_argument(
        FLAGS["pgbouncer"],
        default=None,
        include_in_web_ui=False,
        help="libpq DSN of a pgBouncer in transaction pooling mode in front of the target database, for "
        f"{_needing('pgbouncer')}. Default: one started on a free 127.0.0.1 port for the run (needs the pgbouncer "
        "binary).",
    )
    parser.add_argument(
        FLAGS["redis"],
        default=None,
        include_in_web_ui=False,
        help=f"Redis for {_needing('redis')} (redis://HOST:PORT/DB). Default: a redis-server started on a free "
        "127.0.0.1 port for the run, its append-only file fsynced per write, stopped at exit.",
    )
    parser.add_argument(
        FLAGS["analysts"],
        default=None,
        include_in_web_ui=False,
        help="libpq DSN the analysts query through (e.g. a read-only role of the same database). Default: --pg-dsn.",
    )
    parser.add_argument(
        "--embedded-listen",
        default=None,
        metavar="ADDRESS",
        include_in_web_ui=False,
        help="On the master: the embedded PostgreSQL and the pgBouncer and Redis it starts for a run also listen "
        "on ADDRESS (an IP address of this machine that workers on other machines reach), where clients must "
        "give a password drawn when the master starts; the addresses sent to workers carry it (shown redacted). "
        "Keep it, and Locust's unauthenticated master/worker channel, on a private network. Default: 127.0.0.1 only.",
    )
    parser.add_argument("--embedded-port", type=int, default=EMBEDDED_PORT, help="Port of the embedded PostgreSQL.")
    parser.add_argument("--embedded-data-dir", default=None, help="Data directory of the embedded PostgreSQL.")


def choose_master_port(options: argparse.Namespace) -> None:
    """Before Locust binds its master port (and forks --processes workers): a --processes run left on Locust's
    default port gets a free one of its own (its forked workers connect there, and no stray worker of another run
    finds it); a master whose port is taken is refused with one line, not Locust's bind traceback."""
    if getattr(options, "worker", False):
        return
    processes = getattr(options, "processes", None)
    if processes and options.master_bind_port == LOCUST_MASTER_PORT:
        options.master_bind_port = free_port()
    if processes:
        options.master_port = options.master_bind_port  # forked workers connect to --master-port
    if not (processes or getattr(options, "master", False)):
        return
    if (reason := _taken(options.master_bind_host, options.master_bind_port)) is not None:
        raise Refused(
            f"--master-bind-port {options.master_bind_port} is taken ({reason}; another run's master?): "
            "give a free port with --master-bind-port (and the same --master-port to the workers)",
            "master_bind_port",
        )


def check_web_port(options: argparse.Namespace) -> None:
    """A web UI whose port is taken (another run's?) is refused with one line, not the web server's traceback."""
    if getattr(options, "headless", False) or getattr(options, "worker", False):
        return
    if (reason := _taken(options.web_host, options.web_port)) is not None:
        raise Refused(
            f"--web-port {options.web_port} is taken ({reason}; another run's web UI?): give another with --web-port",
            "web_port",
        )


def _taken(host: str, port: int) -> str | None:
    """Why `port` cannot be bound on `host` ("*" or "": every address), or None when it can."""
    host = "" if host in ("*", "") else host
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Locust's servers bind
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror
    return None


def given_addresses(options: argparse.Namespace) -> dict[str, str]:
    """The addresses the user gave this process (options, or the PG* variables for PostgreSQL)."""
    given = {name: getattr(options, dest, None) for name, dest in GIVEN.items()}
    if given["postgres"] is None:
        given["postgres"] = dsn_from_environment()
    return {name: address for name, address in given.items() if address is not None}


class RunServices:
    """A run's PostgreSQL and services: the addresses given, else started here (and stopped by `stop`)."""

    def __init__(
        self,
        given: dict[str, str],
        *,
        embedded_port: int = EMBEDDED_PORT,
        embedded_data_dir: str | None = None,
        listen: str | None = None,
        layout: str | None = None,
    ) -> None:
        """`listen`: also listen there, beyond loopback, with a password of this object's own; `layout`: the
        telemetry tables' (services.postgres.LAYOUTS), made so and checked (None: whichever they are, plain if new)."""
        self.given = given
        self.layout = layout
        self.embedded_port = embedded_port
        self.embedded_data_dir = embedded_data_dir
        self.listen = listen
        self.password = secrets.token_urlsafe(PASSWORD_BYTES) if listen else None
        self.addresses: dict[str, str] = {}
        self.embedded: EmbeddedPostgres | None = None
        self.replica: StreamingReplica | None = None
        self.watchdog = Watchdog()
        """Stops what was started here, and removes its directories, if this process dies without `stop`."""
        self._stops: list[Callable[[], None]] = []

    @classmethod
    def from_options(cls, options: argparse.Namespace) -> RunServices:
        return cls(
            given_addresses(options),
            embedded_port=options.embedded_port,
            embedded_data_dir=options.embedded_data_dir,
            listen=options.embedded_listen,
            layout=getattr(options, "layout", None),
        )

    @property
    def postgres(self) -> str:
        """The PostgreSQL DSN, once `start_postgres` resolved it."""
        return self.addresses["postgres"]

    def start_postgres(self) -> str:
        """The DSN given (its schema created if missing), else the embedded server's, started now."""
        if "postgres" not in self.addresses:
            if "postgres" in self.given:
                try:
                    apply_schema(self.given["postgres"], self.layout)
                except LayoutMismatch as error:
                    raise Refused(str(error), "layout") from None
                self.addresses["postgres"] = self.given["postgres"]
            else:
                self.embedded = EmbeddedPostgres(
                    self.embedded_data_dir,
                    self.embedded_port,
                    listen=self.listen,
                    password=self.password,
                    watchdog=self.watchdog,
                )
                try:
                    self.addresses["postgres"] = self.embedded.start(self.layout)
                except ListeningElsewhere as error:
                    raise Refused(str(error)) from None
                except LayoutMismatch as error:
                    self.embedded.stop()
                    raise Refused(str(error), "layout") from None
                self._stops.append(self.embedded.stop)
                logger.info("embedded PostgreSQL on %s (data in %s)", redact(self.postgres), self.embedded.data_dir)
        return self.postgres

    def start_replica(self, port: int | None, data_dir: str | None) -> str:
        """A streaming replica of the embedded server (services.replica), the analysts' address from now on."""
        if self.replica is None:
            self.replica = StreamingReplica(self.embedded, port or free_port(), data_dir, self.watchdog)
            self.addresses["analysts"] = self.replica.start()
            self._stops.append(self.replica.stop)
            logger.info(
                "replica of the embedded PostgreSQL on %s (data in %s)", redact(self.replica.dsn), self.replica.data_dir
            )
        return self.addresses["analysts"]

    def start(self, names: Iterable[str]) -> dict[str, str]:
        """Make sure each named service has an address (given, or started now); returns all addresses, the ones
        the user gave included."""
        self.start_postgres()
        self.addresses.update((name, address) for name, address in self.given.items() if name != "postgres")
        for name in sorted(set(names) - self.addresses.keys()):
            if name in self.given:
                self.addresses[name] = self.given[name]
                continue
            starters = {
                "pgbouncer": lambda: PgBouncer(
                    self.postgres, listen=self.listen, password=self.password, watchdog=self.watchdog
                ),
                "redis": lambda: LocalRedis(listen=self.listen, password=self.password, watchdog=self.watchdog),
            }
            if name not in starters:
                raise ValueError(f"unknown service {name!r}: one of {', '.join(starters)}")
            server = starters[name]()
            self.addresses[name] = server.start()
            self._stops.append(server.stop)
            logger.info("%s on %s for the run", name, redact(self.addresses[name]))
        return dict(self.addresses)

    def stop(self) -> None:
        """Stop what was started here, last first. Idempotent."""
        while self._stops:
            self._stops.pop()()
        self.watchdog.close()
