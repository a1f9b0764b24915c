"""Faults of the stream path, with a real Redis, PostgreSQL and Locust processes.

- Redis restarted mid-run, by SIGTERM and by kill -9, on the same port and append-only file, while the stream
  holds entries not yet stored: the run reconciles (acknowledged == in database == generated, nothing lost,
  nothing doubled). Without persistence the entries held would be lost, and the test would fail.
- A worker process killed with kill -9 while its consumers hold pending entries: the other worker's consumers
  claim them (XAUTOCLAIM after --stream-claim-idle) and every event that reached the stream is stored once.

Each waits on observed state (rows arriving, a stream's length and pending entries, a process gone).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import signal
import socket
import subprocess
import tempfile
import time

import gevent
import psycopg
import pytest
import redis

from locust.event import Events

from tests.conftest import load_summary
from firehose.tools.headless import REPO, locust_command, run_bounded
from services.ports import free_port
from services.redis_server import LocalRedis
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import TABLES
from writers.delivery import RetryPolicy
from writers.spool import chunk_files
from writers.stream import StreamWriter

pytestmark = pytest.mark.slow

WAIT_S = 90
"""Bound on waiting for an observed state."""
RUN_TIMEOUT_S = 240
"""Bound on a Locust run of these tests."""
CLAIM_IDLE_S = 5
"""--stream-claim-idle of the kill test: long enough to read a dead consumer's entries before they are claimed."""


@pytest.fixture
def local_redis():
    """A redis-server of the test's own, persisted as the run's own is (append-only file, fsync per write)."""
    server = LocalRedis()
    server.start()
    yield server
    server.stop()


def _wait(condition, what: str, alive=lambda: True) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not observed within {WAIT_S} s: {what}"
        assert alive(), f"the run ended before {what}"
        gevent.sleep(0.01)


def _run_key(client: redis.Redis) -> str:
    """The run's stream (the test's Redis holds one run's)."""
    _wait(lambda: client.keys("firehose:*:events"), "the run's stream")
    return client.keys("firehose:*:events")[0].decode()


