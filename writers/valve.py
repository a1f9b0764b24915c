"""The valve strategy: rows in a local spool, only pointers in Redis, COPY straight from the spool to PostgreSQL.

Redis as a valve, not a data store: it "stores pointers to incoming objects, keeps track of what's arrived and
what's been flushed". It is `writers.stream`'s design with the payload moved out of Redis:

- Producing: an engineer's `write` queues its trace; one of the process's spooler greenlets takes every trace
  queued (up to `CHUNK_TRACES`), writes them as one chunk file to the spool (`writers.spool`: written, fsynced,
  renamed, directory fsynced, in gevent's thread pool), then XADDs one pointer (the file, each table's offset,
  length and row count, the oldest hand-over time). `write` returns once both are done: a trace returned to its
  engineer is on disk and named in Redis. A process killed -9 loses nothing it returned: its chunks stay in the
  spool, their pointers in Redis, and consumers on the same machine claim them (`--valve-claim-idle`).
- One stream and consumer group per spool (the machine's name and the spool's real path, hashed into the key), so
  that no consumer ever takes a pointer to a file it cannot read: only processes writing to that spool consume it.
- Consuming: `writers.stream_consumer`'s consumers unchanged (XAUTOCLAIM, XREADGROUP, the de-duplicating COPY of
  claimed pointers, XACK + XDEL in one MULTI); `read_entries` reads the pointed-to rows from the spool, and once
  a pointer is settled its chunk file is deleted. A clean run leaves no file behind.
- Back-pressure: while the spool holds `--valve-max-spool` bytes, engineers wait (one polls the directory).
- Redis restarts: as the stream's (append-only file fsynced per write); pointers are ~200 bytes, not ~60 KB.
- A chunk left behind (a process killed between its fsync and its XADD, or a run whose database stayed gone) is
  loaded by `firehose valve flush --spool DIR` through the de-duplicating COPY, which then deletes it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import gevent
import psycopg
import redis
from gevent.event import AsyncResult
from locust.event import Events

from telemetry.generator import TraceRows
from telemetry.layout import TABLES
from writers.base import OnFatal, WriterContext
from writers.copy import copy_deduplicated
from writers.delivery import RetryPolicy
from writers.spool import (
    PARTIAL_SUFFIX,
    Section,
    chunk_files,
    chunk_prefix,
    chunks_of_other_runs,
    parse_size,
    partial_files,
    read_chunk,
    read_sections,
    spool_bytes,
    spooled_rows,
    write_chunk,
)
from writers.stream import CLAIM_IDLE_S, ROWS_PER_ENTRY, RedisUnreachable, StreamWriter
from writers.stream_consumer import FIELDS, HANDED_AT, Entry, StreamKeys

logger = logging.getLogger(__name__)

DEFAULT_SPOOL = Path("/var/tmp/firehose-valve")
"""/var/tmp survives a reboot (unlike /tmp): a spool is kept for `firehose valve flush` after a crash."""
BATCH_SIZE = 5_000
"""Rows a consumer COPYs per batch at most (the seed's COPY batch), over one COPY per table."""
CONSUMERS = 4
"""Consumers per writing process, each with a PostgreSQL connection: as many as the stream's (they idle the same
way while they read and settle a batch)."""
SPOOLERS = 4
"""Greenlets per process writing chunks: while one waits for its fsync (~8 ms for 1 MB here) others write."""
CHUNK_TRACES = 25
"""Traces a spooler takes into one chunk at most (~475 rows, ~1.4 MB): bounds a consumer's read."""
TYPICAL_CHUNK_TRACES = 8
"""Traces in a chunk, for turning --valve-batch-size into XREADGROUP's COUNT (pointers): 5,000 rows make 32
pointers. Chunks grow with load (the bench's 50-engineer profile measured ~22 traces, 428 rows, a chunk): a read
then takes up to ~13,000 rows; a lightly loaded run's one-trace chunks make reads of ~600 rows. Not tuned yet."""
MAX_SPOOL = "2GB"
"""Spool bytes before engineers wait: ~30 s of this machine's COPY rate, ~700k rows."""
TRACE_BYTES = 60_000
"""A trace's COPY text, about: counts traces being spooled against --valve-max-spool."""


class ValveWriter(StreamWriter):
    """Spools each trace's rows to a local file and XADDs a pointer; the process's consumers COPY from the spool."""

    senders = SPOOLERS
    pipeline_traces = CHUNK_TRACES
    rows_per_entry = ROWS_PER_ENTRY * TYPICAL_CHUNK_TRACES
    default_pool_size = CONSUMERS

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        redis_url: str,
        run_id: int,
        spool: Path = DEFAULT_SPOOL,
        max_spool: int,
        batch_size: int = BATCH_SIZE,
        consumers: int = CONSUMERS,
        claim_idle_s: float = CLAIM_IDLE_S,
        on_fatal: OnFatal | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        self.spool = spool.resolve()
        self._prefix = chunk_prefix(run_id, socket.gethostname(), os.getpid())
        self._sequence = count()
        super().__init__(
            conninfo, events, redis_url=redis_url, run_id=run_id, batch_size=batch_size, consumers=consumers,
            max_len=max_spool, claim_idle_s=claim_idle_s, on_fatal=on_fatal, retry_policy=retry_policy,
        )  # fmt: skip
        self._length = spool_bytes(self.spool)
        if earlier := chunks_of_other_runs(self.spool, run_id):
            logger.warning(
                "valve: %s holds %d chunks of earlier runs, whose pointers this run does not read: they count "
                "against --valve-max-spool; load them with `firehose valve flush --spool %s`",
                self.spool, len(earlier), self.spool,
            )  # fmt: skip
        spool_id = self.stream.split(":")[3]
        where = f"{socket.gethostname()}:{self.spool}"  # for the summary's "spooled, not written" (`left_in_spools`)
        self.with_redis(lambda: self.redis.hset(spools_key(run_id), spool_id, where))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Valve strategy (pointers in Redis, rows in a local spool)")
        group.add_argument(
            "--valve-spool",
            default=str(DEFAULT_SPOOL),
            metavar="DIR",
            help="Directory of the spool: each writing process's chunk files (one stream of pointers per machine "
            "and directory). What a crash leaves there: `firehose valve flush --spool DIR`.",
        )
        group.add_argument(
            "--valve-max-spool",
            default=MAX_SPOOL,
            metavar="SIZE",
            help="Bytes of chunks the spool holds before engineers wait (e.g. 500MB, 2GB).",
        )
        group.add_argument(
            "--valve-batch-size", type=int, default=BATCH_SIZE, help="Rows a consumer COPYs per batch, about."
        )
        group.add_argument(
            "--valve-consumers",
            type=int,
            default=CONSUMERS,
            help="Consumers (each with a PostgreSQL connection) per writing process; 0: the process only spools.",
        )
        group.add_argument(
            "--valve-claim-idle",
            type=float,
            default=CLAIM_IDLE_S,
            metavar="SECONDS",
            help="A pointer pending this long is taken from its consumer (dead) by another consumer of the same "
            "spool, and stored through the de-duplicating path.",
        )

    @classmethod
    def pool_option(cls) -> str | None:
        return "valve_consumers"

    @classmethod
    def from_context(cls, context: WriterContext) -> ValveWriter:
        options = context.options
        return cls(
            context.postgres,
            context.events,
            redis_url=context.addresses["redis"],
            run_id=context.run_id,
            spool=Path(options.valve_spool),
            max_spool=parse_size(options.valve_max_spool),
            batch_size=options.valve_batch_size,
            consumers=options.valve_consumers,
            claim_idle_s=options.valve_claim_idle,
            on_fatal=context.on_fatal,
            retry_policy=context.retry_policy,
        )

    def stream_keys(self, run_id: int) -> StreamKeys:
        """This spool's stream: its machine and directory, hashed (only processes that can read it consume it)."""
        spool_id = hashlib.sha1(f"{socket.gethostname()}:{self.spool}".encode()).hexdigest()[:12]
        return spool_keys(run_id, spool_id)

    # Producing

    def _backlog(self) -> int:
        return self._length + self._in_flight * TRACE_BYTES

    def _measure_backlog(self) -> int:
        return spool_bytes(self.spool)

    def _add(self, batch: list[tuple[dict, TraceRows, AsyncResult]]) -> None:
        """Write a batch of traces as one chunk, XADD its pointer, and tell each engineer; a trace that did not
        land in both is failed (its chunk removed: failed rows are not left to be stored later)."""
        tables = {table: b"".join(payload[table] for payload, _, _ in batch if table in payload) for table in TABLES}
        size = sum(len(data) for data in tables.values())
        path = self.spool / f"{self._prefix}-{next(self._sequence):08d}.chunk"
        added = self._added
        try:
            with self.timed("SPOOL", str(self.spool), size):
                sections = gevent.get_hub().threadpool.apply(write_chunk, (path, tables))
            pointer = {b"file": str(path).encode(), HANDED_AT: min(payload[HANDED_AT] for payload, _, _ in batch)}
            pointer.update({table.encode(): section.encode() for table, section in sections.items()})

            def xadd() -> bytes:
                with self.timed("XADD", self.stream, len(pointer)):
                    return self.redis.xadd(self.stream, pointer)

            entry_id = self.with_redis(xadd, self.stream)
        except Exception as error:
            path.unlink(missing_ok=True)
            path.with_suffix(PARTIAL_SUFFIX).unlink(missing_ok=True)  # a write cut short (e.g. the disk full)
            for _, rows, _ in batch:
                for table in TABLES:
                    self.tally.failed[table] += len(getattr(rows, table))
            if isinstance(error, RedisUnreachable):
                self.fail(error)
            for _, _, done in batch:
                if isinstance(error, RedisUnreachable):
                    done.set(None)
                else:
                    done.set_exception(error)
            return
        finally:
            self._in_flight -= len(batch)
        self._added += size
        self._length += self._added - added
        ms, seq = entry_id.split(b"-")
        self._last_id = max(self._last_id or (0, 0), (int(ms), int(seq)))
        for _, _, done in batch:
            done.set(None)

    # Consuming (writers.stream_consumer calls these)

    def read_entries(self, entries: list[Entry]) -> list[Entry]:
        """Each pointer with its rows, read from the spool; a chunk gone (stored and deleted by another consumer,
        or by `firehose valve flush`) has none: its pointer is settled with nothing to store."""
        read = []
        for entry_id, pointer in entries:
            sections = {table: Section.decode(pointer[table.encode()]) for table in TABLES if table.encode() in pointer}
            try:
                rows = read_sections(Path(pointer[b"file"].decode()), sections)
            except FileNotFoundError:
                logger.warning("valve: chunk %s is gone, its pointer settled", pointer[b"file"].decode())
                rows = {}
            fields = {table.encode(): rows.get(table, b"") for table in TABLES}
            fields[HANDED_AT.encode()] = pointer[HANDED_AT.encode()]
            fields[b"file"] = pointer[b"file"]
            read.append((entry_id, fields))
        return read

    def entries_settled(self, entries: list[Entry]) -> None:
        """Delete the chunks whose pointers are settled: their rows are stored."""
        for _, fields in entries:
            Path(fields[b"file"].decode()).unlink(missing_ok=True)

    def gauges(self) -> dict[str, int]:
        """Pointers waiting and pending in this spool's stream, and the spool's bytes."""
        stream = super().gauges()
        if not stream:
            return {}
        return {
            "valve_pointers": stream["stream_length"],
            "valve_pending": stream["stream_pending"],
            "spool_bytes": spool_bytes(self.spool),
        }

    def _report_left(self) -> None:
        files, rows = spooled_rows(self.spool)
        logger.error(
            "the database is gone: spooled, not written: %d rows in %d chunks in %s (load them with "
            "`firehose valve flush --spool %s`)",
            rows, files, self.spool, self.spool,
        )  # fmt: skip

    def close(self) -> None:
        """As the stream's; then say what a spool still holds (another process's chunks, or ones left behind)."""
        started = time.monotonic()
        super().close()
        if self.retry_policy.gone is None and (left := spooled_rows(self.spool))[0]:
            logger.warning(
                "valve: spooled, not written: %d rows in %d chunks stay in %s after %.0f s of closing",
                left[1], left[0], self.spool, time.monotonic() - started,
            )  # fmt: skip


def spools_key(run_id: int) -> str:
    """The run's hash of spools: spool id -> "HOST:DIR", written by each valve writer."""
    return f"firehose:{run_id}:valve:spools"


def spool_keys(run_id: int, spool_id: str) -> StreamKeys:
    prefix = f"firehose:{run_id}:valve:{spool_id}"
    return StreamKeys(f"{prefix}:events", f"{prefix}:copy", f"{prefix}:refused")


def left_in_spools(redis_url: str, run_id: int) -> list[dict]:
    """The run's pointers nobody stored, per spool ("spooled, not written"): the spool (HOST:DIR), its pointers
    and their rows. At a run's end these are the chunks of a spool no live process reads (its machine's processes
    dead, or the database gone): `firehose valve flush --spool DIR` on HOST loads them."""
    client = redis.Redis.from_url(redis_url)
    try:
        left = []
        for spool_id, where in sorted(client.hgetall(spools_key(run_id)).items()):
            pointers = client.xrange(spool_keys(run_id, spool_id.decode()).stream)
            if pointers:
                rows = sum(Section.decode(fields[f]).rows for _, fields in pointers for f in FIELDS if f in fields)
                left.append({"spool": where.decode(), "pointers": len(pointers), "rows": rows})
        return left
    finally:
        client.close()


@dataclass(frozen=True)
class Flushed:
    """What `flush_spool` did: chunks loaded, rows they held, rows stored by it (the others were stored already),
    and partial chunks removed (cut by a crash while written: never returned to an engineer)."""

    chunks: int
    rows: int
    stored: int
    partial: int


def flush_spool(conninfo: str, spool: Path) -> Flushed:
    """Load every chunk a spool holds into PostgreSQL through the de-duplicating COPY (rows stored already are
    skipped, by event id), one transaction per chunk, and delete each chunk once committed."""
    chunks = rows = stored = 0
    with psycopg.connect(conninfo, prepare_threshold=None) as conn:
        for path in chunk_files(spool):
            try:
                tables = read_chunk(path)
            except FileNotFoundError:  # a consumer of a running process stored it meanwhile
                continue
            with conn.transaction():
                for table, data in tables.items():
                    stored += copy_deduplicated(conn, table, data)
            path.unlink(missing_ok=True)
            chunks += 1
            rows += sum(data.count(b"\n") for data in tables.values())
    partial = partial_files(spool)
    for path in partial:
        path.unlink(missing_ok=True)
    return Flushed(chunks, rows, stored, len(partial))
