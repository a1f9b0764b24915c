"""`--csv PREFIX` adds `PREFIX_telemetry_history.csv`: rows/s and MB/s per table, every few seconds of the run.

Written as the run goes (like Locust's own `_stats_history.csv`), one line per interval and table plus a
"total" line, the rate over that interval from the live counters (firehose.report.live).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import IO

from firehose.report.live import Sample, rate_between

HISTORY_S = 5.0
"""Seconds per line of the history: what the progress line shows, kept."""
COLUMNS = ("timestamp", "elapsed_s", "table", "rows_per_s", "mb_per_s", "rows_acknowledged")


def history_path(prefix: str) -> Path:
    return Path(f"{prefix}_telemetry_history.csv")


class HistoryFile:
    """The CSV file of one Locust process's runs (appended to at each interval, flushed)."""

    def __init__(self, prefix: str) -> None:
        path = history_path(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)
        self._file.flush()
        self._last: Sample | None = None
        self._started_at = 0.0

    def begin(self, started_at: float) -> None:
        self._last, self._started_at = None, started_at

    def offer(self, sample: Sample, *, final: bool = False) -> None:
        """Write a line per table when HISTORY_S passed since the last one (or at the run's end)."""
        if self._last is None:
            self._last = sample
            return
        if sample.at - self._last.at < HISTORY_S and not final:
            return
        rate = rate_between(self._last, sample)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sample.at))
        elapsed = f"{sample.at - self._started_at:.1f}"
        for table, row in rate["by_table"].items():
            self._csv.writerow(
                (stamp, elapsed, table, f"{row['rows_per_s']:.1f}", f"{row['mb_per_s']:.3f}", sample.rows[table])
            )
        self._csv.writerow(
            (stamp, elapsed, "total", f"{rate['rows_per_s']:.1f}", f"{rate['mb_per_s']:.3f}", sum(sample.rows.values()))
        )
        self._file.flush()
        self._last = sample

    def close(self) -> None:
        self._file.close()
