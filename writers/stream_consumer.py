"""The consuming side of the Redis Streams strategy: read batches of entries, COPY them, then settle them.

`--stream-consumers` greenlets per writing process, owned by the process's StreamWriter, read batches with
XREADGROUP, COPY each table's rows in its own transaction, and only then XACK and XDEL the entries (one MULTI,
so Redis frees them and nothing is deleted unacknowledged). A consumer that dies before its XACK leaves its
entries pending: once they have been idle for `--stream-claim-idle`, any consumer takes them over with
XAUTOCLAIM and COPYs them through the de-duplicating path, so they land exactly once. Rows count as acknowledged
by the transaction that stored them: all of a plain COPY's, and only those a de-duplicating COPY inserted; so the
run's summed tallies match the database whichever process consumed an entry, however often it was delivered.
A consumer that finds its group gone (a Redis without persistence, restarted) creates it again.

Consumers are the writer's greenlets, not a Locust user class: consumer users would count in -u and -r, be
stopped with the engineers just when the stream must be drained, and keep the user count above 0, by which a
fixed-volume run knows it is over. Owned by the writer they scale with --processes like every strategy's flushers.

Each step of a batch is a function of its own (`next_batch`, `by_table`, `settle`), which `firehose bench`'s
stream profile times one at a time.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
import psycopg
import redis

from telemetry.layout import TABLES, copy_statement
from writers.copy import copy_deduplicated, copy_rows
from writers.delivery import Outcome, SetupError, open_pool
from writers.partitions import rows_outside_partitions

if TYPE_CHECKING:
    from writers.stream import StreamWriter

logger = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py returns it: (id, {b"spans": rows, b"metrics": rows, b"logs": rows, b"t": time})."""
HANDED_AT = "t"
"""Entry field: the wall time the trace was handed to the writer, from which a consumer measures freshness."""
FIELDS = tuple(table.encode() for table in TABLES)
"""Entry fields holding each table's rows as COPY text (one trace per entry)."""
_HANDED_AT_FIELD = HANDED_AT.encode()
BLOCK_MS = 250
"""XREADGROUP waits this long for entries: bounds how long `close` waits for consumers to notice it."""
ERROR_BACKOFF_S = 1.0
"""A consumer's pause after an error (Redis gone), so it does not spin while the cause lasts."""


@dataclass(frozen=True)
class StreamKeys:
    """The Redis keys of one run's stream: the stream, its consumer group, and where refused entries are kept."""

    stream: str
    group: str
    refused: str

    @classmethod
    def of_run(cls, run_id: int) -> StreamKeys:
        return cls(f"firehose:{run_id}:events", f"firehose:{run_id}:copy", f"firehose:{run_id}:refused")


@dataclass(frozen=True)
class TableBatch:
    """One table's rows of a batch of entries: their COPY text joined, and each entry's row count and hand-over."""

    table: str
    data: bytes
    counts: list[int]
    handed_at: list[bytes | None]

    @property
    def rows(self) -> int:
        return sum(self.counts)

    def without(self, positions: set[int]) -> TableBatch:
        """This batch less its rows at `positions` (0 = the first row of `data`), each entry keeping its hand-over."""
        rows, kept, counts, start = split_rows(self.data), [], [], 0
        for count in self.counts:
            mine = [rows[position] for position in range(start, start + count) if position not in positions]
            kept += mine
            counts.append(len(mine))
            start += count
        return TableBatch(self.table, b"".join(kept), counts, self.handed_at)


def split_rows(data: bytes) -> list[bytes]:
    """COPY text back to its rows, each ending in its newline (a row's own newlines are escaped)."""
    return [row + b"\n" for row in data.split(b"\n")[:-1]]


