"""Live counters: each writing process's tallies now, sent with every stats report and merged on the master.

A writing process's counters are read from its writers' tallies (writers.base.Tally), never kept apart: per
writer and table, rows received and acknowledged, bytes acknowledged, rows buffered (received, not yet
committed, failed or quarantined), failed, quarantined, retries, seconds blocked retrying, the freshness and
round-trip histograms, plus the strategy's own gauges (a stream's length and pending entries). The process's
snapshot of them (firehose.run.process_run.ProcessRun.snapshot) travels from a worker, histograms encoded, with
each of Locust's stats reports (every 3 s) and, final, in its drain report; the master keeps each process's
latest.

`LiveTelemetry`, on the master (or the only process), merges the latest snapshots of the current run into
one view every `SAMPLE_S`, keeps the history of acknowledged rows and bytes per table (rows/s over the run),
and computes "rows/s now" over the last `RATE_WINDOW_S` of that history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from telemetry.layout import TABLES
from users.analyst import merge_reports as merge_queries
from writers.base import new_histogram

SAMPLE_S = 1.0
"""How often the master merges the processes' latest snapshots into the live view and its history."""
RATE_WINDOW_S = 10.0
""""Rows/s now" is over this much of the history: with 5,000-row COPY batches (~3 commits a second per
table here), a 10-s window steps by under 10 %; a worker's snapshot is at most 3 s old."""
CHART_SMOOTH_S = 5.0
"""Each point of the rows/s chart is the rate over this many seconds: per second, 5,000-row commits make spikes."""
HISTORY_LIMIT = 7_200
"""Samples kept for the chart (two hours at one a second); older ones are thinned out, never the run's start."""
COUNTERS = ("received", "acknowledged", "acknowledged_bytes", "failed", "quarantined", "retries", "blocked_s")
PERCENTILES = (50, 95, 99)
FRESHNESS_METHOD = (
    "commit acknowledged - hand-over to the writer; per acknowledged chunk, the oldest row's delay counted for "
    "every row of the chunk (an upper bound); HdrHistogram, 3 significant digits, merged across processes"
)
ROUND_TRIP_METHOD = (
    "each COPY/INSERT/XADD round trip as timed for Locust's request event, in HdrHistogram (3 significant "
    "digits, microseconds) per process, merged across processes; Locust's own tables round to ~2 digits"
)


def _add(into: dict, key: str, histogram: HdrHistogram | str) -> None:
    if key not in into:
        into[key] = new_histogram()
    if isinstance(histogram, str):
        into[key].decode_and_add(histogram.encode("ascii"))
    else:
        into[key].add(histogram)


def percentiles_ms(histogram: HdrHistogram | None) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds (one pass over the histogram), None when it holds nothing."""
    if histogram is None or not histogram.get_total_count():
        return {f"p{p}_ms": None for p in PERCENTILES}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES))
    return {f"p{p}_ms": values[p] / 1000 for p in PERCENTILES}


def merge(snapshots: list[dict], class_names: dict[str, str] | None = None) -> dict:
    """Processes' snapshots as one view: per table, per strategy (user class) and in total."""
    class_names = class_names or {}
    by_table = {table: dict.fromkeys((*COUNTERS, "buffered"), 0) for table in TABLES}
    by_class: dict[str, dict] = {}
    freshness_by_table: dict[str, HdrHistogram] = {}
    freshness_by_class: dict[str, HdrHistogram] = {}
    round_trips: dict[str, HdrHistogram] = {}
    gauges: dict[str, int] = {}
    engineers = [0, 0]
    for snapshot in snapshots:
        engineers[0] += snapshot["engineers"][0]
        engineers[1] += snapshot["engineers"][1]
        for writer, entry in snapshot["writers"].items():
            name = class_names.get(writer, writer)
            strategy = by_class.setdefault(name, dict.fromkeys((*COUNTERS, "buffered"), 0))
            for counter in COUNTERS:
                for table, value in entry[counter].items():
                    strategy[counter] += value
                    if table in by_table:  # not the stream's own retries (XADD), kept under its name
                        by_table[table][counter] += value
            for table, histogram in entry["freshness"].items():
                _add(freshness_by_table, table, histogram)
                _add(freshness_by_class, name, histogram)
            for verb, histogram in entry["round_trips"].items():
                _add(round_trips, verb, histogram)
            for gauge, value in entry.get("gauges", {}).items():
                gauges[gauge] = max(gauges.get(gauge, 0), value)  # one stream per run: every process sees it whole
    query_reports = [snapshot["queries"] for snapshot in snapshots if snapshot.get("queries")]
    for row in (*by_table.values(), *by_class.values()):
        row["buffered"] = row["received"] - row["acknowledged"] - row["failed"] - row["quarantined"]
    total = {key: sum(row[key] for row in by_table.values()) for key in (*COUNTERS, "buffered")}
    return {
        "processes": len(snapshots),
        "engineers": engineers,
        "by_table": by_table,
        "by_class": by_class,
        "total": total,
        "gauges": gauges,
        "freshness_histograms": {"by_table": freshness_by_table, "by_class": freshness_by_class},
        "round_trip_histograms": round_trips,
        "queries": merge_queries(query_reports) if query_reports else None,
    }


