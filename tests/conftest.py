"""Shared fixtures: a real PostgreSQL of the session's own (embedded, on a free loopback port; one per xdist
worker), servers of a test's own copied from a template data directory made once per session, and the value
pools built once per session."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import os
import shutil
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

import jsonschema
import psycopg
import pytest

from collections.abc import Callable, Iterator

from psycopg.conninfo import make_conninfo

from firehose.admin.reset import running_pid
from firehose.tools.server_cost import living_children
from services.postgres import EmbeddedPostgres, apply_schema
from firehose.tools.headless import locust_command, run_bounded
from services.ports import free_port
from telemetry.pools import Pools

REPO = Path(__file__).resolve().parent.parent
# Every Locust master the tests start waits up to 30 s (not Locust's 1 s) for its workers to report the users they
# spawned: a worker reports only once its value pools are built (~1.5 s of CPU), later on a busy machine (tests on
# several xdist workers), and a master that judged the end of a fixed-volume run before the reports came would
# count 0 engineers and end it at once. The wait ends as soon as the reports are in.
os.environ.setdefault("LOCUST_WAIT_FOR_WORKERS_REPORT_AFTER_RAMP_UP", "30")
SUMMARY_SCHEMA = json.loads((REPO / "schema" / "summary.schema.json").read_text())


def validate_summary(summary: dict) -> dict:
    """`summary` (a --summary-json document) checked against schema/summary.schema.json; returned as it is."""
    jsonschema.Draft202012Validator(SUMMARY_SCHEMA).validate(summary)
    return summary


def spans_in(dsn: str) -> int:
    """Rows in `spans` now: 0 while the server is restarting (a test waits on rows arriving, not on time)."""
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    except psycopg.OperationalError:
        return 0


def load_summary(path: Path) -> dict:
    """The --summary-json file at `path`, validated against the schema: every test that writes one reads it so."""
    return validate_summary(json.loads(Path(path).read_text()))


@pytest.fixture(scope="session", autouse=True)
def session_runs_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The store of kept runs (firehose.report.store) for the whole session: module- and session-scoped fixtures
    that start Locust (set up before any test's own `runs_store`) keep their runs here, never in the user's."""
    store = tmp_path_factory.mktemp("session-runs")
    before = os.environ.get("FIREHOSE_RUNS_DIR")
    os.environ["FIREHOSE_RUNS_DIR"] = str(store)
    yield store
    if before is None:
        os.environ.pop("FIREHOSE_RUNS_DIR", None)
    else:
        os.environ["FIREHOSE_RUNS_DIR"] = before


@pytest.fixture(autouse=True)
def runs_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps the summaries of the runs it starts (firehose.report.store) in an empty store of its own
    (FIREHOSE_RUNS_DIR, which Locust subprocesses inherit), never in the user's."""
    store = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("FIREHOSE_RUNS_DIR", str(store))
    return store


@pytest.fixture(scope="session")
def postgres(template_data_dir):
    """An embedded PostgreSQL started for this test session (a copy of the template), stopped (and its data
    removed) after it."""
    root = _scratch_root("firehose-test-")
    subprocess.run(["cp", "-a", str(template_data_dir), str(root / "data")], check=True, timeout=60)
    # A Unix socket too, so a test can reach the same database by another address.
    server = EmbeddedPostgres(root / "data", port=free_port(), socket_dir=root / "socket", settings=TEST_SETTINGS)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pools() -> Pools:
    """The value pools of seed 0, built once per session (Faker's work, ~1 s of CPU each time)."""
    return Pools.build(0)


TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
"""The test servers' settings beside schema/postgresql.conf's: no fsync and no full-page images, since a test's server
never outlives an operating-system crash; what a process crash or an immediate shutdown keeps (the WAL written at
each commit) is what it keeps with them. Commits stay synchronous: an acknowledged row must survive a restart."""


def _scratch_root(prefix: str) -> Path:
    """A temporary directory the server's user may enter (it runs as another user when the tests run as root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)
    return root


@pytest.fixture(scope="session")
def template_data_dir() -> Iterator[Path]:
    """A data directory initialised once per session (initdb, the database, the schema), its server stopped:
    `own_postgres` copies it for each test that needs a server of its own."""
    root = _scratch_root("firehose-template-")
    server = EmbeddedPostgres(root / "data", port=free_port(), settings=TEST_SETTINGS)
    server.start()
    server.stop()
    yield server.data_dir
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres(template_data_dir) -> Iterator[Callable[..., EmbeddedPostgres]]:
    """A factory of PostgreSQL servers of the test's own, which it may stop, restart, reconfigure or reset (the
    session's server stays as it is): `own_postgres(settings=None, start=True)` copies the template data
    directory (ownership kept) to a new one on a free port. Whatever the test left running is stopped after it."""
    made: list[tuple[EmbeddedPostgres, Path]] = []

    def make(settings: dict | None = None, start: bool = True) -> EmbeddedPostgres:
        root = _scratch_root("firehose-own-")
        subprocess.run(["cp", "-a", str(template_data_dir), str(root / "data")], check=True, timeout=60)
        server = EmbeddedPostgres(root / "data", port=free_port(), settings={**TEST_SETTINGS, **(settings or {})})
        made.append((server, root))
        if start:
            server.start()
        return server

    yield make
    for server, root in made:
        server.started_here = True  # whatever a test or a run left running there goes with the test
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dsn(postgres):
    """The test server's DSN, its telemetry tables emptied."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE spans, metrics, logs, quarantine")
    return postgres.dsn


RATE_NICE = -10
"""The nice value of a test that compares a rate while the rest of the suite shares its cores: Linux's scheduler then
weighs each of its processes ~9 times one of theirs (9,548 against 1,024), so the rate gets the CPU it asks for (a
fraction of a core here) and the other tests the rest."""


