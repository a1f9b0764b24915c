"""Settings that cannot work are refused before anything starts: one line, exit code 2, well under 10 s,
no server left running, no worker process left alive, no Locust traceback, no run recorded.

Each setting is checked in process, through the same path Locust's start takes: values through the parser Locust's
main uses (firehose checks them as soon as they are parsed, before Locust forks --processes workers), the rest
through the coordinator that runs the checks at init. One real `locust` run per way a refusal exits shows the whole
exit: refused when parsed, and refused at init after Locust forked two workers.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gevent
import psycopg
import pytest
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments
from locust.env import Environment
from locust.event import Events
from psycopg.conninfo import make_conninfo

from firehose.run import endpoints, lifecycle, preflight
from firehose.run.coordinator import Coordinator
from firehose.run.exit_codes import ExitCode
from firehose.tools.headless import LOCUSTFILE
from services.ports import free_port
from services.postgres import redact
from tests.conftest import REPO
from users import (
    Analyst,
    BatchedEngineer,
    CopyEngineer,
    NaiveEngineer,
    PooledEngineer,
    StreamEngineer,
    ValidatedCopyEngineer,
    ValveEngineer,
)

REFUSAL_S = 10
"""The issue's bound on a refusal; a refused run starts nothing, so it takes about Locust's start-up."""
USER_CLASSES = [
    CopyEngineer, NaiveEngineer, BatchedEngineer, PooledEngineer, StreamEngineer, ValidatedCopyEngineer, ValveEngineer,
    Analyst,
]  # fmt: skip
"""The user classes locustfile.py registers."""
COMMON = ("--headless", "-u", "1", "-t", "30s")
"""What every refused run is given besides its own options."""


def _parser():
    """Locust's parser with firehose's options, as `locust -f locustfile.py` builds it (its parse_args checks)."""
    events = Events()
    lifecycle.register(events, USER_CLASSES)
    parser = get_empty_argument_parser(add_help=False, default_config_files=[])
    setup_parser_arguments(parser)
    events.init_command_line_parser.fire(parser=parser)
    return parser, events


def _parse_unchecked(*args: str):
    """The options as parsed, without firehose's check when parsed (what init and the web form then check)."""
    parser, events = _parser()
    options = type(parser).parse_args(parser, ["-f", str(LOCUSTFILE), *COMMON, *args])
    return options, events


def _refused(*args: str) -> tuple[str, float]:
    """The checks a start runs on `locust -f locustfile.py ARGS`: those made when parsed, then those Locust's init
    runs (firehose.run.coordinator); assert they refuse; return the line the user sees and the seconds taken."""
    options, events = _parse_unchecked(*args)
    named = [user for user in USER_CLASSES if user.__name__ in options.user_classes]
    environment = Environment(user_classes=named, events=events, parsed_options=options)
    environment.create_local_runner()
    start = time.monotonic()
    with pytest.raises(preflight.Refused) as refusal:
        preflight.check_options(options)
        Coordinator(environment, local=None)
    return f"firehose: {refusal.value}", time.monotonic() - start


def _parse_refused(capsys, *args: str) -> str:
    """Parse as Locust's main does; assert the parse exits 2 with one line on stderr and nothing else; return it."""
    parser, _ = _parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["-f", str(LOCUSTFILE), *COMMON, *args])
    captured = capsys.readouterr()
    assert exit_.value.code == ExitCode.BAD_SETTING and captured.out == ""
    [line] = captured.err.splitlines()
    return line


