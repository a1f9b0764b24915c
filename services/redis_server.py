"""A throwaway `redis-server` for the Redis Streams strategy when the user gives no --redis-url.

It listens on a free 127.0.0.1 port and works in a temporary directory removed when it stops. The stream is
a buffer in front of PostgreSQL, but one that must not lose what it acknowledged: the server keeps an
append-only file fsynced at every write (`PERSISTENCE`), so a restart, by SIGTERM or kill -9, loses no
entry, consumer group or pending list. Only this process's own server is ever stopped; it dies with this process
(`die_with_parent`), and a `Watchdog` removes its directory then. Started as root, it runs as the unprivileged
user the embedded PostgreSQL uses, as pgBouncer does. Listening on another
address too (`listen`, for workers on other machines) needs a password (`requirepass`, in a config file only we
can read, not on the command line that `ps` shows).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import redis

from services.ports import free_port
from services.postgres import as_user, server_user
from services.watchdog import Watchdog, die_with_parent

START_TIMEOUT_S = 10
"""redis-server answers PING within ~50 ms here; ten seconds leaves room for a loaded machine."""
STOP_TIMEOUT_S = 10
"""A SIGTERM shutdown only fsyncs the append-only file (already synced at every write); past this it is killed."""
PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "", "--auto-aof-rewrite-min-size", "1gb")
"""Every write is in the append-only file, fsynced, before Redis replies: an acknowledged XADD (and XACK, XDEL,
the consumer group) survives a kill -9. No RDB snapshots: the AOF is the one copy. Cost: README, "Reliability".
The AOF grows ~3.3 KB a row streamed while the stream itself stays small, so Redis's default (rewrite from 64 MB)
forked a rewrite every ~20k rows: from 1 GB, Redis spent 11 instead of 19 us of CPU per row and StreamEngineer
wrote 10 % more rows/s (README, "Performance"), for up to ~1 GB of file in the server's temporary directory."""
PORT_ATTEMPTS = 3
"""A free port can be taken by another process before redis-server binds it: try a few."""
INSTALL_HINT = "install it (Debian/Ubuntu: `apt-get install redis-server`) or pass --redis-url redis://HOST:PORT/0"


class LocalRedis:
    """One redis-server child process on a free loopback port, stopped (and its directory removed) by `stop`."""

    def __init__(
        self, listen: str | None = None, password: str | None = None, watchdog: Watchdog | None = None
    ) -> None:
        """`watchdog`: stops the server and removes its directory if this process dies without `stop`."""
        if listen and not password:
            raise ValueError("Redis listening beyond loopback needs a password")
        self.listen = listen
        self.password = password
        self.watchdog = watchdog
        self._watched: list[int] = []
        self.url: str | None = None
        self._process: subprocess.Popen | None = None
        self._dir: Path | None = None
        self._port: int | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (its CPU time is read from /proc by `firehose bench`)."""
        return None if self._process is None else self._process.pid

    def start(self) -> str:
        """Start the server and return its URL once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"the Redis Streams strategy needs redis-server, which is not on PATH: {INSTALL_HINT}")
        self._dir = Path(tempfile.mkdtemp(prefix="firehose-redis-"))
        if self.watchdog is not None:
            self._watched.append(self.watchdog.watch_directory(self._dir))
        self._write_config()
        for _ in range(PORT_ATTEMPTS):
            self._port = free_port()
            url = self._spawn(binary)
            if self._wait_ready(url):
                self.url = url
                return url
        self._fail("redis-server exited at start (ports taken?)")

    def restart(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with `kill`), then start it again on its port and append-only file."""
        self._halt(kill=kill)
        if not self._wait_ready(self._spawn(shutil.which("redis-server"))):
            self._fail(f"redis-server did not start again on port {self._port}")

    def stop(self) -> None:
        """Stop the server this object started and wait for it to exit. Idempotent."""
        self._halt(kill=False)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        while self._watched:
            self.watchdog.forget(self._watched.pop())

    def _spawn(self, binary: str) -> str:
        self._process = subprocess.Popen(
            [binary, str(self._config), "--port", str(self._port), *PERSISTENCE,
             "--dir", str(self._dir), "--logfile", str(self._log)],
            **as_user(server_user()),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal must not stop it before the writers drain
            preexec_fn=die_with_parent,  # but it must not outlive us if we are killed
        )  # fmt: skip
        if self.watchdog is not None:
            self._watched.append(self.watchdog.watch_process(self._process.pid, "redis-server"))
        return self._url(self._port)

    def _halt(self, *, kill: bool) -> None:
        """Stop the server process, keeping its directory. Idempotent."""
        if self._process is not None:
            self._process.kill() if kill else self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    @property
    def _config(self) -> Path:
        return self._dir / "redis.conf"

    def _write_config(self) -> None:
        """Where it listens and, beyond loopback, the password clients must give."""
        config = self._config
        config.touch(mode=0o600)
        lines = [f"bind 127.0.0.1{f' {self.listen}' if self.listen else ''}"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        config.write_text("\n".join(lines) + "\n")
        if (owner := server_user()) is not None:  # it writes its append-only file and log there
            entry = pwd.getpwnam(owner)
            for path in (self._dir, config):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _url(self, port: int) -> str:
        host = self.listen or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host  # an IPv6 address, in a URL
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{credentials}{host}:{port}/0"

    @property
    def _log(self) -> Path:
        return self._dir / "redis.log"

    def _wait_ready(self, url: str) -> bool:
        """True once the server answers; False when it exited (its port was taken), after reaping it."""
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    self._process = None
                    return False
                try:
                    return client.ping()
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self._fail(f"redis-server did not answer within {START_TIMEOUT_S} s")

    def _fail(self, reason: str) -> NoReturn:
        """Stop what was started and raise, with the end of the server's log (read before it is removed)."""
        try:
            tail = "\n".join(self._log.read_text().splitlines()[-10:])
        except OSError:
            tail = "(no log)"
        self.stop()
        raise RuntimeError(f"{reason}; its log ends with:\n{tail}")
