"""A rerun with the same --seed and the same worker count writes the same events: same traces, spans, metrics and
logs, same attributes, same times relative to the run's anchor. Only event ids (drawn from each run's writer keys)
and absolute times (each run's anchor is its start) differ."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import psycopg
import pytest

from tests.conftest import load_summary, run_locust

pytestmark = pytest.mark.slow

# Each table's content without event ids, times relative to the run's earliest span (an anchor-relative offset:
# every time is the anchor plus a seeded number of microseconds), as one digest per run.
_CONTENT = """
WITH keys AS (SELECT writer_key FROM firehose_writer_keys WHERE run_id = %(run)s),
s AS (SELECT t.* FROM spans t JOIN keys k ON t.event_id >> 32 = k.writer_key),
m AS (SELECT t.* FROM metrics t JOIN keys k ON t.event_id >> 32 = k.writer_key),
l AS (SELECT t.* FROM logs t JOIN keys k ON t.event_id >> 32 = k.writer_key),
origin AS (SELECT min(start_time) AS at FROM s),
content AS (
    SELECT concat_ws('|', 's', trace_id, span_id, parent_span_id, service_name, name, kind, start_time - at,
                     end_time - at, duration_ms, status_code, status_message, attributes::text) AS line
    FROM s, origin
    UNION ALL
    SELECT concat_ws('|', 'm', name, service_name, time - at, value, unit, metric_type, trace_id, span_id,
                     attributes::text) FROM m, origin
    UNION ALL
    SELECT concat_ws('|', 'l', time - at, severity_number, severity_text, service_name, trace_id, span_id, body,
                     attributes::text) FROM l, origin
)
SELECT count(*), md5(string_agg(line, E'\\n' ORDER BY line)) FROM content
"""


def _run(dsn: str, tmp_path, seed: int, name: str) -> tuple[int, str]:
    summary_path = tmp_path / f"{name}.json"
    result = run_locust(
        "CopyEngineer", "-u", "4", "-r", "4", "-t", "60s", "--traces-per-engineer", "5", "--seed", str(seed),
        "--pg-dsn", dsn, "--summary-json", str(summary_path), "--processes", "2", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = load_summary(summary_path)
    assert summary["events"]["lost"] == 0 and len(summary["processes"]) == 2, (result.stdout + result.stderr)[-4000:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows, digest = conn.execute(_CONTENT, {"run": summary["run"]["run_id"]}).fetchone()
    assert rows == summary["events"]["in_database"] > 0
    return rows, digest


def test_a_rerun_with_the_same_seed_and_workers_writes_the_same_events(dsn, tmp_path):
    first = _run(dsn, tmp_path, 42, "first")
    assert _run(dsn, tmp_path, 42, "again") == first
    assert _run(dsn, tmp_path, 43, "other")[1] != first[1]  # the digest tells seeds apart
