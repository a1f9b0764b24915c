"""The Redis Streams writer against a real Redis and PostgreSQL, and in real headless Locust runs.

Every row handed over lands exactly once and is acknowledged once, entries are acknowledged and deleted,
a dead consumer's entries are claimed by another, and the stream never holds more than its bound.
"""

import gevent
import psycopg
import pytest
import redis
from locust.event import Events

from firehose.run.endpoints import RunServices
from services.redis_server import LocalRedis
from telemetry.generator import EngineerTelemetry, EventIds, TraceRows
from telemetry.layout import TABLES, copy_statement
from tests.conftest import load_summary, run_locust
from writers.copy import copy_rows
from writers.stream import StreamWriter

pytestmark = pytest.mark.slow

WAIT_S = 60
"""Upper bound on waiting for a condition, so a broken writer fails the test instead of hanging it."""
RUN_TIME = "25s"
"""Locust runs end when every engineer is done, or at this limit: ample for the ~3,800 rows they write."""


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server of the tests' own on a free loopback port, stopped after the module."""
    server = LocalRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The test server's URL, emptied."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def client(redis_url):
    """A client of the test server, to look at streams and groups the way a second process would."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _requests(events: Events) -> list[dict]:
    requests = []
    events.request.add_listener(lambda **kw: requests.append(kw))
    return requests


def _write(writer, pools, seed, traces, ids, written) -> None:
    """One engineer's telemetry through the writer, its rows appended to `written` per table."""
    for rows in EngineerTelemetry(pools, seed, traces=traces).traces(ids):
        writer.write(rows)
        for table in TABLES:
            written[table] += getattr(rows, table)


def _counts(dsn) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def _wait_for(condition) -> None:
    with gevent.Timeout(WAIT_S):
        while not condition():
            gevent.sleep(0.01)


def test_rows_in_equal_rows_acknowledged(dsn, redis_url, client, pools):
    events = Events()
    requests = _requests(events)
    writer = StreamWriter(dsn, events, redis_url=redis_url, run_id=1, batch_size=500, consumers=2)
    written = {table: [] for table in TABLES}
    ids = EventIds(21)
    for seed in range(3):
        _write(writer, pools, seed, 100, ids, written)
    writer.flush()
    assert writer.tally.acknowledged == writer.tally.received
    writer.close()

    counts = _counts(dsn)
    for table, lines in written.items():
        assert counts[table] == len(lines) == writer.tally.received[table] == writer.tally.acknowledged[table]
        assert writer.tally.acknowledged_bytes[table] == len("".join(lines).encode())
    assert not writer.tally.failed
    # every entry went through the group (none dropped), was acknowledged, and deleted
    (group,) = client.xinfo_groups(writer.stream)
    assert group["entries-read"] == 300 and group["pending"] == 0
    assert client.xlen(writer.stream) == 0
    adds = [r for r in requests if r["request_type"] == "XADD"]
    copies = [r for r in requests if r["request_type"] == "COPY"]
    assert len(adds) == 300 and {r["name"] for r in adds} == {writer.stream}
    assert {r["name"] for r in copies} == set(TABLES)
    assert all(r["exception"] is None for r in requests)
    assert sum(r["response_length"] for r in copies) == sum(len("".join(v).encode()) for v in written.values())


def test_engineers_writing_at_once_share_pipelined_round_trips(dsn, redis_url, client, pools):
    """Traces written at once go to Redis several per round trip (SENDERS, PIPELINE_TRACES), one entry each."""
    events = Events()
    requests = _requests(events)
    writer = StreamWriter(dsn, events, redis_url=redis_url, run_id=6, consumers=1)
    written = {table: [] for table in TABLES}
    ids = EventIds(22)
    gevent.joinall(
        [gevent.spawn(_write, writer, pools, seed, 10, ids, written) for seed in range(20)], raise_error=True
    )
    writer.flush()
    assert writer.tally.acknowledged == writer.tally.received
    writer.close()

    (group,) = client.xinfo_groups(writer.stream)
    assert group["entries-read"] == 200  # one entry per trace
    adds = [r for r in requests if r["request_type"] == "XADD"]
    assert len(adds) < 200 and all(r["exception"] is None for r in adds)
    assert sum(r["response_length"] for r in adds) == sum(len("".join(v).encode()) for v in written.values())
    counts = _counts(dsn)
    assert all(counts[table] == len(lines) for table, lines in written.items())


