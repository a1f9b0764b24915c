"""Hosts, not just processes: a master and two workers on separate "machines".

Each worker runs in a network namespace of its own (its own loopback), reaching the master over a veth pair
plugged into a bridge that holds the master's address, all created and removed here. The master stays in
the root namespace and binds Locust's channel to its bridge address. Three runs:
- the master's embedded PostgreSQL, pgBouncer and Redis, opened to the workers with --embedded-listen;
- an explicit DSN of a server the test starts on the bridge address, one worker with a DSN of its own;
- no --embedded-listen and no DSN: the worker refuses the master's loopback address with one line.
Every run is bounded in time; nothing here waits on a fixed sleep.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from firehose.run.exit_codes import ExitCode
from firehose.tools.headless import LOCUSTFILE, run_bounded
from firehose.run.reach import loopback_identity, refusal
from services.ports import free_port
from services.redis_server import LocalRedis
from services.pgbouncer import PgBouncer
from services.postgres import EmbeddedPostgres, as_user, bundled_bin_dir, server_user
from tests.conftest import REPO, load_summary

SESSION = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
"""This pytest process's index among the suite's (xdist) workers: the network below is its own, by name and range,
so two workers may each run some of these tests at once."""
MASTER_ADDRESS = f"10.213.{SESSION}.1"
"""The master's address on the bridge: a private range no interface here uses (checked with `ip addr`)."""
WORKERS = {f"fhhosts{SESSION}-w1": f"10.213.{SESSION}.2", f"fhhosts{SESSION}-w2": f"10.213.{SESSION}.3"}
"""Network namespace (a worker's "machine") -> its address on the bridge."""
BRIDGE = f"fhhosts{SESSION}-br"
PREFIX = 24
IP_TIMEOUT_S = 10
RUN_TIMEOUT_S = 240
"""Bound on one distributed run: each writes some 10k-20k rows, seconds of work."""
WORKER_EXIT_S = 60
"""Bound on a worker's exit once its master has gone."""
ALL_PATHS = ["CopyEngineer", "PooledEngineer", "StreamEngineer"]
"""Direct COPY, through pgBouncer, through Redis: one of each per worker (Locust deals users round-robin)."""

PASSWORD_SHOWN = re.compile(r"password=(?!\*\*\*)|redis://[^/@\s]*:(?!\*\*\*@)[^/@\s]+@")
"""A DSN's or a Redis URL's password that was not redacted."""


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=IP_TIMEOUT_S)


def _veth(namespace: str) -> str:
    return f"{namespace}v"  # the bridge's end; the namespace's end is its eth0


def _remove_network() -> None:
    """Remove the namespaces, veths and bridge of this test by name (leftovers of an interrupted run too)."""
    for namespace in WORKERS:
        _ip("netns", "delete", namespace, check=False)  # takes its veth pair with it
        _ip("link", "delete", _veth(namespace), check=False)
    _ip("link", "delete", BRIDGE, check=False)