def next_batch(
    client: redis.Redis,
    keys: StreamKeys,
    consumer: str,
    *,
    count: int,
    claim_idle_ms: int,
    cursor: bytes = b"0-0",
    block_ms: int | None = BLOCK_MS,
) -> tuple[bytes, list[Entry], bool]:
    """The next batch of up to `count` entries for `consumer`: first those a dead consumer left pending past
    `claim_idle_ms` (XAUTOCLAIM from `cursor`), else new ones (XREADGROUP). Returns the next claim cursor, the
    entries, and whether they were claimed (so may be stored already)."""
    # Deleted entries (XAUTOCLAIM's third item) were already settled.
    cursor, claimed, _ = client.xautoclaim(keys.stream, keys.group, consumer, claim_idle_ms, cursor, count=count)
    if claimed:
        return cursor, claimed, True
    reply = client.xreadgroup(keys.group, consumer, {keys.stream: ">"}, count=count, block=block_ms)
    return cursor, (reply[0][1] if reply else []), False


def by_table(entries: list[Entry]) -> list[TableBatch]:
    """Each table's rows of these entries, joined into one COPY (tables without rows left out)."""
    batches = []
    for table, field in zip(TABLES, FIELDS, strict=True):
        parts = [(fields[field], fields.get(_HANDED_AT_FIELD)) for _, fields in entries if fields[field]]
        if parts:
            data = b"".join(part for part, _ in parts)
            counts = [part.count(b"\n") for part, _ in parts]  # per entry, for freshness; the batch's rows: their sum
            batches.append(TableBatch(table, data, counts, [handed_at for _, handed_at in parts]))
    return batches


def settle(client: redis.Redis, keys: StreamKeys, entries: list[Entry], *, keep_refused: bool = False) -> list[int]:
    """XACK and XDEL the entries in one MULTI (copied to the refused stream first when `keep_refused`); returns
    XACK's answer per entry: 1 where it was still pending."""
    ids = [entry_id for entry_id, _ in entries]
    with client.pipeline(transaction=True) as pipe:
        for _, fields in entries if keep_refused else ():
            pipe.xadd(keys.refused, fields)
        for entry_id in ids:
            pipe.xack(keys.stream, keys.group, entry_id)
        pipe.xdel(keys.stream, *ids)
        return pipe.execute()[-1 - len(ids) : -1]