BAD_VALUES = [
    # (arguments, the line, the option's dest the web form names)
    (["--pg-dsn", "not a dsn"], 'firehose: --pg-dsn is not a libpq DSN: missing "=" after "..." in connection info '
     "string", "pg_dsn"),
    (["--pg-dsn", "password=x host"], 'firehose: --pg-dsn is not a libpq DSN: missing "=" after "host" in connection '
     "info string", "pg_dsn"),
    (["--pg-dsn", "host='db.example"], "firehose: --pg-dsn is not a libpq DSN: unterminated quoted string in "
     "connection info string", "pg_dsn"),
    (["--pg-dsn", "password=my s3cret"], 'firehose: --pg-dsn is not a libpq DSN: missing "=" after "..." in '
     "connection info string", "pg_dsn"),
    (["--analyst-dsn", "host=db port=five"], "firehose: --analyst-dsn is not a libpq DSN: port 'five' is not a port "
     "number", "analyst_dsn"),
    (["--engineer-rate", "-3"], "firehose: --engineer-rate must be at least 0, got -3.0", "engineer_rate"),
    (["--engineer-rate", "nan"], "firehose: --engineer-rate must be a finite number, got nan", "engineer_rate"),
    (["--engineer-rate", "inf"], "firehose: --engineer-rate must be a finite number, got inf", "engineer_rate"),
    (["--partition-interval", "0h"], "firehose: --partition-interval 0h: give a span of time, e.g. 1d, 6h or 1h",
     "partition_interval"),
    (["--time-scale", "0"], "firehose: --time-scale 0.0: give a factor above 0, e.g. 1 or 60", "time_scale"),
    (["--outage-deadline", "nan"], "firehose: --outage-deadline must be a finite number, got nan", "outage_deadline"),
    (["--engineer-rate", "100", "--ramp-step", "0"], "firehose: --ramp-step must be at least 0.1, got 0.0",
     "ramp_step"),
    (["--ramp-rate", "-1"], "firehose: --ramp-rate must be at least 0, got -1.0", "ramp_rate"),
    (["--population", "-5"], "firehose: --population must be at least 0, got -5", "population"),
    (["--population", "1000", "--engineer-rate", "5"], "firehose: --population sets each user's rate (its share of "
     "the population's events): drop --engineer-rate", "engineer_rate"),
    (["--history=-1h"], "firehose: --history -1h: give a span of time longer than 0, e.g. 1h or 3d", "history"),
    (["--history=abc"], "firehose: --history abc: give a span of time longer than 0, e.g. 1h or 3d", "history"),
    (["-t", "0s", "--continuous"], "firehose: -t 0s with --continuous never ends (0 is no limit to Locust): give a "
     "run time above 0", "run_time"),
    (["--embedded-port", "70000"], "firehose: --embedded-port must be at most 65535, got 70000", "embedded_port"),
    (["--copy-batch-size", "0"], "firehose: --copy-batch-size must be at least 1, got 0", "copy_batch_size"),
    (["--disk-budget", "lots"], "firehose: --disk-budget: 'lots' is not a size: give bytes with a unit, e.g. 500MB "
     "or 2GB", "disk_budget"),
    (["--valve-max-spool", "lots"], "firehose: --valve-max-spool: 'lots' is not a size: give bytes with a unit, e.g. "
     "500MB or 2GB", "valve_max_spool"),
]  # fmt: skip
"""Item by item, the values of issue 18's item 11 (and sizes of earlier issues) with the line each gets."""


@pytest.mark.parametrize(("args", "line", "option"), BAD_VALUES)
def test_a_bad_value_is_refused_when_parsed_with_one_line_and_exit_code_2(capsys, args, line, option):
    start = time.monotonic()
    assert _parse_refused(capsys, "CopyEngineer", *args) == line
    assert time.monotonic() - start < REFUSAL_S
    assert "s3cret" not in line


@pytest.mark.parametrize(("args", "line", "option"), BAD_VALUES)
def test_the_web_form_check_names_the_field(args, line, option):
    """The same check, as the web form's /swarm hook calls it: the refusal names the option's dest."""
    options, _ = _parse_unchecked("CopyEngineer", *args)
    with pytest.raises(preflight.Refused) as refusal:
        preflight.check_options(options)
    assert f"firehose: {refusal.value}" == line and refusal.value.option == option


def test_the_defaults_pass_the_check():
    """Control: a plain run's options are not refused (a refusal above is not the check refusing everything)."""
    options, _ = _parse_unchecked("CopyEngineer", "--pg-dsn", "host=db.example port=5432 password=x", "-t", "1m")
    preflight.check_options(options)


def test_an_unknown_class_name(capsys):
    line = _parse_refused(capsys, "CopyEngineer", "CopyEngineerz")
    assert line == (
        "firehose: unknown user class CopyEngineerz: choose from CopyEngineer, NaiveEngineer, BatchedEngineer, "
        "PooledEngineer, StreamEngineer, ValidatedCopyEngineer, ValveEngineer, Analyst"
    )


def test_a_processes_run_gets_a_master_port_of_its_own():
    """Two --processes runs on one machine: each binds a free port, and its forked workers connect there."""
    parser, _ = _parser()
    first, second = (parser.parse_args(["-f", str(LOCUSTFILE), *COMMON, "--processes", "2"]) for _ in range(2))
    for options in (first, second):
        assert options.master_port == options.master_bind_port != endpoints.LOCUST_MASTER_PORT
    assert first.master_port != second.master_port


