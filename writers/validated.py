"""Validated COPY: every row is checked before it joins a COPY batch, and no row is dropped.

`ValidatedCopyWriter` buffers and batches exactly like `CopyWriter`; only sending a batch differs:

1. writers.checks sorts the batch: clean rows are COPYed; suspicious ones (valid but unusual) go by
   `INSERT ... ON CONFLICT DO NOTHING`; malformed ones are quarantined with their reason.
2. When the server still refuses a COPY (an event_id an earlier batch committed, a CHECK), the
   batch is split where COPY's error names the failing line: the rows before it are sent again and
   commit, that row is quarantined with the server's error, the rows after it are sent again. An
   error that names no line (say, a deferred constraint, at commit) halves the batch instead. Rows
   whose time has no partition (SQLSTATE 23514) are all found in one round trip (writers.partitions)
   and quarantined together.
3. The quarantined rows are inserted right after the batch's good rows, with the run id, the reason
   and the row's bytes as received.

Every row received is thus acknowledged (in its table) or quarantined. Only a connection that
cannot be re-established makes rows count as failed (lost), as in CopyWriter.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable

import gevent
import psycopg
from locust.event import Events

from telemetry.layout import COLUMNS, copy_statement, parse_row
from writers.base import OnFatal, WriterContext
from writers.checks import Triage
from writers.copy import CopyWriter, copy_deduplicated, copy_rows
from writers.delivery import Outcome, RetryPolicy, RowsRefused, SetupError
from writers.partitions import outside_reason, rows_outside_partitions

logger = logging.getLogger(__name__)

CHECK_SLICE = 500
"""Rows checked between two yields to other greenlets: a few milliseconds of CPU (docs/performance-notes.md)."""
INSERT_BATCH = 500
"""Suspicious rows per INSERT: the seed's batched-INSERT size (there are few such rows)."""

_COPY_LINE = re.compile(r"COPY [^,]+, line (\d+)(?:, column (\w+))?")
_QUARANTINE = "INSERT INTO quarantine (run_id, table_name, reason, row_data) VALUES (%s, %s, %s, %s)"

Rejected = list[tuple[bytes, str]]
"""Rows set aside, each with its reason, for the quarantine."""


class AlreadyStored(RowsRefused):
    """An INSERT ... ON CONFLICT DO NOTHING skipped rows: their event_ids are already in the table."""

    def __init__(self, event_ids: set[int]) -> None:
        super().__init__(f"event_id already stored: {', '.join(map(str, sorted(event_ids)))}")
        self.event_ids = event_ids


