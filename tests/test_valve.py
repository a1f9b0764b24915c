"""The valve writer (rows in a local spool, pointers in Redis) against a real Redis and PostgreSQL.

Every row handed over lands once and is acknowledged once, each chunk file is deleted once its pointer is settled
(a clean run leaves no spool file), a spool no consumer reads is named with its rows ("spooled, not written") and
loaded by `flush_spool` (the `firehose valve flush` command) exactly once, and a full spool makes engineers wait.
Faults with real processes: tests/test_stream_faults.py (Redis kill -9), tests/test_faults.py (PostgreSQL
immediate restart), tests/test_worker_loss.py (a writing process killed -9, its spool flushed).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import socket
from pathlib import Path

import gevent
import psycopg
import pytest
import redis
from locust.event import Events

from firehose.run import summary_text
from services.redis_server import LocalRedis
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import TABLES
from writers import stream_consumer
from writers.spool import chunk_files, spool_bytes, spooled_rows
from tests.conftest import validate_summary
from writers.valve import ValveWriter, flush_spool, left_in_spools

pytestmark = pytest.mark.slow

WAIT_S = 60
"""Upper bound on waiting for a condition, so a broken writer fails the test instead of hanging it."""
MAX_SPOOL = 2 * 1024**3
SUMMARY = Path(__file__).parent / "data" / "summary.json"
"""A real run's summary, given a valve section to render."""


@pytest.fixture(scope="module")
def redis_server():
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
def empty_tables(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    return dsn


def _write(writer: ValveWriter, pools, seeds: range, ids: EventIds) -> int:
    """Some engineers' telemetry through the writer, written at once (greenlets); the rows handed over."""
    rows = []

    def engineer(seed: int) -> None:
        for trace in EngineerTelemetry(pools, seed, traces=20).traces(ids):
            writer.write(trace)
            rows.append(len(trace))

    gevent.joinall([gevent.spawn(engineer, seed) for seed in seeds], raise_error=True)
    return sum(rows)


def _in_database(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)


def test_rows_land_once_and_the_spool_is_empty_after(empty_tables, redis_url, pools, tmp_path):
    dsn, spool = empty_tables, tmp_path / "spool"
    writer = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=1, spool=spool, max_spool=MAX_SPOOL, consumers=2)
    written = _write(writer, pools, range(4), EventIds(31))
    writer.flush()
    assert sum(writer.tally.acknowledged.values()) == sum(writer.tally.received.values()) == written > 0
    writer.close()
    assert _in_database(dsn) == written
    assert not writer.tally.failed
    assert list(spool.iterdir()) == [], "a chunk file outlived its pointer"
    client = redis.Redis.from_url(redis_url)
    (group,) = client.xinfo_groups(writer.stream)
    assert client.xlen(writer.stream) == 0 and group["pending"] == 0
    assert 0 < group["entries-read"] < 80, "one pointer per chunk of several traces, not one per trace"


def test_a_settle_whose_reply_is_lost_still_deletes_its_chunk(empty_tables, redis_url, pools, tmp_path, monkeypatch):
    """Redis killed -9 between writing a consumer's XACK + XDEL to its append-only file and replying: the pointers
    are gone from Redis, so nothing would settle them later; the consumer retries the settle (idempotent) and only
    then deletes the chunks."""
    dsn, spool = empty_tables, tmp_path / "spool"
    lost = []

    def settle_then_lose_the_reply(client, keys, entries, **options):
        answer = real_settle(client, keys, entries, **options)
        if not lost:
            lost.append(entries)
            raise redis.ConnectionError("the reply was lost (Redis killed after its append-only file's fsync)")
        return answer

    real_settle = stream_consumer.settle
    monkeypatch.setattr(stream_consumer, "settle", settle_then_lose_the_reply)
    writer = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=4, spool=spool, max_spool=MAX_SPOOL, consumers=1)
    written = _write(writer, pools, range(2), EventIds(34))
    writer.close()
    assert lost and _in_database(dsn) == written and not writer.tally.failed
    assert list(spool.iterdir()) == [], "a chunk file outlived its pointer"