@pytest.mark.parametrize(
    ("strategy", "kill"),
    [("StreamEngineer", False), ("StreamEngineer", True), ("ValveEngineer", True)],
    ids=["sigterm", "kill-9", "valve-kill-9"],
)
def test_a_redis_restart_mid_run_loses_nothing(dsn, tmp_path, local_redis, strategy, kill):
    """The valve's pointers ride the restart as the stream's entries do; its spool is empty after the run."""
    summary_path, spool = tmp_path / "summary.json", tmp_path / "spool"
    options = {
        "StreamEngineer": ("--stream-max-len", "500", "--stream-claim-idle", "1"),
        "ValveEngineer": ("--valve-spool", str(spool), "--valve-claim-idle", "1"),
    }
    command = locust_command(
        strategy, "-u", "10", "-r", "10", "-t", "8s", "--continuous", *options[strategy],
        "--pg-dsn", dsn, "--redis-url", local_redis.url, "--summary-json", str(summary_path),
    )  # fmt: skip
    client = redis.Redis.from_url(local_redis.url)
    with tempfile.TemporaryFile("w+") as output:
        run = gevent.spawn(run_bounded, command, RUN_TIMEOUT_S, output, output)
        stream = _run_key(client)
        group = stream.replace(":events", ":copy")

        def holding() -> bool:  # entries waiting and entries read, not yet stored and acknowledged
            with client.pipeline(transaction=True) as pipe:
                length, pending = pipe.xlen(stream).xpending(stream, group).execute()
            return length > pending["pending"] > 0

        _wait(holding, "a stream holding entries read and unread", alive=lambda: not run.dead)
        local_redis.restart(kill=kill)
        client.close()
        returncode, timed_out = run.get()
        output.seek(0)
        log = output.read()
    assert not timed_out and returncode == 0 and summary_path.exists(), log[-8000:]
    events = load_summary(summary_path)["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0, events
    assert events["acknowledged"] == events["in_database"] == events["generated"] > 0, events
    assert not chunk_files(spool), "a chunk file outlived its pointer"
    if strategy == "ValveEngineer":  # no pointer left unstored: nothing "spooled, not written"
        assert load_summary(summary_path)["valve"] == []


def _worker(port: int, dsn: str, redis_url: str, output) -> subprocess.Popen:
    command = [*locust_command("--worker", "--master-port", str(port), "--pg-dsn", dsn, "--redis-url", redis_url)]
    command.remove("--headless")  # a worker takes its run from the master
    return subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _event_ids(fields: dict[bytes, bytes]) -> dict[str, list[int]]:
    """The event ids of an entry's rows, per table (each row's first COPY column)."""
    return {
        table: [int(line.split(b"\t", 1)[0]) for line in fields[table.encode()].splitlines()]
        for table in TABLES
        if fields.get(table.encode())
    }


def test_a_killed_workers_pending_entries_are_claimed_and_stored_once(dsn, local_redis, tmp_path):
    """Master and two workers as processes; kill -9 of the worker whose consumers hold entries mid-batch."""
    port = free_port()
    client = redis.Redis.from_url(local_redis.url)
    master_command = locust_command(
        "StreamEngineer", "--master", "--expect-workers", "2", "--master-bind-port", str(port), "-u", "10", "-r", "10",
        "-t", "300s", "--traces-per-engineer", "200", "--stream-claim-idle", str(CLAIM_IDLE_S),
        "--pg-dsn", dsn, "--redis-url", local_redis.url,
    )  # fmt: skip
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryFile("w+") as output:
        try:
            master = subprocess.Popen(
                master_command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            processes.append(master)
            workers = [_worker(port, dsn, local_redis.url, output) for _ in range(2)]
            processes += workers
            stream = _run_key(client)
            group = stream.replace(":events", ":copy")
            prefixes = {f"{socket.gethostname()}:{worker.pid}:": worker for worker in workers}

            def holder() -> subprocess.Popen | None:
                """A worker one of whose consumers holds entries it has read and not yet acknowledged."""
                for consumer in client.xinfo_consumers(stream, group):
                    if consumer["pending"]:
                        for prefix, worker in prefixes.items():
                            if consumer["name"].decode().startswith(prefix):
                                return worker
                return None

            _wait(lambda: holder() is not None, "a consumer holding entries", alive=lambda: master.poll() is None)
            victim = holder()
            victim.kill()
            victim.wait()
            prefix = next(prefix for prefix, worker in prefixes.items() if worker is victim)
            held = [
                entry["message_id"]
                for entry in client.xpending_range(stream, group, "-", "+", 100_000)
                if entry["consumer"].decode().startswith(prefix)
            ]
            assert held, "the killed worker's consumers held no entry (acknowledged just before the kill?)"
            read = [client.xrange(stream, entry_id, entry_id) for entry_id in held]
            expected = {table: [] for table in TABLES}
            for [(_, fields)] in read:
                for table, ids in _event_ids(fields).items():
                    expected[table] += ids

            def settled() -> bool:  # claimed by the other worker's consumers, stored, acknowledged and deleted
                pending = {entry["message_id"] for entry in client.xpending_range(stream, group, "-", "+", 100_000)}
                return not pending & set(held) and not any(client.xrange(stream, i, i) for i in held)

            _wait(settled, "the killed worker's entries claimed and settled", alive=lambda: master.poll() is None)

            def quiet() -> tuple[int, int, int]:
                with client.pipeline(transaction=True) as pipe:
                    length, pending, info = pipe.xlen(stream).xpending(stream, group).xinfo_stream(stream).execute()
                return length, pending["pending"], info["entries-added"]

            # Every entry that reached the stream is stored: wait until none waits or is pending, and no more
            # arrive while the database is counted.
            run_id = int(stream.split(":")[1])
            while True:
                _wait(lambda: quiet()[:2] == (0, 0), "the stream drained", alive=lambda: master.poll() is None)
                before = quiet()
                traces, found = _stored(dsn, run_id, expected)
                if quiet() == before:
                    break
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
    client.close()
    assert traces == before[2], f"{before[2]} entries added, {traces} traces stored"
    for table, ids in expected.items():
        assert found[table] == len(ids) == len(set(ids)), (table, found[table], len(ids))


def _stored(dsn: str, run_id: int, expected: dict[str, list[int]]) -> tuple[int, dict[str, int]]:
    """The run's traces in the database (one stream entry each), and how many of `expected`'s event ids it holds."""
    with psycopg.connect(dsn) as conn:
        traces = conn.execute(
            "SELECT count(DISTINCT t.trace_id) FROM spans AS t JOIN firehose_writer_keys AS k"
            " ON t.event_id >= k.writer_key << 32 AND t.event_id < (k.writer_key + 1) << 32 WHERE k.run_id = %s",
            [run_id],
        ).fetchone()[0]
        found = {
            table: conn.execute(f"SELECT count(*) FROM {table} WHERE event_id = ANY(%s)", [ids]).fetchone()[0]
            for table, ids in expected.items()
        }
    return traces, found


def test_the_local_redis_restarts_on_its_port_and_keeps_its_data(local_redis):
    """LocalRedis.restart, both ways: the same URL answers again, with what was written before."""
    client = redis.Redis.from_url(local_redis.url)
    client.xadd("s", {"f": "v"})
    for kill in (False, True):
        local_redis.restart(kill=kill)
        assert client.xlen("s") == 1
    client.close()


def test_redis_down_past_the_deadline_fails_the_writes_with_one_error(dsn, local_redis, pools):
    """Redis stopped for good: a write gives up after the deadline, its rows failed; close does not wait."""
    fatal = []
    writer = StreamWriter(
        dsn, Events(), redis_url=local_redis.url, run_id=1, consumers=1, on_fatal=fatal.append,
        retry_policy=RetryPolicy(deadline_s=1),
    )  # fmt: skip
    local_redis.stop()
    traces = EngineerTelemetry(pools, 1, traces=2).traces(EventIds(31))
    for rows in traces:
        writer.write(rows)
    writer.close()
    assert [str(error) for error in fatal] == [writer.fatal.args[0]]
    assert str(writer.fatal).startswith("Redis has been unreachable for 1 s (")
    assert writer.tally.failed == writer.tally.received and sum(writer.tally.received.values()) > 0
