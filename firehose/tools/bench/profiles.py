"""Where our client's CPU goes per row: each strategy's whole path in this process, and its steps timed alone.

cProfile cannot split these paths: it keeps one call stack per thread, and greenlet switches make a suspended
COPY look as if it ran what the other greenlets did. So each path runs whole (engineers as greenlets, timed with
the process's CPU clock: waiting for a server costs none), then each step runs on its own over the same rows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import psycopg
import redis
from locust.event import Events
from locust.stats import RequestStats

from firehose.tools.bench.figures import BENCH_SEED
from firehose.tools.database import empty_tables
from firehose.tools.server_cost import ServerCost, process_cpu_s
from services.redis_server import LocalRedis
from telemetry.generator import EngineerTelemetry, EventIds, TraceRows, engineer_seed
from telemetry.layout import TABLES, copy_statement, parse_row
from telemetry.pools import Pools
from writers.base import Writer
from writers.copy import BATCH_SIZE as BATCH
from writers.copy import CopyWriter, copy_rows
from writers.stream import BATCH_SIZE as STREAM_BATCH
from writers.stream import ROWS_PER_ENTRY, StreamWriter
from writers.stream_consumer import by_table, next_batch, settle
from writers.valve import BATCH_SIZE as VALVE_BATCH
from writers.valve import ValveWriter

STREAM_PROFILE_TRACES = 20
"""Traces per engineer in the stream's profile (50 engineers: ~19,000 rows): the SQL profiles' 4 would fill
fewer than one consumer batch of 5,000 rows, and a profile of one batch would not show the path's steady state."""
COMPOSE = "compose rows (telemetry.generator)"


def engineer_traces(pools: Pools, ordinal: int, ids: EventIds, traces: int | None = None) -> EngineerTelemetry:
    """Engineer `ordinal`'s telemetry in a bench (the engineer's default number of traces unless given)."""
    seed = engineer_seed(BENCH_SEED, 0, ordinal)
    return EngineerTelemetry(pools, seed) if traces is None else EngineerTelemetry(pools, seed, traces=traces)


def run_engineers(writer: Writer, pools: Pools, engineers: int, ids: EventIds, traces: int | None = None) -> None:
    """Engineers 1 to `engineers` as greenlets of this process, each handing its traces to `writer` and yielding
    after each, as a Locust engineer does; returns once all have handed over everything."""

    def engineer(ordinal: int) -> None:
        for rows in engineer_traces(pools, ordinal, ids, traces).traces(ids):
            writer.write(rows)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(engineer, ordinal) for ordinal in range(1, engineers + 1)])


def compose_all(pools: Pools, engineers: int, ids: EventIds, traces: int | None = None) -> list[list[TraceRows]]:
    """Every engineer's traces, composed (the compose step of a profile)."""
    return [list(engineer_traces(pools, ordinal, ids, traces).traces(ids)) for ordinal in range(1, engineers + 1)]


def profile_client(dsn: str, pools: Pools, engineers: int) -> dict:
    """CPU per row of the COPY path in this process (no Locust), and its steps measured one at a time."""
    whole = _copy_path(dsn, pools, engineers)
    start = time.process_time()
    lines: dict[str, list[str]] = {table: [] for table in TABLES}
    for trace in (trace for traces in compose_all(pools, engineers, EventIds(3)) for trace in traces):
        for table in TABLES:
            lines[table] += getattr(trace, table)
    compose = time.process_time() - start
    start = time.process_time()
    batches = [
        (table, "".join(rows[at : at + BATCH]).encode())
        for table, rows in lines.items()
        for at in range(0, len(rows), BATCH)
    ]
    encode = time.process_time() - start
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        start = time.process_time()
        for table, data in batches:
            copy_rows(conn, copy_statement(table), data)
        send = time.process_time() - start
    rows = sum(map(len, lines.values()))
    steps = {COMPOSE: compose, "join + encode batches": encode, "COPY through psycopg and libpq": send}
    steps["everything else (buffering, gevent, pool, Locust-free bookkeeping)"] = max(
        whole["cpu_s"] / whole["rows"] * rows - sum(steps.values()), 0.0
    )
    return {
        "rows": whole["rows"],
        "rows_per_s": whole["rows"] / whole["wall_s"],
        "client_cpu_us_per_row": whole["cpu_s"] / whole["rows"] * 1e6,
        "client_cpu_share_of_a_core": whole["cpu_s"] / whole["wall_s"],
        "us_per_row": {label: seconds / rows * 1e6 for label, seconds in steps.items()},
    }