def test_a_dead_consumers_entries_are_claimed_and_land_once(dsn, redis_url, client, pools):
    producer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=2, consumers=0)
    written = {table: [] for table in TABLES}
    _write(producer, pools, 7, 20, EventIds(22), written)
    # A consumer of another process takes every entry, commits half of the spans, and dies before its XACK.
    [[_, entries]] = client.xreadgroup(producer.group, "dead", {producer.stream: ">"}, count=100)
    assert len(entries) == 20
    with psycopg.connect(dsn) as conn:
        copy_rows(conn, copy_statement("spans"), b"".join(fields[b"spans"] for _, fields in entries[:10]))

    rescuer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=2, consumers=1, claim_idle_s=0.1)
    producer.close()  # returns once its entries, claimed by the rescuer, are committed and acknowledged
    rescuer.close()

    counts = _counts(dsn)
    dead_stored = sum(fields[b"spans"].count(b"\n") for _, fields in entries[:10])
    for table, lines in written.items():
        assert counts[table] == len(lines) == producer.tally.received[table]
        # Acknowledged by the transaction that stored them: the dead consumer's spans died with its tally.
        assert rescuer.tally.acknowledged[table] == len(lines) - (dead_stored if table == "spans" else 0)
    assert not producer.tally.acknowledged and not rescuer.tally.failed
    assert client.xpending(producer.stream, producer.group)["pending"] == 0
    assert client.xlen(producer.stream) == 0


def test_back_pressure_bounds_the_stream(dsn, redis_url, client, pools):
    producer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=3, consumers=0, max_len=8)
    lengths = []
    watching = True

    def watch():
        while watching:
            lengths.append(client.xlen(producer.stream))
            gevent.sleep(0)

    watcher = gevent.spawn(watch)
    written = {table: [] for table in TABLES}
    ids = EventIds(23)
    engineers = [gevent.spawn(_write, producer, pools, seed, 10, ids, written) for seed in range(4)]
    # Nothing consumes yet: the engineers fill the stream to its bound and wait there.
    _wait_for(lambda: client.xlen(producer.stream) == 8)
    gevent.sleep(0.3)  # a few polls of the waiting engineers: still nothing may be added
    assert not any(engineer.ready() for engineer in engineers)
    assert client.xlen(producer.stream) == 8

    consumer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=3, batch_size=40, consumers=1)
    gevent.joinall(engineers, raise_error=True)
    producer.close()
    consumer.close()
    watching = False
    watcher.join()

    assert max(lengths) == 8
    counts = _counts(dsn)
    for table, lines in written.items():
        assert counts[table] == len(lines) == producer.tally.received[table] == consumer.tally.acknowledged[table]


def test_close_waits_for_writes_under_way_and_refuses_later_ones(dsn, redis_url, client, pools):
    """Engineers waiting for room when close() starts still land their traces; a write after that is counted
    as failed, never added to a stream nobody consumes any more."""
    writer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=5, batch_size=40, consumers=1, max_len=2)
    traces = list(EngineerTelemetry(pools, 9, traces=12).traces(EventIds(25)))
    engineers = [gevent.spawn(lambda share: [writer.write(rows) for rows in share], traces[i::4]) for i in range(4)]
    _wait_for(lambda: writer._writes >= 3)  # most engineers are inside write(), waiting for room
    closing = gevent.spawn(writer.close)
    gevent.joinall(engineers, raise_error=True)
    closing.get()
    late = traces[0]
    writer.write(late)  # after close: refused and counted
    tally = writer.tally
    received, acknowledged, failed = (
        sum(counter.values()) for counter in (tally.received, tally.acknowledged, tally.failed)
    )
    # Engineers that went on writing after close() began were refused too (in a run, they stop at run.closing).
    assert received == acknowledged + failed and failed >= len(late) and acknowledged > 0
    assert sum(_counts(dsn).values()) == acknowledged  # whatever was added, landed: nothing left in the stream
    assert client.xlen(writer.stream) == 0