def test_a_master_port_that_is_taken(capsys):
    """What the second run on one machine meets when it names the first one's master port."""
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _parse_refused(capsys, "CopyEngineer", "--processes", "2", "--master-bind-port", str(port))
    assert line == (
        f"firehose: --master-bind-port {port} is taken (Address already in use; another run's master?): give a "
        "free port with --master-bind-port (and the same --master-port to the workers)"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("rate_priority")  # a timing: refused well under REFUSAL_S
def test_a_refusal_exits_2_with_one_line_no_traceback_and_nothing_left_running(embedded_options):
    """The whole exit, in a real `locust` process: what every in-process check above relies on."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *COMMON, "CopyEngineer", "--copy-batch-size",
               "0", *embedded_options]  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Uncaught exception" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if line.startswith("firehose:")]
    assert line == "firehose: --copy-batch-size must be at least 1, got 0" and elapsed < REFUSAL_S


def test_a_web_port_that_is_taken(capsys):
    """A second web UI run on one machine (the first one holds the port)."""
    parser, _ = _parser()
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["-f", str(LOCUSTFILE), "CopyEngineer", "--web-port", str(port)])
    assert exit_.value.code == ExitCode.BAD_SETTING
    assert capsys.readouterr().err == (
        f"firehose: --web-port {port} is taken (Address already in use; another run's web UI?): give another with "
        "--web-port\n"
    )


def test_the_web_uis_own_parse_is_not_checked_again():
    """Locust's web UI parses the command line again to fill its form, while it holds its port: not refused."""
    parser, events = _parser()
    port = free_port()
    argv = ["-f", str(LOCUSTFILE), "CopyEngineer", "--web-port", str(port)]
    parser.parse_args(argv)  # Locust's start, before it binds
    with socket.socket() as web_ui:
        web_ui.bind(("", port))
        web_ui.listen()
        again = get_empty_argument_parser(add_help=False, default_config_files=[])
        setup_parser_arguments(again)
        events.init_command_line_parser.fire(parser=again)  # as locust.argument_parser.ui_extra_args_dict does
        assert again.parse_args(argv).web_port == port


@pytest.mark.slow
def test_a_processes_run_refused_at_init_leaves_no_worker_alive():
    """Refused after Locust forked its two workers (the DSN is checked at init): exit 2, one line, and the workers
    are gone when the master has exited (they carry the master's command line, with the DSN's unique port). Not
    timed: three processes starting (the test above times one refused run, at a raised priority)."""
    port = free_port()
    dsn = f"host=127.0.0.1 port={port} connect_timeout=2"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *COMMON, "CopyEngineer", "--processes", "2",
               "--pg-dsn", dsn]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.BAD_SETTING, output[-3000:]
    assert "Traceback" not in output and "Uncaught exception" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if line.startswith("firehose:")]
    assert line.startswith(f"firehose: cannot connect to PostgreSQL at {redact(dsn)}: ")
    assert not _processes_with(f"port={port}"), "a worker of the refused run is still alive"


def _processes_with(word: str) -> list[int]:
    """Processes (not zombies) whose command line holds `word`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            alive = (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
            if alive and word in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return [pid for pid in found if pid != os.getpid()]


@pytest.fixture
def embedded_options(tmp_path):
    """Options that would start an embedded server of the test's own, to prove none was left running."""
    port = free_port()
    yield ["--embedded-port", str(port), "--embedded-data-dir", str(tmp_path / "pg")]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "a server was left running"
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["CopyEngineer", "--copy-batch-size", "0"], "firehose: --copy-batch-size must be at least 1, got 0"),
        (["CopyEngineer", "--copy-batch-size", "-5"], "firehose: --copy-batch-size must be at least 1, got -5"),
        (["CopyEngineer", "--copy-pool-size", "-1"], "firehose: --copy-pool-size must be at least 1, got -1"),
        (["NaiveEngineer", "--naive-pool-size", "0"], "firehose: --naive-pool-size must be at least 1, got 0"),
        (["StreamEngineer", "--stream-max-len", "0"], "firehose: --stream-max-len must be at least 1, got 0"),
        (["CopyEngineer", "--traces-per-engineer", "0"], "firehose: --traces-per-engineer must be at least 1, got 0"),
        (["CopyEngineer", "-u", "0"], "firehose: -u 0 starts no user: a headless run needs at least 1 (-u N)"),
        (["CopyEngineer", "--drain-timeout", "0"], "firehose: --drain-timeout must be at least 1, got 0"),
        (["CopyEngineer", "--outage-deadline", "0"], "firehose: --outage-deadline must be at least 1, got 0.0"),
        (["StreamEngineer", "--stream-claim-idle", "0"], "firehose: --stream-claim-idle must be at least 0.1, got 0.0"),
        (
            ["CopyEngineer", "--disk-budget", "lots"],
            "firehose: --disk-budget: 'lots' is not a size: give bytes with a unit, e.g. 500MB or 2GB",
        ),
        (
            ["CopyEngineer", "--disk-floor", "150%"],
            "firehose: --disk-floor: '150%' is not a share of the volume: give 0% to 99%",
        ),
    ],
)
def test_sizes_out_of_range(embedded_options, args, line):
    refused, elapsed = _refused(*args, *embedded_options)
    assert refused == line and elapsed < REFUSAL_S