def _copy_path(dsn: str, pools: Pools, engineers: int) -> dict:
    """Engineers' rows through a CopyWriter into emptied tables, as greenlets of this process."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    writer = CopyWriter(dsn, Events())
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    run_engineers(writer, pools, engineers, EventIds(2))
    writer.close()
    return {
        "rows": sum(writer.tally.acknowledged.values()),
        "cpu_s": time.process_time() - start_cpu,
        "wall_s": time.perf_counter() - start_wall,
    }


def profile_writer(
    dsn: str, make: Callable[[Events], Writer], pools: Pools, engineers: int, traces: int, *, values: bool
) -> dict:
    """CPU per row of one writer's whole path in this process (engineers as greenlets, Locust's stats
    listening to the request events), and its steps timed on their own: composing the rows, turning them
    into values (`values`) or joining and encoding batches, and firing the request events into the stats."""
    empty_tables(dsn)
    events, stats = listened_events()
    writer = make(events)  # connecting is start-up, not the path: outside the timed part
    ids = EventIds(4)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    run_engineers(writer, pools, engineers, ids, traces)
    writer.flush()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    writer.close()
    rows = sum(writer.tally.acknowledged.values())
    requests = stats.total.num_requests
    # The steps, each on its own: the same rows composed again, converted, and as many request events fired.
    start = time.process_time()
    lines = [line for traces in compose_all(pools, engineers, ids, traces)
             for trace in traces for _, table_lines in trace.by_table() for line in table_lines]  # fmt: skip
    compose = time.process_time() - start
    start = time.process_time()
    if values:
        for line in lines:
            parse_row(line)
    else:
        for at in range(0, len(lines), BATCH):
            "".join(lines[at : at + BATCH]).encode()
    convert = time.process_time() - start
    start = time.process_time()
    for _ in range(requests):
        events.request.fire(request_type="INSERT", name="spans", response_time=1.0, response_length=3000,
                            exception=None, context={})  # fmt: skip
    fire = time.process_time() - start
    steps = {
        COMPOSE: compose,
        "COPY text to values (parse_row)" if values else "join + encode batches": convert,
        f"Locust request events ({requests / max(rows, 1):.3f} per row)": fire,
    }
    return per_row_profile(rows, wall, cpu, steps, "driver, pool, delivery loop, gevent (the rest)")


def profile_stream(dsn: str, redis_server: LocalRedis, pools: Pools, engineers: int, traces: int) -> dict:
    """CPU per row of the stream path in this process (engineers XADDing and the writer's consumers COPYing, as
    greenlets, Locust's stats listening), on the run's own durable Redis; Redis's CPU (from /proc) and
    PostgreSQL's per row beside it. Then each step on its own, through the consumer's own functions
    (writers.stream_consumer): the same rows composed, XADDed by a producer-only writer to a stream of their own,
    read back in the consumers' batches, joined per table, COPYed (into emptied tables), and settled."""
    empty_tables(dsn)
    events, _ = listened_events()
    cost = ServerCost(dsn)
    writer = StreamWriter(dsn, events, redis_url=redis_server.url, run_id=1)
    ids = EventIds(5)
    server_before, redis_before = cost.sample(), process_cpu_s(redis_server.pid)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    run_engineers(writer, pools, engineers, ids, traces)
    writer.flush()  # every entry COPYed and acknowledged
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    redis_cpu = process_cpu_s(redis_server.pid) - redis_before
    writer.close()
    rows = sum(writer.tally.acknowledged.values())
    server = cost.per_row(server_before, cost.sample(server_before), rows)

    # The steps, each on its own.
    start = time.process_time()
    by_engineer = compose_all(pools, engineers, ids, traces)
    compose = time.process_time() - start
    producer = StreamWriter(dsn, Events(), redis_url=redis_server.url, run_id=2, consumers=0)

    def produce_traces(traces: list[TraceRows]) -> None:
        for trace in traces:
            producer.write(trace)

    start = time.process_time()  # as many engineers at once as in the whole path: the senders pipeline their XADDs
    gevent.joinall([gevent.spawn(produce_traces, traces) for traces in by_engineer])
    produce = time.process_time() - start
    client = redis.Redis.from_url(redis_server.url)
    batches, per_read, consumer = [], max(1, STREAM_BATCH // ROWS_PER_ENTRY), "profile"
    start = time.process_time()
    while True:
        _, entries, _ = next_batch(
            client, producer.keys, consumer, count=per_read, claim_idle_ms=producer.claim_idle_ms, block_ms=None
        )
        if not entries:
            break
        batches.append(entries)
    read = time.process_time() - start
    start = time.process_time()
    copies = [table_batch for entries in batches for table_batch in by_table(entries)]
    join = time.process_time() - start
    empty_tables(dsn)
    with psycopg.connect(dsn) as conn:
        start = time.process_time()
        for table_batch in copies:
            with conn.transaction():
                copy_rows(conn, copy_statement(table_batch.table), table_batch.data)
        copy = time.process_time() - start
    start = time.process_time()
    for entries in batches:
        settle(client, producer.keys, entries)
    settled = time.process_time() - start
    producer.close()
    client.delete(writer.stream, producer.stream)
    client.close()
    steps = {
        COMPOSE: compose,
        "producer: XADDs (pipelined), payloads, round trips, request events": produce,
        "consumer: XAUTOCLAIM + XREADGROUP, replies parsed": read,
        "consumer: join COPY text per table": join,
        "consumer: COPY through psycopg and libpq": copy,
        "consumer: XACK + XDEL (one MULTI)": settled,
    }
    return per_row_profile(rows, wall, cpu, steps, "gevent, pools, delivery loop, tallies (the rest)") | {
        "redis_cpu_us_per_row": redis_cpu / max(rows, 1) * 1e6,
        "server_cpu_us_per_row": server["server_cpu_us_per_row"],
    }


def profile_valve(dsn: str, redis_server: LocalRedis, pools: Pools, engineers: int, traces: int) -> dict:
    """As `profile_stream`, for the valve: the whole path in this process (engineers spooling, the writer's
    consumers COPYing from the spool) with Redis's and PostgreSQL's CPU per row, then each step on its own: the
    same rows spooled by a spool-only writer (chunk files written and fsynced in the thread pool, one XADD each),
    the pointers read back in the consumers' batches, their rows read from the spool, joined per table, COPYed,
    settled and their chunks deleted. The wall time a chunk waits for its fsync is beside the CPU (it is latency
    an engineer waits, not CPU)."""
    empty_tables(dsn)
    events, stats = listened_events()
    cost = ServerCost(dsn)
    with tempfile.TemporaryDirectory(prefix="firehose-valve-profile-") as scratch:
        writer = ValveWriter(
            dsn, events, redis_url=redis_server.url, run_id=1, spool=Path(scratch) / "whole", max_spool=2 * 1024**3
        )
        ids = EventIds(6)
        server_before, redis_before = cost.sample(), process_cpu_s(redis_server.pid)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        run_engineers(writer, pools, engineers, ids, traces)
        writer.flush()
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
        redis_cpu = process_cpu_s(redis_server.pid) - redis_before
        writer.close()
        rows = sum(writer.tally.acknowledged.values())
        server = cost.per_row(server_before, cost.sample(server_before), rows)
        spooled = stats.get(str(writer.spool), "SPOOL")

        start = time.process_time()
        by_engineer = compose_all(pools, engineers, ids, traces)
        compose = time.process_time() - start
        producer = ValveWriter(
            dsn, Events(), redis_url=redis_server.url, run_id=2, spool=Path(scratch) / "steps",
            max_spool=2 * 1024**3, consumers=0,
        )  # fmt: skip

        def produce_traces(traces: list[TraceRows]) -> None:
            for trace in traces:
                producer.write(trace)

        start = time.process_time()
        gevent.joinall([gevent.spawn(produce_traces, traces) for traces in by_engineer])
        produce = time.process_time() - start
        client = redis.Redis.from_url(redis_server.url)
        batches, per_read = [], max(1, VALVE_BATCH // ValveWriter.rows_per_entry)
        start = time.process_time()
        while True:
            _, entries, _ = next_batch(
                client, producer.keys, "profile", count=per_read, claim_idle_ms=producer.claim_idle_ms, block_ms=None
            )
            if not entries:
                break
            batches.append(entries)
        read = time.process_time() - start
        start = time.process_time()
        batches = [producer.read_entries(entries) for entries in batches]
        read_spool = time.process_time() - start
        start = time.process_time()
        copies = [table_batch for entries in batches for table_batch in by_table(entries)]
        join = time.process_time() - start
        empty_tables(dsn)
        with psycopg.connect(dsn) as conn:
            start = time.process_time()
            for table_batch in copies:
                with conn.transaction():
                    copy_rows(conn, copy_statement(table_batch.table), table_batch.data)
            copy = time.process_time() - start
        start = time.process_time()
        for entries in batches:
            settle(client, producer.keys, entries)
            producer.entries_settled(entries)
        settled = time.process_time() - start
        producer.close()
        client.delete(writer.stream, producer.stream)
        client.close()
    steps = {
        COMPOSE: compose,
        "spooler: chunk joined, written + fsynced (thread pool), pointer XADDed, request events": produce,
        "consumer: XAUTOCLAIM + XREADGROUP of pointers": read,
        "consumer: rows read from the spool files": read_spool,
        "consumer: join COPY text per table": join,
        "consumer: COPY through psycopg and libpq": copy,
        "consumer: XACK + XDEL (one MULTI), chunk files deleted": settled,
    }
    return per_row_profile(rows, wall, cpu, steps, "gevent, pools, delivery loop, tallies (the rest)") | {
        "redis_cpu_us_per_row": redis_cpu / max(rows, 1) * 1e6,
        "server_cpu_us_per_row": server["server_cpu_us_per_row"],
        "spool_chunks": spooled.num_requests,
        "spool_ms_per_chunk": spooled.avg_response_time,
        "rows_per_chunk": rows / max(spooled.num_requests, 1),
    }


def per_row_profile(rows: int, wall: float, cpu: float, steps: dict[str, float], rest: str) -> dict:
    """Client CPU per row, and per step: each step timed on its own, `rest` what the whole path spent beyond them."""
    steps = steps | {rest: max(cpu - sum(steps.values()), 0.0)}
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "client_cpu_us_per_row": cpu / max(rows, 1) * 1e6,
        "client_cpu_share_of_a_core": cpu / wall,
        "us_per_row": {label: seconds / max(rows, 1) * 1e6 for label, seconds in steps.items()},
    }


def listened_events() -> tuple[Events, RequestStats]:
    """Events whose request events Locust's stats log, as in a run."""
    events = Events()
    stats = RequestStats()
    events.request.add_listener(
        lambda request_type, name, response_time, response_length, **_: stats.log_request(
            request_type, name, response_time, response_length
        )
    )
    return events, stats
