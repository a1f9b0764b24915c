"""A pgBouncer of our own, in transaction pooling mode, in front of a PostgreSQL (for writers.pooled).

It listens on a free 127.0.0.1 port, its config, auth file and log in a temporary directory, and
runs in the foreground as our child, so `stop` ends exactly the process `start` began. pgBouncer
refuses to run as root: as root it runs as the unprivileged user the embedded PostgreSQL uses. It dies with
this process (`die_with_parent`), and a `Watchdog` removes its directory then.

Authentication: the server's user (and password, if the DSN resolves one) goes into the auth file.
Without a password clients are trusted (`auth_type = trust`; it only listens on loopback, like the
trust-auth embedded server behind it). With one, clients must give it (`scram-sha-256`), and
pgBouncer logs into PostgreSQL with it, whichever method the server asks for. Listening on another
address too (`listen`, for workers on other machines) needs a password: the server's, else `password`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from services.ports import free_port
from services.postgres import as_user, redact, server_user
from services.watchdog import Watchdog, die_with_parent

logger = logging.getLogger("firehose")

MAX_CLIENT_CONN = 2_000
"""Client connections it accepts: many worker processes' writer pools (e.g. 16 x 20 = 320) with room to
spare, under the 20,000 file descriptors a process may open here."""
DEFAULT_POOL_SIZE = 20
"""Server connections per database and user: as many as the batched writer's own pool, so one process
through the bouncer runs the server as hard as one writing directly, while more processes share them."""
START_TIMEOUT_S = 30
"""Time for pgBouncer to listen and pass a first query through to PostgreSQL."""
STOP_TIMEOUT_S = 10
"""Time for pgBouncer to exit after SIGTERM (immediate shutdown) before it is killed."""


class PgBouncerMissing(RuntimeError):
    """The pgbouncer binary is not installed."""


class PgBouncer:
    """pgBouncer in transaction pooling mode on 127.0.0.1:`port` (and `listen`, if given), in front of the
    PostgreSQL of `conninfo`."""

    def __init__(
        self,
        conninfo: str,
        *,
        port: int | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_client_conn: int = MAX_CLIENT_CONN,
        listen: str | None = None,
        password: str | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        """`watchdog`: stops pgBouncer and removes its directory if this process dies without `stop`."""
        self.conninfo = conninfo
        self.watchdog = watchdog
        self._watched: list[int] = []
        self.listen = listen
        self.password = password
        self.port = port
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.dsn: str | None = None
        self._process: subprocess.Popen | None = None
        self._dir: Path | None = None

    def start(self) -> str:
        """Start pgBouncer, wait until a query passes through it, and return its DSN."""
        binary = _binary()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:  # resolves PG* variables, .pgpass, defaults
            info = conn.info
            server, user, dbname = f"host={info.host} port={info.port}", info.user, info.dbname
            password = info.password or self.password
        if self.listen and not password:
            raise ValueError("pgBouncer listening beyond loopback needs a password")
        self.port = self.port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="firehose-pgbouncer-"))
        if self.watchdog is not None:
            self._watched.append(self.watchdog.watch_directory(self._dir))
        config = self._write_config(server, user, password)
        host = self.listen or "127.0.0.1"
        self.dsn = make_conninfo(host=host, port=self.port, dbname=dbname, user=user, password=password)
        with open(self._dir / "pgbouncer.log", "wb") as log:
            self._process = subprocess.Popen(
                [binary, str(config)],
                **as_user(server_user()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop it before the writers drain
                preexec_fn=die_with_parent,  # but it must not outlive us if we are killed
            )
        if self.watchdog is not None:
            self._watched.append(self.watchdog.watch_process(self._process.pid, "pgbouncer"))
        try:
            self._wait_until_ready()
        except Exception:
            self.stop()
            raise
        logger.info("pgBouncer (transaction pooling) on %s, in front of %s", redact(self.dsn), redact(self.conninfo))
        return self.dsn

    def stop(self) -> None:
        """Stop the pgBouncer this object started, wait for it to exit, and remove its directory."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)  # it may hold a password
            self._dir = None
        while self._watched:
            self.watchdog.forget(self._watched.pop())

    def _write_config(self, server: str, user: str, password: str | None) -> Path:
        assert self._dir is not None
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {server}",  # any database name, passed on as is
                    "[pgbouncer]",
                    f"listen_addr = {','.join(['127.0.0.1', *([self.listen] if self.listen else [])])}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",  # TCP only: no socket file left in /tmp
                    "pool_mode = transaction",
                    f"max_client_conn = {self.max_client_conn}",
                    f"default_pool_size = {self.pool_size}",
                    f"auth_type = {'scram-sha-256' if password else 'trust'}",
                    "auth_file = users.txt",
                    "",
                ]
            )
        )
        users = self._dir / "users.txt"
        users.write_text(f"{_quote(user)} {_quote(password or '')}\n")
        if (owner := server_user()) is not None:
            entry = pwd.getpwnam(owner)
            for path in (self._dir, config, users):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        users.chmod(0o600)
        return config

    def _wait_until_ready(self) -> None:
        assert self._process is not None and self.dsn is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with code {self._process.returncode}:\n{self._log()}")
            try:
                with psycopg.connect(self.dsn, prepare_threshold=None, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    message = f"pgbouncer did not pass a query in {START_TIMEOUT_S} s: {error}\n{self._log()}"
                    raise RuntimeError(message) from error
                time.sleep(0.1)

    def _log(self) -> str:
        assert self._dir is not None
        path = self._dir / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _binary() -> str:
    """The pgbouncer executable; Debian puts it in /usr/sbin, which a normal user's PATH may lack."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise PgBouncerMissing(
            "pgbouncer is not installed: install it (`sudo apt-get install pgbouncer`, or `make services`), "
            "or give --pgbouncer-dsn of a running pgBouncer in transaction pooling mode"
        )
    return found


def _quote(value: str) -> str:
    """A field of pgBouncer's auth file: in double quotes, a double quote doubled."""
    return '"' + value.replace('"', '""') + '"'
