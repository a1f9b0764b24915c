"""The headless progress line: every few seconds, what the database is taking now and how far the run got.

Printed like Locust's own stats tables (and off with --only-summary, as they are).
"""

from __future__ import annotations

import time

PROGRESS_S = 5.0
"""Seconds between two progress lines: Locust prints its own tables every 2 s; ours is one line, less often."""


def progress_line(view: dict, started_at: float) -> str:
    """`firehose 12.0 s: 13,233 rows/s now (39.7 MB/s), 158,796 rows, 10,000 buffered, engineers 12/100 ...`"""
    rate, total = view["rate"], view["total"]
    started, finished = view["engineers"]
    line = (
        f"firehose {time.time() - started_at:.0f} s: {rate['rows_per_s']:,.0f} rows/s now "
        f"({rate['mb_per_s']:.1f} MB/s), {total['acknowledged']:,} rows acknowledged, "
        f"{total['buffered']:,} buffered, engineers finished/started {finished:,}/{started:,}"
    )
    if total["failed"] or total["quarantined"] or total["retries"]:
        line += f", failed {total['failed']:,}, quarantined {total['quarantined']:,}, retries {total['retries']:,}"
    if (length := view["gauges"].get("stream_length")) is not None:
        line += f", stream {length:,} entries ({view['gauges'].get('stream_pending', 0):,} pending)"
    if (pointers := view["gauges"].get("valve_pointers")) is not None:
        gauges = view["gauges"]
        line += f", valve {pointers:,} pointers ({gauges.get('valve_pending', 0):,} pending), spool "
        line += f"{gauges.get('spool_bytes', 0) / 1e6:,.0f} MB"
    if (lag := view["gauges"].get("replica_replay_lag_ms")) is not None:
        line += f", replica replay lag {lag:,} ms ({view['gauges'].get('replica_behind_bytes', 0):,} bytes behind)"
    return line