class StreamConsumers:
    """A writer's consumer greenlets, each with a PostgreSQL connection of the writer's pool."""

    def __init__(self, writer: StreamWriter, conninfo: str, consumers: int, *, per_read: int) -> None:
        self.writer = writer
        self.per_read = per_read
        self.stopping = False
        self.pool = open_pool(conninfo, consumers, "stream") if consumers > 0 else None
        prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._greenlets = [gevent.spawn(self._consume_forever, f"{prefix}:{n}") for n in range(consumers)]

    def stop(self) -> None:
        """Stop the consumers once their current batch is settled, and close their connections."""
        self.stopping = True
        gevent.joinall(self._greenlets)
        if self.pool is not None:
            self.pool.close()

    def _consume_forever(self, consumer: str) -> None:
        writer, cursor, group_lost = self.writer, b"0-0", False
        while not self.stopping and not writer.given_up():
            try:
                if group_lost:
                    writer.create_group()
                    group_lost = False
                cursor, entries, claimed = next_batch(
                    writer.redis, writer.keys, consumer, count=self.per_read, claim_idle_ms=writer.claim_idle_ms,
                    cursor=cursor,
                )  # fmt: skip
                if entries:
                    self._process(entries, claimed=claimed)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                # What it held stays pending (Redis keeps it on disk) and is claimed after --stream-claim-idle.
                logger.warning("stream consumer %s: Redis unreachable (%s), trying again", consumer, error)
                gevent.sleep(ERROR_BACKOFF_S)
            except redis.ResponseError as error:
                if "NOGROUP" in str(error):  # Redis restarted without it (no persistence): what it held is gone
                    logger.warning("stream consumer %s: the consumer group is gone, creating it again", consumer)
                    group_lost = True
                else:
                    logger.exception("stream consumer %s failed; its batch stays pending", consumer)
                    gevent.sleep(ERROR_BACKOFF_S)
            except Exception:
                # A consumer outlives any one batch: what it held stays pending and is claimed after a while.
                logger.exception("stream consumer %s failed; its batch stays pending", consumer)
                gevent.sleep(ERROR_BACKOFF_S)

    def _process(self, entries: list[Entry], *, claimed: bool) -> None:
        """COPY a batch table by table, then settle its entries. Claimed ones may be in the database already."""
        entries = self.writer.read_entries(entries)
        refused = []
        split_out: dict[str, set[int]] = {}
        for batch in by_table(entries):
            outcome, outside = self._copy(batch, deduplicate=claimed)
            if outcome is Outcome.UNAVAILABLE:  # the database is gone (the run stops): the entries stay pending
                return
            if outcome is Outcome.REFUSED:
                refused.append(batch.table)
            elif outside:
                split_out[batch.table] = outside
        # Retried through a Redis restart (XACK and XDEL are idempotent): a MULTI that Redis wrote to its append-only
        # file just before it died has no reply, and its entries would leave no trace to settle them by later.
        try:
            acked = self.writer.with_redis(
                lambda: settle(self.writer.redis, self.writer.keys, entries, keep_refused=bool(refused))
            )
        except SetupError as error:  # Redis gone past the outage deadline: the run stops, the entries stay pending
            self.writer.fail(error)
            return
        self.writer.entries_settled(entries)
        if refused:
            logger.error(
                "%d entries refused by %s kept in %s", len(entries), ", ".join(refused), self.writer.keys.refused
            )
        # Rows of a refused table, and rows split out of a table's batch, count as failed only where the entry was
        # still pending (not settled elsewhere).
        for (_, fields), was_pending in zip(entries, acked, strict=True):
            if was_pending:
                for table, field in zip(TABLES, FIELDS, strict=True):
                    if table in refused:
                        self.writer.tally.failed[table] += fields[field].count(b"\n")
                    elif table in split_out:
                        rows = split_rows(fields[field])
                        self.writer.tally.failed[table] += sum(_event_id(row) in split_out[table] for row in rows)

    def _copy(self, batch: TableBatch, *, deduplicate: bool) -> tuple[Outcome, set[int]]:
        """COPY one table's rows of a batch in its own transaction, and tally the rows it stored; with the event ids
        of the rows whose time no partition takes, split out of the batch while the others were stored
        (writers.partitions).

        Claimed entries go through the deduplicating path, which counts only the rows it inserted: the others
        were stored (and counted) by the transaction that inserted them.
        """
        writer, table, data, rows = self.writer, batch.table, batch.data, batch.rows
        stored = 0

        def attempt(conn: psycopg.Connection, retry: bool) -> None:
            nonlocal stored
            if retry:
                stored = copy_deduplicated(conn, table, data)
                return
            try:
                with conn.transaction():  # a savepoint: rows stored already leave the others to store, not a failure
                    copy_rows(conn, copy_statement(table), data)
                stored = rows
            except psycopg.errors.UniqueViolation:  # an XADD sent twice (its reply lost), or entries settled elsewhere
                stored = copy_deduplicated(conn, table, data)

        try:
            delivery = writer.deliver(self.pool, writer.verb, table, len(data), attempt, deduplicate=deduplicate)
        except SetupError as error:
            writer.fail(error)
            return Outcome.UNAVAILABLE, set()
        if delivery.outcome is Outcome.REFUSED:
            lines = split_rows(data)
            if outside := rows_outside_partitions(writer, self.pool, table, lines, delivery.error):
                kept = batch.without(set(outside))
                outcome, more = self._copy(kept, deduplicate=deduplicate) if kept.rows else (Outcome.COMMITTED, set())
                return outcome, more | {_event_id(lines[position]) for position in outside}
            logger.error("%s refused a batch of %d rows: %s", table, rows, delivery.error)
        elif delivery.outcome is Outcome.COMMITTED and stored:
            writer.tally.acknowledge(table, stored, len(data) * stored // rows)
            if stored == rows:
                for handed_at, count in zip(batch.handed_at, batch.counts, strict=True):
                    if handed_at and count:
                        writer.tally.record_freshness(table, count, float(handed_at))
            elif handed := [float(handed_at) for handed_at in batch.handed_at if handed_at]:
                writer.tally.record_freshness(table, stored, min(handed))  # which rows were new is not known
        return delivery.outcome, set()


def _event_id(row: bytes) -> int:
    return int(row[: row.find(b"\t")])