@dataclass
class Sample:
    """Acknowledged rows and bytes per table (and per user class) at one moment of the run (seconds since the
    epoch)."""

    at: float
    rows: dict[str, int]
    bytes: dict[str, int]
    class_rows: dict[str, int] = field(default_factory=dict)
    class_bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class LiveTelemetry:
    """The master's live view of the current run: the processes' latest snapshots, merged, and their history."""

    local: Callable[[], dict | None] | None = None
    """This process's own snapshot, when it writes too (the local runner)."""
    class_names: dict[str, str] = field(default_factory=dict)
    run_id: int | None = None
    started_at: float = 0.0
    remote: dict[int, dict] = field(default_factory=dict)
    """Writer key -> the latest snapshot of that process in the current run (a worker's, or a final report)."""
    view: dict | None = None
    history: list[Sample] = field(default_factory=list)
    summary: dict | None = None
    """The end-of-run summary (RunSummary.as_dict) once the run ended, with its text in "text"."""
    ending: bool = False
    """The run was counted here and has not been summarised yet (it runs, or drains): the web UI keeps reporting
    it as running, so that an open page keeps polling until the end state is in."""

    def begin(self, run_id: int, class_names: dict[str, str]) -> None:
        self.run_id, self.class_names, self.started_at = run_id, class_names, time.time()
        self.remote, self.view, self.history, self.summary = {}, None, [], None
        self.ending = True

    def absorb(self, snapshot: dict) -> None:
        """A process's snapshot (a stats report's, or its final report): the latest of each process counts."""
        if self.run_id is not None and snapshot.get("run_id") == self.run_id:
            self.remote[snapshot["writer_key"]] = snapshot

    def snapshots(self) -> list[dict]:
        found = dict(self.remote)
        if self.local is not None and (own := self.local()) is not None and own["run_id"] == self.run_id:
            found[own["writer_key"]] = own
        return list(found.values())

    def sample(self) -> dict | None:
        """Merge the latest snapshots now, append them to the history, and return the view."""
        if self.run_id is None:
            return None
        view = merge(self.snapshots(), self.class_names)
        now = time.time()
        self.history.append(
            Sample(
                now,
                {table: row["acknowledged"] for table, row in view["by_table"].items()},
                {table: row["acknowledged_bytes"] for table, row in view["by_table"].items()},
                {name: row["acknowledged"] for name, row in view["by_class"].items()},
                {name: row["acknowledged_bytes"] for name, row in view["by_class"].items()},
            )
        )
        if len(self.history) > HISTORY_LIMIT:
            del self.history[1::2]  # halve the resolution, keep the first sample
        view["at"] = now
        view["rate"] = self.rate()
        self.view = view
        return view

    def rate(self, window_s: float = RATE_WINDOW_S) -> dict:
        """Rows/s and MB/s per table and in total over the last `window_s` of the history, and that window."""
        if len(self.history) < 2:
            return {"from": None, "to": None, "rows_per_s": 0.0, "mb_per_s": 0.0, "by_table": {}, "by_class": {}}
        last = self.history[-1]
        first = next((s for s in reversed(self.history) if last.at - s.at >= window_s), self.history[0])
        return rate_between(first, last)

    def series(self, smooth_s: float = CHART_SMOOTH_S) -> list[dict]:
        """Rows/s and MB/s at each sample over the `smooth_s` before it (thinned to at most ~600 points)."""
        history = self.history
        stride = max(1, len(history) // 600)
        series = []
        earliest = 0
        for index in range(1, len(history), stride):
            last = history[index]
            while last.at - history[earliest + 1].at >= smooth_s:
                earliest += 1
            rate = rate_between(history[earliest], last)
            series.append(
                {
                    "t": round(last.at - self.started_at, 2),
                    "rows_per_s": rate["rows_per_s"],
                    "mb_per_s": rate["mb_per_s"],
                    "by_table": {table: row["rows_per_s"] for table, row in rate["by_table"].items()},
                }
            )
        return series


def rate_between(first: Sample, last: Sample) -> dict:
    """Rows/s and MB/s per table, per user class and in total between two samples (a class that appeared
    between them counts from 0)."""
    span = max(last.at - first.at, 1e-9)
    by_table = {
        table: {
            "rows_per_s": (last.rows[table] - first.rows[table]) / span,
            "mb_per_s": (last.bytes[table] - first.bytes[table]) / span / 1e6,
        }
        for table in last.rows
    }
    by_class = {
        name: {
            "rows_per_s": (rows - first.class_rows.get(name, 0)) / span,
            "mb_per_s": (last.class_bytes.get(name, 0) - first.class_bytes.get(name, 0)) / span / 1e6,
        }
        for name, rows in last.class_rows.items()
    }
    return {
        "from": first.at,
        "to": last.at,
        "rows_per_s": sum(row["rows_per_s"] for row in by_table.values()),
        "mb_per_s": sum(row["mb_per_s"] for row in by_table.values()),
        "by_table": by_table,
        "by_class": by_class,
    }