@pytest.mark.parametrize(
    ("address", "line"),
    [
        ("db-host", "firehose: --embedded-listen db-host: give an IP address of this machine that workers reach"),
        ("127.0.0.1", "firehose: --embedded-listen 127.0.0.1: give the address of this machine that workers "
         "reach, not loopback or a wildcard"),
        ("0.0.0.0", "firehose: --embedded-listen 0.0.0.0: give the address of this machine that workers reach, "
         "not loopback or a wildcard"),
        ("192.0.2.254", "firehose: --embedded-listen 192.0.2.254 is not an address of this machine "
         "(Cannot assign requested address)"),
    ],
)  # fmt: skip
def test_an_embedded_listen_address_workers_cannot_reach(embedded_options, address, line):
    refused, elapsed = _refused("CopyEngineer", "--embedded-listen", address, *embedded_options)
    assert refused == line and elapsed < REFUSAL_S


def test_a_dsn_nothing_listens_on():
    port = free_port()
    dsn = f"host=127.0.0.1 port={port} user=x password=s3cret"
    refused, elapsed = _refused("CopyEngineer", "--pg-dsn", dsn)
    assert refused == (
        f"firehose: cannot connect to PostgreSQL at {redact(dsn)}: connection "
        f'failed: connection to server at "127.0.0.1", port {port} failed: Connection refused'
    )
    assert "s3cret" not in refused and "password=***" in refused
    assert elapsed < REFUSAL_S


@pytest.mark.slow
def test_a_dsn_that_never_answers_times_out_in_seconds():
    """A server that takes the connection and never speaks (as a host dropping packets would leave us waiting)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        refused, elapsed = _refused("CopyEngineer", "--pg-dsn", f"host=127.0.0.1 port={port}")
    assert refused.startswith(f"firehose: cannot connect to PostgreSQL at host=127.0.0.1 port={port}: ")
    assert "timeout expired" in refused
    assert elapsed < REFUSAL_S


@pytest.mark.slow
def test_a_role_that_does_not_exist(dsn):
    refused, elapsed = _refused("CopyEngineer", "--pg-dsn", make_conninfo(dsn, user="nobody_here"))
    assert refused.startswith("firehose: cannot connect to PostgreSQL at ")
    assert refused.endswith('FATAL:  role "nobody_here" does not exist')
    assert elapsed < REFUSAL_S


@pytest.fixture
def other_database(dsn):
    """A database of the test's own, for tables of another shape."""
    name = "firehose_test_other_shape"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.slow
