"""`firehose retention`: old rows removed while a COPY writer runs, by DETACH ... CONCURRENTLY + DROP on the
partitioned layout and by DELETE + VACUUM on the plain one; what each cost the writers and the probe is reported,
the rows removed are the rows older than the cutoff, and every other row is still there."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json
import threading
from datetime import UTC, datetime

import psycopg
import pytest

from firehose.tools.locust_processes import wait_for
from firehose.tools.retention.main import Settings, measure_layout
from firehose.tools.retention.remove import TIME_COLUMN, finish_interrupted_detaches, partitions
from firehose.tools.retention.report import render_markdown
from firehose.tools.retention.windows import Timeline, probe_during
from services.postgres import create_partitions
from telemetry.layout import TABLES

HOUR = 3600
SMALL = Settings(
    keep_s=3 * HOUR,
    history_s=6 * HOUR,
    interval_s=HOUR,
    prefill_rows=10_000,
    prefill_bytes=None,
    users=2,
    before_s=1,
    probe_s=0.2,
    locust_args=("--copy-batch-size", "500"),
)
"""~10,000 rows over 6 h in hourly partitions, the oldest ~half removed, 2 COPY engineers in 500-row batches."""


@pytest.mark.slow
def test_retention_on_both_layouts_while_a_copy_writer_runs(dsn, partitioned_dsn, tmp_path):
    results = {
        "plain": measure_layout(dsn, "plain", SMALL, tmp_path),
        "partitioned": measure_layout(partitioned_dsn, "partitioned", SMALL, tmp_path),
    }
    for layout, conninfo in (("plain", dsn), ("partitioned", partitioned_dsn)):
        result = results[layout]
        assert result["ok"], result["checks"]
        cutoff = datetime.fromisoformat(result["cutoff"])
        with psycopg.connect(conninfo) as conn:  # what is left, counted here rather than trusted to the tool
            for table in TABLES:
                older = f"SELECT count(*) FROM {table} WHERE {TIME_COLUMN[table]} < %s"
                assert conn.execute(older, [cutoff]).fetchone()[0] == 0
            assert not [part for table in TABLES for part in partitions(conn, table) if part.upper <= cutoff]
        prefilled = sum(result["prefill"]["rows"].values())
        assert 0 < result["rows_removed"] < prefilled
        assert result["checks"]["prefill_kept"]["in_database"] == prefilled - result["rows_removed"]
        assert result["checks"]["run_reconciled"]["events"]["acknowledged"] > 0  # the writer wrote throughout
        retention = result["steps"]["retention"]
        assert set(retention["writers"]) >= {"rows_per_s", "slowest_round_trip_ms", "round_trips"}
        assert set(retention["probe"]) == {"attempts", "failures", "longest_lock_wait_ms"}
    plain, partitioned = results["plain"], results["partitioned"]
    dropped = partitioned["steps"]["retention"]
    assert min(dropped["partitions"].values()) >= 3  # 3 whole hours at least
    assert plain["tables"]["after_retention"]["spans"]["dead_tuples"] > 0  # a DELETE leaves them to the VACUUM
    assert "vacuum" in plain["steps"] and "vacuum" not in partitioned["steps"]
    markdown = render_markdown({"settings": {**vars(SMALL), "keep": "3h", "history": "6h", "prefill": "10000",
                                             "partition_interval": "1h"}, "layouts": results})  # fmt: skip
    assert "| slowest COPY round trip ms, before -> during |" in markdown
    assert dropped["detach_s"] + dropped["drop_s"] <= dropped["wall_s"] and dropped["slowest_detach_s"] > 0
    assert "| migration probe during |" in markdown and "| VACUUM wall time |" in markdown


@pytest.mark.slow
def test_a_detach_interrupted_between_its_transactions_is_finalized(partitioned_dsn):
    noon = datetime(2026, 1, 5, 12, tzinfo=UTC)
    create_partitions(partitioned_dsn, noon, noon.replace(hour=13), HOUR)
    name = "logs_p20260105_1200"
    with psycopg.connect(partitioned_dsn) as reader, psycopg.connect(partitioned_dsn, autocommit=True) as detacher:
        reader.execute("SELECT count(*) FROM logs")  # an open transaction holding a lock on the parent
        detacher_pid = detacher.info.backend_pid
        failed: list[Exception] = []

        def detach() -> None:
            try:
                detacher.execute(f"ALTER TABLE logs DETACH PARTITION {name} CONCURRENTLY")
            except psycopg.errors.QueryCanceled as error:
                failed.append(error)

        thread = threading.Thread(target=detach)
        thread.start()
        with psycopg.connect(partitioned_dsn, autocommit=True) as admin:
            waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
            wait_for(lambda: admin.execute(waiting, [detacher_pid]).fetchone()[0], "the detach waiting for the reader")
            admin.execute("SELECT pg_cancel_backend(%s)", [detacher_pid])  # between its two transactions
            thread.join(30)
            assert failed, "the detach was not cancelled"
            reader.rollback()
            assert [part.name for part in partitions(admin, "logs") if part.detach_pending] == [name]
            assert [part.name for part in finish_interrupted_detaches(admin)] == [name]
            assert name not in [part.name for part in partitions(admin, "logs")]
            assert admin.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]  # a table of its own
            admin.execute(f"DROP TABLE {name}")


def test_a_step_counts_the_round_trips_and_probe_attempts_that_overlapped_it(tmp_path):
    lines = [
        {"at": 100.0, "acknowledged": 0},
        {"at": 110.0, "acknowledged": 1_000},
        {"at": 120.0, "acknowledged": 1_500},
        {"at": 104.0, "verb": "COPY", "table": "spans", "ms": 500.0, "failed": False},  # wholly before 105
        {"at": 108.0, "verb": "COPY", "table": "logs", "ms": 4_000.0, "failed": False},  # started 104: overlaps
        {"at": 109.0, "verb": "SELECT", "table": "q", "ms": 9_000.0, "failed": False},  # not a COPY
        {"at": 112.0, "verb": "COPY", "table": "spans", "ms": 100.0, "failed": True},  # after the step
    ]
    path = tmp_path / "timeline.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    timeline = Timeline.read(path)
    assert timeline.first_acknowledged_at() == 110.0
    step = timeline.writers(105.0, 106.0, "COPY")  # 1 s: rows/s over 5 s from its start, 105-110: 500 rows
    assert step["round_trips"] == 1 and step["slowest_round_trip_ms"] == 4_000.0 and step["failed_round_trips"] == 0
    assert step["rows_per_s"] == 100.0 and step["rate_over_s"] == 5.0
    assert timeline.writers(110.0, 120.0, "COPY")["rows_per_s"] == 50.0  # no widening past 5 s
    assert timeline.rows_between(105.0, 106.0) == 100.0
    attempts = [[104.0, "spans", 10.0, None], [107.5, "logs", None, "lock_timeout"], [107.9, "metrics", 30.0, None]]
    during = probe_during(attempts, 2_000, 105.0, 106.0)  # the timeout waited 105.5-107.5; the last began at 107.87
    assert during == {"attempts": 1, "failures": {"lock_timeout": 1}, "longest_lock_wait_ms": None}
    assert probe_during(attempts, 2_000, 103.0, 108.0)["longest_lock_wait_ms"] == 30.0