class ValidatedCopyWriter(CopyWriter):
    """COPY after per-row checks; malformed rows are quarantined, suspicious ones inserted on their own."""

    option_prefix = "validated"
    options_title = "validated COPY strategy"

    def __init__(
        self,
        conninfo: str,
        events: Events,
        *,
        run_id: int | None = None,
        batch_size: int | None = None,
        pool_size: int | None = None,
        connect_kwargs: dict | None = None,
        on_fatal: OnFatal | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            conninfo,
            events,
            batch_size=batch_size,
            pool_size=pool_size,
            connect_kwargs=connect_kwargs,
            on_fatal=on_fatal,
            retry_policy=retry_policy,
        )
        self.run_id = run_id  # recorded with each quarantined row

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--malformed-share",
            type=_share,
            default=0.0,
            help="Share of rows (0 to 1) the validated COPY strategy's engineers corrupt before writing them (bad "
            "JSON, NUL bytes, NULLs, duplicate event ids, impossible dates), to exercise validation and quarantine.",
        )

    @classmethod
    def from_context(cls, context: WriterContext) -> ValidatedCopyWriter:
        return cls(
            context.postgres,
            context.events,
            run_id=context.run_id,
            on_fatal=context.on_fatal,
            retry_policy=context.retry_policy,
            **cls.sizes(context.options),
        )

    def send(self, table: str, lines: list[str]) -> None:
        """Check one batch, COPY its clean rows, INSERT its suspicious ones, quarantine the rest."""
        triage = Triage(table)
        for start in range(0, len(lines), CHECK_SLICE):
            triage.add(lines[start : start + CHECK_SLICE])
            gevent.sleep(0)
        rejected: Rejected = list(triage.malformed)
        if triage.clean:
            self._deliver(self.verb, table, [triage.clean], self._copy_action(table), rejected)
        if triage.suspicious:
            for row, why in triage.suspicious:
                logger.debug("%s row %s goes by INSERT: %s", table, _event_id(row), why)
            rows = [row for row, _why in triage.suspicious]
            chunks = [rows[start : start + INSERT_BATCH] for start in range(0, len(rows), INSERT_BATCH)]
            self._deliver("INSERT", table, chunks, self._insert_action(table), rejected)
        if rejected:
            self._quarantine(table, rejected)

    def _deliver(
        self,
        verb: str,
        table: str,
        chunks: list[list[bytes]],
        action: Callable[[psycopg.Connection, list[bytes], bool], None],
        rejected: Rejected,
    ) -> None:
        """Send `chunks` in order with `action`; when the server refuses one, set culprits aside, resend the rest."""
        pending = chunks[::-1]  # a stack: the first chunk on top, so rows keep their order
        while pending:
            chunk = pending.pop()
            error = self._attempt(verb, table, chunk, action)
            if error is None:
                continue
            if isinstance(error, AlreadyStored):
                rest = []
                for row in chunk:
                    if _event_id(row) in error.event_ids:
                        rejected.append((row, f"event_id {_event_id(row)} already stored (ON CONFLICT DO NOTHING)"))
                    else:
                        rest.append(row)
                if rest:
                    pending.append(rest)
            elif len(chunk) == 1:
                rejected += [(row, _reason(error)) for row in chunk]
            elif outside := rows_outside_partitions(self, self._pool, table, chunk, error):
                split = set(outside)
                rejected += [(chunk[position], outside_reason(table)) for position in outside]
                if rest := [row for position, row in enumerate(chunk) if position not in split]:
                    pending.append(rest)
            elif (line := _failed_line(error)) is not None and 1 <= line <= len(chunk):
                rejected.append((chunk[line - 1], _reason(error)))
                pending += [part for part in (chunk[line:], chunk[: line - 1]) if part]
            else:
                half = len(chunk) // 2
                pending += [chunk[half:], chunk[:half]]

    def _attempt(
        self,
        verb: str,
        table: str,
        rows: list[bytes],
        action: Callable[[psycopg.Connection, list[bytes], bool], None],
    ) -> Exception | None:
        """Deliver `action(conn, rows, retry)` in one transaction, reported as one request.

        Returns None once it committed, or the server's refusal of the rows. When the database stays out of
        reach, the rows count as failed and None is returned: nothing more can be done with them.
        """
        size = sum(map(len, rows))
        try:
            delivery = self.deliver(self._pool, verb, table, size, lambda conn, retry: action(conn, rows, retry))
        except SetupError:
            self.tally.failed[table] += len(rows)
            raise
        if delivery.outcome is Outcome.REFUSED:
            return delivery.error
        if delivery.outcome is Outcome.COMMITTED:
            self.acknowledge(table, len(rows), size)
        else:
            self.tally.failed[table] += len(rows)
        return None

    @staticmethod
    def _copy_action(table: str) -> Callable[[psycopg.Connection, list[bytes], bool], None]:
        statement = copy_statement(table)

        def copy(conn: psycopg.Connection, rows: list[bytes], retry: bool) -> None:
            data = b"".join(rows)
            if retry:
                copy_deduplicated(conn, table, data)
            else:
                copy_rows(conn, statement, data)

        return copy

    @staticmethod
    def _insert_action(table: str) -> Callable[[psycopg.Connection, list[bytes], bool], None]:
        columns = COLUMNS[table]
        placeholders = f"({', '.join(['%s'] * len(columns))})"

        def insert(conn: psycopg.Connection, rows: list[bytes], retry: bool) -> None:
            statement = (
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholders] * len(rows))}"
                " ON CONFLICT DO NOTHING RETURNING event_id"
            )
            values = [value for row in rows for value in parse_row(row.decode())]
            stored = {event_id for (event_id,) in conn.execute(statement, values)}
            if len(stored) < len(rows) and not retry:
                raise AlreadyStored({_event_id(row) for row in rows} - stored)

        return insert

    def _quarantine(self, table: str, rejected: Rejected) -> None:
        """Insert the rows set aside, with their reasons; reported as `INSERT quarantine` requests."""
        size = sum(len(row) for row, _reason in rejected)
        params = [(self.run_id, table, reason, row) for row, reason in rejected]

        def insert(conn: psycopg.Connection, _retry: bool) -> None:
            conn.cursor().executemany(_QUARANTINE, params)

        try:
            delivery = self.deliver(self._pool, "INSERT", "quarantine", size, insert)
        except SetupError:
            self.tally.failed[table] += len(rejected)
            raise
        if delivery.outcome is Outcome.COMMITTED:
            self.tally.quarantined[table] += len(rejected)
        else:
            self.tally.failed[table] += len(rejected)


def _event_id(row: bytes) -> int:
    return int(row[: row.find(b"\t")])


def _failed_line(error: Exception) -> int | None:
    """The line of COPY data the server refused (1 = the chunk's first row), when its error names one."""
    match = _COPY_LINE.search(error.diag.context or "") if isinstance(error, psycopg.Error) else None
    return int(match.group(1)) if match else None


def _reason(error: Exception) -> str:
    """The server's error as a quarantine reason: column, message, detail and SQLSTATE."""
    if not isinstance(error, psycopg.Error) or not error.diag.message_primary:
        return str(error)
    diag = error.diag
    match = _COPY_LINE.search(diag.context or "")
    column = f"{match.group(2)}: " if match and match.group(2) else ""
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return f"{column}{diag.message_primary}{detail} [SQLSTATE {diag.sqlstate}]"


def _share(text: str) -> float:
    share = float(text)
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share: give a number from 0 to 1, e.g. 0.01")
    return share