def test_an_existing_table_of_another_shape(other_database):
    with psycopg.connect(other_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE spans (event_id bigint PRIMARY KEY, trace_id text, payload jsonb)")
    refused, elapsed = _refused("CopyEngineer", "--pg-dsn", other_database)
    assert refused.startswith("firehose: table spans differs from schema/tables.sql (missing span_id, parent_span_id, ")
    assert "; unexpected payload; other type or nullability trace_id)" in refused
    assert elapsed < REFUSAL_S
    with psycopg.connect(other_database) as conn:  # left as it was: the schema step never ran
        assert conn.execute("SELECT to_regclass('metrics')").fetchone()[0] is None


@pytest.mark.slow
def test_a_role_missing_a_privilege(dsn):
    role = "firehose_test_reader"
    with psycopg.connect(dsn, autocommit=True) as conn:
        if _exists(conn, role):  # left by an interrupted run
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        bookkeeping = "quarantine, firehose_runs, firehose_writer_keys, firehose_run_summaries"
        conn.execute(f"GRANT INSERT ON spans, logs, {bookkeeping} TO {role}")
    try:
        refused, elapsed = _refused("CopyEngineer", "--pg-dsn", make_conninfo(dsn, user=role))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert refused == f"firehose: role {role} lacks the INSERT privilege on metrics: grant it first"
    assert elapsed < REFUSAL_S


def _exists(conn: psycopg.Connection, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None


@pytest.mark.slow
def test_the_layout_check_reads_what_the_schema_creates(postgres):
    """Control: the real schema passes the same checks (a refusal above is not the check refusing everything)."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        preflight.check_tables(conn)
        preflight.check_privileges(conn)


def test_a_redis_url_nothing_listens_on():
    port = free_port()
    refused, elapsed = _refused("StreamEngineer", "--redis-url", f"redis://:s3cret@127.0.0.1:{port}/0")
    assert refused.startswith(f"firehose: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert "s3cret" not in refused and elapsed < REFUSAL_S


@pytest.mark.slow
def test_a_redis_older_than_7(dsn):
    """A server that answers like Redis 6.2 (XAUTOCLAIM's reply differs there)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = gevent.spawn(_answer_like_redis_6, listener)
        try:
            refused, elapsed = _refused("StreamEngineer", "--pg-dsn", dsn, "--redis-url", f"redis://127.0.0.1:{port}/0")
        finally:
            server.kill()
    assert refused == f"firehose: Redis at redis://127.0.0.1:{port}/0 is 6.2.14: the stream path needs Redis 7 or later"
    assert elapsed < REFUSAL_S


def _answer_like_redis_6(listener: socket.socket) -> None:
    """HELLO (a RESP3 map) and INFO answer as a 6.2 server does; any other command (CLIENT SETINFO, ...) +OK. One
    reply per command: a busy machine can deliver several of the client's commands in one read."""
    info = b"# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n"
    hello = b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n6.2.14\r\n$5\r\nproto\r\n:3\r\n"
    while True:
        conn, _ = listener.accept()
        with conn:
            pending = b""
            while data := conn.recv(65536):
                pending += data
                while (command := _next_command(pending)) is not None:
                    name, pending = command
                    if name == b"HELLO":
                        conn.sendall(hello)
                    elif name == b"INFO":
                        conn.sendall(b"$%d\r\n%s\r\n" % (len(info), info))
                    else:
                        conn.sendall(b"+OK\r\n")


def _next_command(buffer: bytes) -> tuple[bytes, bytes] | None:
    """The first whole RESP command of `buffer` (its name upper-cased) and what follows it; None until one is whole."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer[1:].split(b"\r\n", 1)
    words = []
    for _ in range(int(head)):
        if b"\r\n" not in rest:
            return None
        length, rest = rest[1:].split(b"\r\n", 1)
        if len(rest) < int(length) + 2:
            return None
        words.append(rest[: int(length)])
        rest = rest[int(length) + 2 :]
    return words[0].upper(), rest


def test_a_service_binary_that_is_missing(embedded_options, monkeypatch):
    """StreamEngineer named, no --redis-url, and no redis-server on the PATH (the child inherits it)."""
    monkeypatch.setenv("PATH", "/nonexistent")
    refused, elapsed = _refused("StreamEngineer", *embedded_options)
    assert refused == (
        "firehose: redis-server is not installed: install it (apt-get install redis-server, or make services), "
        "or give --redis-url of a running one"
    )
    assert elapsed < REFUSAL_S


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--pg-setting", "no_such_setting=1"], 'unrecognized configuration parameter "no_such_setting"'),
        (["--pg-setting", "synchronous_commit"], "--pg-setting takes NAME=VALUE, got 'synchronous_commit'"),
    ],
)
def test_server_levers_that_cannot_apply(dsn, args, line):
    refused, elapsed = _refused("CopyEngineer", "--pg-dsn", dsn, *args)
    assert refused == f"firehose: --pg-setting / --jsonb-compression refused: {line}"
    assert elapsed < REFUSAL_S


@pytest.mark.slow
def test_server_levers_need_a_superuser(dsn):
    role = "firehose_test_not_super"
    with psycopg.connect(dsn, autocommit=True) as conn:
        if _exists(conn, role):
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN; GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        refused, _ = _refused(
            "CopyEngineer", "--pg-dsn", make_conninfo(dsn, user=role), "--pg-setting", "work_mem=64MB"
        )
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert refused.startswith("firehose: --pg-setting / --jsonb-compression refused: permission denied")
    assert refused.endswith("(server levers need a superuser)")