def test_a_spool_nobody_consumes_is_counted_then_flushed_once(empty_tables, redis_url, pools, tmp_path):
    """A process that only spools (no consumers: as one whose consumers died with it) leaves chunks and pointers;
    `flush_spool` stores each row once, however often it runs, and deletes the chunks."""
    dsn, spool = empty_tables, tmp_path / "spool"
    writer = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=2, spool=spool, max_spool=MAX_SPOOL, consumers=0)
    written = _write(writer, pools, range(2), EventIds(32))
    assert spooled_rows(spool) == (len(chunk_files(spool)), written) and spool_bytes(spool) > 0
    assert writer.gauges()["valve_pointers"] == len(chunk_files(spool))
    where = f"{socket.gethostname()}:{spool.resolve()}"  # what the summary names "spooled, not written"
    left = left_in_spools(redis_url, 2)
    assert left == [{"spool": where, "pointers": len(chunk_files(spool)), "rows": written}]
    figures = validate_summary({**json.loads(SUMMARY.read_text()), "valve": left})  # as the coordinator adds it
    pointers, directory = len(chunk_files(spool)), spool.resolve()
    assert (
        f"spooled, not written: {written:,} rows behind {pointers:,} pointers in spool {directory} "
        f"on {socket.gethostname()} (load them there with `firehose valve flush --spool {directory}`)"
    ) in summary_text.render(figures, ended_at=0.0).splitlines()
    flushed = flush_spool(dsn, spool)
    assert (flushed.rows, flushed.stored, flushed.partial) == (written, written, 0)
    assert _in_database(dsn) == written and not chunk_files(spool)
    # A consumer that meets the pointers of chunks flushed already settles them, storing nothing twice.
    rescuer = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=2, spool=spool, max_spool=MAX_SPOOL)
    rescuer.close()
    assert _in_database(dsn) == written and redis.Redis.from_url(redis_url).xlen(writer.stream) == 0
    assert flush_spool(dsn, spool).chunks == 0 and left_in_spools(redis_url, 2) == []
    writer.close()


def test_a_spool_with_chunks_of_an_earlier_run_is_named_at_start(empty_tables, redis_url, pools, tmp_path, caplog):
    """A run that crashed left chunks: the next run on the same spool does not read them (its pointers are its own)
    but says so, with the command that loads them, since they count against --valve-max-spool."""
    dsn, spool = empty_tables, tmp_path / "spool"
    crashed = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=4, spool=spool, max_spool=MAX_SPOOL, consumers=0)
    _write(crashed, pools, range(1), EventIds(34))
    with caplog.at_level("WARNING", logger="writers.valve"):
        ValveWriter(dsn, Events(), redis_url=redis_url, run_id=40, spool=spool, max_spool=MAX_SPOOL).close()
    [warning] = [record.getMessage() for record in caplog.records if "earlier runs" in record.getMessage()]
    assert f"{spool.resolve()} holds {len(chunk_files(spool))} chunks of earlier runs" in warning, warning
    assert f"`firehose valve flush --spool {spool.resolve()}`" in warning
    flush_spool(dsn, spool)
    # The crashed run's pointers settle (their chunks flushed) before it closes, else its close waits for a consumer.
    ValveWriter(dsn, Events(), redis_url=redis_url, run_id=4, spool=spool, max_spool=MAX_SPOOL).close()
    crashed.close()


def test_a_full_spool_makes_engineers_wait(empty_tables, redis_url, pools, tmp_path):
    """With no consumer and a bound of one trace's bytes, the second write waits until the spool has room."""
    dsn, spool = empty_tables, tmp_path / "spool"
    writer = ValveWriter(dsn, Events(), redis_url=redis_url, run_id=3, spool=spool, max_spool=1, consumers=0)
    first, second = list(EngineerTelemetry(pools, 1, traces=2).traces(EventIds(33)))
    writer.write(first)
    waiting = gevent.spawn(writer.write, second)
    with gevent.Timeout(WAIT_S):
        while not writer._polling.locked():  # observed: the engineer polls the spool for room
            gevent.sleep(0.01)
    assert not waiting.dead and len(chunk_files(spool)) == 1
    flush_spool(dsn, spool)  # room again: the waiting engineer's trace is spooled
    waiting.get(timeout=WAIT_S)
    assert len(chunk_files(spool)) == 1
