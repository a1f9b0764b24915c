"""The COPY writer against a real PostgreSQL: every row acknowledged is there, with its exact content."""

import datetime

import orjson
import psycopg
import pytest
from locust.event import Events

from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import COLUMNS, parse_row
from writers.copy import CopyWriter

pytestmark = pytest.mark.slow


def _write(dsn, pools, engineers, **writer_options):
    events = Events()
    requests = []
    events.request.add_listener(lambda **kw: requests.append(kw))
    writer = CopyWriter(dsn, events, **writer_options)
    ids = EventIds(11)
    written = {"spans": [], "metrics": [], "logs": []}
    for seed in range(engineers):
        for rows in EngineerTelemetry(pools, seed).traces(ids):
            writer.write(rows)
            for table in written:
                written[table] += getattr(rows, table)
    writer.close()
    return writer, written, requests


def test_rows_in_equal_rows_acknowledged(dsn, pools):
    writer, written, requests = _write(dsn, pools, engineers=3, batch_size=1000, pool_size=2)
    with psycopg.connect(dsn) as conn:
        for table, lines in written.items():
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == len(lines) == writer.tally.acknowledged[table] == writer.tally.received[table]
    assert not writer.tally.failed
    assert {r["request_type"] for r in requests} == {"COPY"}
    assert {r["name"] for r in requests} == {"spans", "metrics", "logs"}
    assert all(r["exception"] is None and r["response_time"] > 0 for r in requests)
    assert sum(r["response_length"] for r in requests) == sum(len("".join(v).encode()) for v in written.values())
    # batches are exactly batch_size rows, but for each table's last one
    assert writer.tally.acknowledged_bytes["spans"] > 0


@pytest.mark.parametrize("table", ["spans", "metrics", "logs"])
def test_sample_rows_round_trip_exactly(dsn, pools, table):
    _, written, _ = _write(dsn, pools, engineers=1, batch_size=500, pool_size=1)
    sample = written[table][:: max(1, len(written[table]) // 25)]
    columns = COLUMNS[table]
    with psycopg.connect(dsn) as conn:
        for line in sample:
            expected = parse_row(line)
            row = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE event_id = %s", [int(expected[0])])
            actual = row.fetchone()
            for column, want, got in zip(columns, expected, actual, strict=True):
                assert _same(want, got), (table, column, want, got)


def _same(text, value) -> bool:
    """A COPY text field equals the value psycopg read back."""
    if text is None or value is None:
        return text is value
    if isinstance(value, dict):
        return orjson.loads(text) == value
    if isinstance(value, datetime.datetime):
        return datetime.datetime.fromisoformat(text.replace("+00", "+00:00")) == value
    if isinstance(value, float):
        return abs(float(text) - value) < 1e-9
    return str(value) == text


def test_back_pressure_bounds_the_backlog(dsn, pools):
    """With a tiny batch and one connection, writing blocks instead of queueing without bound."""
    events = Events()
    writer = CopyWriter(dsn, events, batch_size=50, pool_size=1)
    ids = EventIds(12)
    most = 0
    for rows in EngineerTelemetry(pools, 1, traces=60).traces(ids):
        writer.write(rows)
        most = max(most, writer._batches.qsize())
    writer.close()
    assert most <= writer.backlog
    assert sum(writer.tally.acknowledged.values()) == sum(writer.tally.received.values())