@pytest.fixture(scope="module")
def machines():
    """Two worker "machines" (network namespaces) on a bridge with the master's address."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces (ip netns) need root: run the tests as root to play separate machines")
    _remove_network()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{MASTER_ADDRESS}/{PREFIX}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for namespace, address in WORKERS.items():
            _ip("netns", "add", namespace)
            _ip("link", "add", _veth(namespace), "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", _veth(namespace), "master", BRIDGE, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield
    finally:
        _remove_network()


@pytest.fixture
def server_dir():
    """A data directory of the test's own for an embedded server (the server's user must enter it); any server
    left running there is stopped, and the directory removed."""
    root = Path(tempfile.mkdtemp(prefix="firehose-hosts-"))
    os.chmod(root, 0o755)
    yield root / "data"
    if (root / "data" / "postmaster.pid").exists():
        command = [str(bundled_bin_dir() / "pg_ctl"), "-D", str(root / "data"), "stop", "-m", "immediate", "-w"]
        subprocess.run(command, **as_user(server_user()), capture_output=True, cwd="/", timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def _distributed_run(
    master_args: list[str], workers: dict[str, list[str]], tmp_path: Path
) -> tuple[int, dict[str, int], dict[str, str]]:
    """A master here and a worker in each named namespace (with its own extra options), bounded in time.
    Returns the master's exit code, each worker's, and every process's output ("master" and the namespaces)."""
    port = free_port()
    master = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--master", "--headless", "--only-summary",
        "--expect-workers", str(len(workers)), "--master-bind-host", MASTER_ADDRESS, "--master-bind-port", str(port),
        *master_args,
    ]  # fmt: skip
    logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ["master", *workers]}
    processes = {namespace: _worker(namespace, port, args, logs[namespace]) for namespace, args in workers.items()}
    try:
        returncode, timed_out = run_bounded(master, RUN_TIMEOUT_S, logs["master"], subprocess.STDOUT)
        exits = {namespace: process.wait(timeout=WORKER_EXIT_S) for namespace, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        outputs = {}
        for name, log in logs.items():
            log.seek(0)
            outputs[name] = log.read()
            log.close()
    assert not timed_out, f"the run did not end in {RUN_TIMEOUT_S} s:\n" + "\n".join(outputs.values())[-6000:]
    return returncode, exits, outputs


def _worker(namespace: str, master_port: int, args: list[str], log) -> subprocess.Popen:
    """`locust --worker` in the namespace, connecting to the master over the bridge."""
    command = [
        "ip", "netns", "exec", namespace, sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
        "--master-host", MASTER_ADDRESS, "--master-port", str(master_port), *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def _writers_by_address(dsn: str, run_id: int) -> dict[str, str]:
    """Client address -> application name of each writer key of the run (who connected from where)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT host(client_addr), application_name FROM firehose_writer_keys WHERE run_id = %s", [run_id]
        ).fetchall()
    assert len(rows) == len(WORKERS), rows
    return dict(rows)


def _reconciles(summary: dict) -> None:
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] > 0, events


def _wrote_through_every_path(summary: dict) -> None:
    """Rows came through COPY, the Redis stream and pgBouncer."""
    by_class = summary["writes"]["by_class"]
    assert sorted(by_class) == sorted(ALL_PATHS) and all(figures["acknowledged"] > 0 for figures in by_class.values())


def _no_password_shown(*texts: str) -> None:
    for text in texts:
        assert not PASSWORD_SHOWN.search(text), PASSWORD_SHOWN.search(text).group(0)


@pytest.mark.slow
def test_workers_on_other_machines_write_to_the_masters_embedded_services(machines, server_dir, tmp_path):
    """The master's embedded PostgreSQL, and the Redis (StreamEngineer) and pgBouncer (PooledEngineer) it starts,
    listen on the bridge address with a password of the run's; both workers write through them (nothing else is
    reachable from their namespaces) and the run reconciles."""
    port, summary_path = free_port(), tmp_path / "summary.json"
    returncode, exits, outputs = _distributed_run(
        [*ALL_PATHS, "-u", "6", "-r", "6", "-t", "120s", "--traces-per-engineer", "30",
         "--embedded-listen", MASTER_ADDRESS, "--embedded-port", str(port), "--embedded-data-dir", str(server_dir),
         "--summary-json", str(summary_path)],
        {namespace: [] for namespace in WORKERS},
        tmp_path,
    )  # fmt: skip
    assert returncode == 0 and set(exits.values()) == {0}, "\n".join(outputs.values())[-6000:]
    summary = load_summary(summary_path)
    _reconciles(summary)
    _wrote_through_every_path(summary)
    database = summary["run"]["database"].split()
    assert f"host={MASTER_ADDRESS}" in database and "password=***" in database, database
    _no_password_shown(*outputs.values(), summary_path.read_text())
    server = EmbeddedPostgres(server_dir, port)
    assert not server.running(), "the master left its embedded server running"
    server.start()
    try:
        writers = _writers_by_address(server.dsn, summary["run"]["run_id"])
    finally:
        server.stop()
    # Each worker drew its key over the bridge, from its own namespace's address.
    assert sorted(writers) == sorted(WORKERS.values()), writers


@pytest.mark.slow
def test_workers_on_other_machines_with_an_explicit_dsn_and_addresses_of_their_own(machines, server_dir, tmp_path):
    """A server the test starts on the bridge address, given to the master (whose pgBouncer and Redis listen there
    too); one worker has a --pg-dsn (the same server, named differently) and a Redis of its own, which win over the
    master's."""
    password = secrets.token_urlsafe(16)
    server = EmbeddedPostgres(server_dir, free_port(), listen=MASTER_ADDRESS, password=password)
    dsn = server.start()
    own_redis = LocalRedis(listen=MASTER_ADDRESS, password=secrets.token_urlsafe(16))
    master_named, own = WORKERS
    self_named = "own dsn of a worker"
    own_dsn = make_conninfo(dsn, application_name=self_named)
    summary_path = tmp_path / "summary.json"
    try:
        own_url = own_redis.start()
        returncode, exits, outputs = _distributed_run(
            [*ALL_PATHS, "-u", "6", "-r", "6", "-t", "120s", "--traces-per-engineer", "30", "--pg-dsn", dsn,
             "--embedded-listen", MASTER_ADDRESS, "--summary-json", str(summary_path)],
            {master_named: [], own: ["--pg-dsn", own_dsn, "--redis-url", own_url]},
            tmp_path,
        )  # fmt: skip
        assert returncode == 0 and set(exits.values()) == {0}, "\n".join(outputs.values())[-6000:]
        summary = load_summary(summary_path)
        writers = _writers_by_address(server.dsn, summary["run"]["run_id"])
        with redis.Redis.from_url(own_url) as client:
            [group] = client.xinfo_groups(f"firehose:{summary['run']['run_id']}:events")
    finally:
        own_redis.stop()
        server.stop()
    _reconciles(summary)
    _wrote_through_every_path(summary)
    assert writers[WORKERS[own]] == self_named, writers
    assert writers[WORKERS[master_named]].startswith("firehose worker "), writers
    assert group["entries-read"] > 0, group  # the worker's StreamEngineers went through its own Redis
    _no_password_shown(*outputs.values(), summary_path.read_text())
    assert not any(password in text for text in [*outputs.values(), summary_path.read_text()])


@pytest.mark.slow
def test_a_worker_that_cannot_reach_the_masters_loopback_refuses_with_one_line(machines, server_dir, tmp_path):
    """No --embedded-listen, no DSN: the worker says what to pass and quits (exit 2), the master stops the run with
    the same line (exit 4, STOPPED); no traceback, no worker left trying."""
    line = (
        "the master's PostgreSQL listens on 127.0.0.1 only, the master's loopback, which this worker cannot reach: "
        "start the master with --embedded-listen ADDRESS, or give this worker --pg-dsn"
    )
    namespace, _other = WORKERS
    returncode, exits, outputs = _distributed_run(
        ["CopyEngineer", "-u", "2", "-r", "2", "-t", "120s", "--embedded-port", str(free_port()),
         "--embedded-data-dir", str(server_dir)],
        {namespace: []},
        tmp_path,
    )  # fmt: skip
    master, worker = outputs["master"], outputs[namespace]
    assert returncode == ExitCode.STOPPED and exits[namespace] == ExitCode.BAD_SETTING, master + worker
    assert [text for text in worker.splitlines() if text.startswith("firehose:")] == [f"firehose: {line}"], worker
    assert re.search(rf"firehose stops the run: firehose worker \d+ on \S+: {re.escape(line)}$", master, re.M), master
    for output in (master, worker):
        assert "Traceback" not in output and "Uncaught exception" not in output, output


@pytest.mark.slow
def test_services_listening_beyond_loopback_ask_for_the_password_there_only(machines, server_dir):
    """Never `trust` beyond loopback: PostgreSQL, pgBouncer and Redis refuse a client on the bridge address without
    the password, and take one with it; loopback stays as it was (no password)."""
    password = secrets.token_urlsafe(16)
    server = EmbeddedPostgres(server_dir, free_port(), listen=MASTER_ADDRESS, password=password)
    bouncer = PgBouncer(server.start(), listen=MASTER_ADDRESS, password=password)
    own_redis = LocalRedis(listen=MASTER_ADDRESS, password=password)
    try:
        for dsn in (server.listen_dsn, bouncer.start()):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(make_conninfo(dsn, password=""), connect_timeout=5, prepare_threshold=None)
            with psycopg.connect(dsn, connect_timeout=5, prepare_threshold=None) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(server.dsn) as conn:  # loopback, no password
            assert conn.execute("SELECT 1").fetchone() == (1,)
        url = own_redis.start()
        assert url.startswith(f"redis://:{password}@{MASTER_ADDRESS}:")
        anonymous = url.replace(f":{password}@", "")
        with redis.Redis.from_url(anonymous) as client, pytest.raises(redis.AuthenticationError):
            client.ping()
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    finally:
        own_redis.stop()
        bouncer.stop()
        server.stop()


@pytest.mark.slow
def test_an_embedded_server_running_without_the_listen_address_is_refused(machines, server_dir):
    """The server in the data directory runs already, on loopback only (another run's): refused before start."""
    server = EmbeddedPostgres(server_dir, free_port())
    server.start()
    try:
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "CopyEngineer", "--headless", "-u", "1", "-t", "30s",
            "--embedded-listen", MASTER_ADDRESS, "--embedded-port", str(server.port),
            "--embedded-data-dir", str(server_dir),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert server.running(), "the master stopped a server it did not start"
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert [line for line in output.splitlines() if line.startswith("firehose:")] == [
        f"firehose: the embedded PostgreSQL in {server_dir} already runs, listening on 127.0.0.1 only: stop it, or "
        "give another --embedded-data-dir and --embedded-port"
    ], output


def test_the_refusal_names_each_address_on_the_masters_loopback_and_the_option_to_pass():
    addresses = {
        "postgres": "host=127.0.0.1 port=54329 user=postgres dbname=firehose",
        "redis": "redis://127.0.0.1:6390/0",
        "pgbouncer": f"host={MASTER_ADDRESS} port=6432 user=postgres password=x dbname=firehose",
    }
    elsewhere = "another machine's boot id/4026531833"
    assert refusal(elsewhere, addresses, {}) == (
        "the master's PostgreSQL and Redis listen on 127.0.0.1 only, the master's loopback, which this worker "
        "cannot reach: start the master with --embedded-listen ADDRESS, or give this worker --pg-dsn and --redis-url"
    )
    assert refusal(elsewhere, addresses, {"postgres": "host=db.internal"}) == (
        "the master's Redis listens on 127.0.0.1 only, the master's loopback, which this worker cannot reach: "
        "start the master with --embedded-listen ADDRESS, or give this worker --redis-url"
    )
    assert refusal(elsewhere, {"postgres": "host=localhost,db.internal"}, {}).startswith(
        "the master's PostgreSQL listens on localhost only"
    )
    assert refusal(elsewhere, {"postgres": "host=::1"}, {}).startswith("the master's PostgreSQL listens on ::1 only")
    # Not on a loopback: the worker goes ahead (and says so, if it then cannot connect).
    assert refusal(elsewhere, {"pgbouncer": addresses["pgbouncer"], "postgres": "host=/run/pg"}, {}) is None
    # The master's own loopback: a worker of the same machine and namespace (--processes) reaches it.
    assert refusal(loopback_identity(), addresses, {}) is None