def _renice(pids: list[int], nice: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # gone meanwhile
            os.setpriority(os.PRIO_PROCESS, pid, nice)


@pytest.fixture
def rate_priority(postgres) -> Iterator[None]:
    """For a test that compares a rate (`@pytest.mark.usefixtures("rate_priority")`): while it lasts, the session
    server's processes and this process (whose nice value the Locust processes it starts inherit) run at RATE_NICE.
    Raising a priority takes root, as `make test` has in CI; without it the test is skipped rather than judged on
    cores it does not get."""
    if os.geteuid() != 0:
        pytest.skip("a rate compared while other tests run needs root to raise its priority (nice -10)")
    postmaster = running_pid(postgres.data_dir)
    _renice([os.getpid(), postmaster, *living_children(postmaster)], RATE_NICE)
    try:
        yield
    finally:
        _renice([os.getpid(), postmaster, *living_children(postmaster)], 0)


PARTITIONED_DATABASE = "firehose_partitioned"
"""The session server's second database: the telemetry tables in the partitioned layout (schema/partitioned.sql)."""


@pytest.fixture(scope="session")
def partitioned_database(postgres) -> str:
    """The DSN of a database of the session's server whose telemetry tables are partitioned, created once."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {PARTITIONED_DATABASE}")
    partitioned = make_conninfo(postgres.dsn, dbname=PARTITIONED_DATABASE)
    apply_schema(partitioned, "partitioned")
    return partitioned


@pytest.fixture
def partitioned_dsn(partitioned_database):
    """As `dsn`, in the partitioned layout: its telemetry tables without a partition (tests make those they need, of
    the interval they need: partitions of another interval left by an earlier test would overlap them)."""
    with psycopg.connect(partitioned_database, autocommit=True) as conn:
        partitions = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relname ~ '^(spans|metrics|logs)_p[0-9]{8}_[0-9]{4}$'"
            " AND c.relkind = 'r'"
        ).fetchall()
        if partitions:
            conn.execute(f"DROP TABLE {', '.join(name for (name,) in partitions)}")
        conn.execute("TRUNCATE quarantine")
    return partitioned_database


def run_locust(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """A real headless Locust run of our locustfile, bounded in time (see firehose.tools.headless)."""
    processes = 0
    if "--processes" in args:
        at = args.index("--processes")
        processes, args = int(args[at + 1]), args[:at] + args[at + 2 :]
    command = locust_command(*args, processes=processes)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        returncode, timed_out = run_bounded(command, timeout, stdout, stderr)
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(command, returncode, stdout.read(), stderr.read())
    if timed_out:
        raise AssertionError(f"locust did not finish in {timeout} s:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


DURATIONS = REPO / "tests" / "durations.json"
"""Each test's seconds (setup + call + teardown) in a recent run of the suite: `--record-durations` rewrites it."""
UNKNOWN_SLOW_S, UNKNOWN_FAST_S = 10.0, 0.1
"""A test not in DURATIONS yet (a new one) is taken to last this long."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"Write each test's seconds to {DURATIONS.relative_to(REPO)} (merged with those of tests not run).",
    )


MODULE_SETUP_FILES = frozenset(
    f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py") if 'scope="module"' in path.read_text()
)
"""Test files with a module-scoped fixture (one quick bench, one web UI and browser, one network of namespaces...):
all their tests go to one xdist worker, which sets it up once."""


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs at once: a test, or the whole of a file in MODULE_SETUP_FILES."""
    path = nodeid.split("::", 1)[0]
    return path if path in MODULE_SETUP_FILES else nodeid


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`make test`): the longest work units first (`work_unit`, by their tests' recorded durations),
    each unit's tests together in their own order. Each worker takes the next unit when it is done with its own
    (`pytest_xdist_make_scheduler`), so the long ones start at once, spread over the workers, and the many short
    ones fill the gaps at the end (a long test left for last would run alone while the other workers idle). In one
    process (e.g. `make mutants`' `pytest -x`): the fast tests first, then the slow ones, so a failure is reported
    quickly."""
    if not hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
        return
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    def expected_s(item: pytest.Item) -> float:
        default = UNKNOWN_SLOW_S if item.get_closest_marker("slow") is not None else UNKNOWN_FAST_S
        return known.get(item.nodeid, default)

    per_unit: dict[str, float] = {}
    for item in items:
        unit = work_unit(item.nodeid)
        per_unit[unit] = per_unit.get(unit, 0.0) + expected_s(item)
    order = {item.nodeid: position for position, item in enumerate(items)}
    items.sort(key=lambda item: (-per_unit[work_unit(item.nodeid)], work_unit(item.nodeid), order[item.nodeid]))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's default (`--dist load`) hands each worker a fixed share of the list up front, which splits files and
    leaves the last long tests queued behind others: instead, one `work_unit` at a time, in the order above."""
    if config.getvalue("dist") != "load":
        return None  # a --dist asked for on the command line
    from xdist.scheduler import LoadScopeScheduling

    class OneUnitAtATime(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the longest-first order, not the units' sizes in tests
    return OneUnitAtATime(config, log)


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's phases, added up (on the xdist controller, from every worker's reports)."""
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        known.update({nodeid: round(seconds, 2) for nodeid, seconds in _measured.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker: keep gevent's hub awake. The worker waits for its next test on an event that
    execnet's reader thread (started before `import locust` patched threading) sets; with no timer of its own,
    the hub would take that wait for a deadlock (LoopExit)."""
    if hasattr(config, "workerinput"):
        import gevent

        def keep_awake() -> None:
            while True:
                gevent.sleep(0.05)

        gevent.spawn(keep_awake)