def test_refused_rows_are_set_aside_not_retried_forever(dsn, redis_url, client, pools):
    writer = StreamWriter(dsn, Events(), redis_url=redis_url, run_id=4, consumers=1)
    good = next(EngineerTelemetry(pools, 1, traces=1).traces(EventIds(24)))
    writer.write(TraceRows(spans=["not a span\n"], metrics=good.metrics, logs=good.logs))
    writer.close()  # returns: the refused entry does not stay pending

    assert writer.tally.failed == {"spans": 1}
    assert writer.tally.acknowledged == {"metrics": len(good.metrics), "logs": len(good.logs)}
    assert _counts(dsn) == {"spans": 0, "metrics": len(good.metrics), "logs": len(good.logs)}
    [(_, fields)] = client.xrange(writer.refused_stream)
    assert fields[b"spans"] == b"not a span\n"


def test_the_run_starts_the_redis_a_writer_declares_and_stops_it(postgres):
    """StreamWriter declares Redis; the run's services start a local one (append-only file, fsynced) and stop it."""
    assert StreamWriter.services == ("redis",)
    services = RunServices({"postgres": postgres.dsn})
    url = services.start(StreamWriter.services)["redis"]
    local = redis.Redis.from_url(url)
    assert local.ping()
    assert local.config_get("save") == {"save": ""} and local.config_get("appendonly") == {"appendonly": "yes"}
    assert local.config_get("appendfsync") == {"appendfsync": "always"}
    local.close()
    services.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, retry=None).ping()
    given = RunServices({"postgres": postgres.dsn, "redis": "redis://127.0.0.1:1/0"})
    assert given.start(["redis"])["redis"] == "redis://127.0.0.1:1/0"  # given, not started
    given.stop()


def test_missing_redis_server_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        LocalRedis().start()


def _summary(result, path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return load_summary(path)


def _reconciles(summary: dict, users: int, traces: int) -> None:
    events = summary["events"]
    assert events["generated"] > users * traces * 19 * 0.8
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["failed"] == 0
    assert events["acknowledged"] == events["in_database"] == events["generated"]


def test_headless_stream_run_reconciles(dsn, tmp_path):
    """No --redis-url: the run starts (and stops) a redis-server of its own."""
    path = tmp_path / "summary.json"
    result = run_locust(
        "StreamEngineer", "-u", "10", "-r", "10", "-t", RUN_TIME, "--traces-per-engineer", "20",
        "--pg-dsn", dsn, "--summary-json", str(path),
    )  # fmt: skip
    _reconciles(_summary(result, path), users=10, traces=20)
    assert "XADD" in result.stdout + result.stderr
    assert "reconciliation: lost = 0" in result.stdout


def test_distributed_stream_run_reconciles(dsn, redis_url, client, tmp_path):
    """Two worker processes share one stream: whichever consumes an entry, the summed tallies match."""
    path = tmp_path / "summary.json"
    result = run_locust(
        "StreamEngineer", "--processes", "2", "-u", "10", "-r", "10", "-t", RUN_TIME, "--traces-per-engineer", "20",
        "--pg-dsn", dsn, "--redis-url", redis_url, "--summary-json", str(path),
    )  # fmt: skip
    summary = _summary(result, path)
    _reconciles(summary, users=10, traces=20)
    run_id = summary["run"]["run_id"]
    assert client.xlen(f"firehose:{run_id}:events") == 0
    assert client.xpending(f"firehose:{run_id}:events", f"firehose:{run_id}:copy")["pending"] == 0
