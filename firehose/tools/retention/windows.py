"""What the writers and the migration probe met in one stretch of a run, from the run's timeline
(firehose.tools.retention.timeline) and its summary's probe timeline (firehose/run/probe.py).

A round trip or a probe attempt counts in a window when it overlapped it: one that a DELETE held up started before
the DELETE ended, and may end after. Rows/s over a window is interpolated between the acknowledged-rows samples
around its ends; a window shorter than MIN_RATE_S is widened to MIN_RATE_S from its start, since a few COPY
commits a second make a rate over a fraction of a second meaningless.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

MIN_RATE_S = 5.0
"""Rows/s is taken over at least this many seconds (see the module's docstring)."""


@dataclass
class Timeline:
    """A run's round trips (end time, seconds, verb, failed) and acknowledged-rows samples (time, rows), by time."""

    round_trips: list[tuple[float, float, str, bool]]
    acknowledged: list[tuple[float, int]]

    @classmethod
    def read(cls, path: Path) -> Timeline:
        round_trips, acknowledged = [], []
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if "acknowledged" in entry:
                acknowledged.append((entry["at"], entry["acknowledged"]))
            else:
                round_trips.append((entry["at"], entry["ms"] / 1000, entry["verb"], entry["failed"]))
        return cls(sorted(round_trips), sorted(acknowledged))

    def first_acknowledged_at(self) -> float | None:
        """When the writers' first rows were committed."""
        return next((at for at, rows in self.acknowledged if rows > 0), None)

    def rows_at(self, moment: float) -> float:
        """Rows acknowledged at `moment`, interpolated between the samples around it."""
        times = [at for at, _ in self.acknowledged]
        index = bisect.bisect_left(times, moment)
        if index == 0:
            return float(self.acknowledged[0][1]) if self.acknowledged else 0.0
        if index == len(times):
            return float(self.acknowledged[-1][1])
        (t0, r0), (t1, r1) = self.acknowledged[index - 1], self.acknowledged[index]
        return r0 + (r1 - r0) * (moment - t0) / (t1 - t0) if t1 > t0 else float(r1)

    def rows_between(self, start: float, end: float) -> float:
        """Rows acknowledged in [start, end] (interpolated)."""
        return self.rows_at(end) - self.rows_at(start)

    def writers(self, start: float, end: float, verb: str) -> dict:
        """The writers in [start, end]: rows/s, round trips of `verb` that overlapped it, the slowest, failures."""
        rate_end = max(end, start + MIN_RATE_S)
        overlapping = [(ended, s, failed) for ended, s, v, failed in self.round_trips
                       if v == verb and ended - s < end and ended > start]  # fmt: skip
        return {
            "seconds": round(end - start, 3),
            "rows_per_s": round((self.rows_at(rate_end) - self.rows_at(start)) / (rate_end - start), 1),
            "rate_over_s": round(rate_end - start, 3),
            "round_trips": len(overlapping),
            "slowest_round_trip_ms": round(max(s for _, s, _ in overlapping) * 1000, 1) if overlapping else None,
            "failed_round_trips": sum(failed for _, _, failed in overlapping),
        }


def probe_during(timeline: list[list], lock_timeout_ms: int, start: float, end: float) -> dict:
    """The probe's attempts that overlapped [start, end]: count, failures by kind, the longest lock wait (a failed
    attempt waited its lock_timeout)."""
    overlapping = []
    for ended, table, wait_ms, failure in timeline:
        waited = wait_ms if wait_ms is not None else lock_timeout_ms
        if ended - waited / 1000 < end and ended > start:
            overlapping.append((table, wait_ms, failure))
    failures: dict[str, int] = {}
    for _, _, failure in overlapping:
        if failure is not None:
            failures[failure] = failures.get(failure, 0) + 1
    waits = [wait for _, wait, _ in overlapping if wait is not None]
    return {
        "attempts": len(overlapping),
        "failures": failures,
        "longest_lock_wait_ms": round(max(waits), 1) if waits else None,
    }
