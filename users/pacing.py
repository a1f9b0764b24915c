"""Open model: engineers paced at an offered rate of events per second, and how far behind schedule they fell.

By default an engineer emits as fast as its writer accepts (a closed model: a slower database quietly means
less offered load). With `--engineer-rate N`, each engineer schedules its traces at N events/s: trace k is
due when the events before it have had their time at that rate, and the engineer sleeps (gevent) until it is.
When the writer's back-pressure holds an engineer past a trace's due time, the trace goes out late: its *lag*
(hand-over time - due time) is recorded, so a saturated database shows as lag growing, not as a lower rate.

`--ramp-rate R` adds R events/s per engineer every `--ramp-step` seconds; the summary then gives, per step,
the offered and achieved rates and the p99 lag, and the capacity: the highest rate per engineer whose p99 lag
stays under `--lag-bound`. Without a ramp the steps are plain intervals of the run (lag over time).

Per process, a `Pacing` (a part of the process's run: users.run.Part) keeps the figures: per step the events
due and handed over, and lag as microsecond HDR histograms (merged across processes by `merge_reports`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import gevent
from hdrh.histogram import HdrHistogram

from users.population import gateway_rate
from users.run import Part, Run
from writers.base import new_histogram

STEP_S = 5.0
"""Default length of a ramp step, or of an interval of lag over time without a ramp: a few of Locust's 3-s
reports, long enough for a step's p99 to hold ~100 traces per engineer at 400 events/s."""
LAG_BOUND_S = 1.0
"""A step's p99 lag under this counts as keeping up (--lag-bound)."""
PERCENTILE_METHOD = "HdrHistogram (3 significant digits) of each trace's lag, merged across processes"


@dataclass
class Step:
    """One step's figures in one process."""

    due_events: int = 0
    handed_events: int = 0
    traces: int = 0
    lag: HdrHistogram = field(default_factory=new_histogram)
    """Lag of the traces due in this step: how the rate offered in it was served (the ramp's capacity)."""
    seen: HdrHistogram = field(default_factory=new_histogram)
    """Lag of the traces handed over in this step: how far behind the engineers were then (lag over time)."""


class Pacing(Part):
    """The process's open-model figures for one run (built once per process and run)."""

    name = "open_model"

    def __init__(self, rate: float, ramp_rate: float, step_s: float, lag_bound_s: float, origin_s: float) -> None:
        self.rate = rate
        self.ramp_rate = ramp_rate
        self.step_s = step_s
        self.lag_bound_s = lag_bound_s
        self.origin_s = origin_s
        """Wall time steps count from: the run's start, the same in every process."""
        self.steps: dict[int, Step] = {}
        self.lag = new_histogram()
        self.engineers = 0
        self.offered_rate_sum = 0.0
        """Sum over engineers of their offered rate (events over scheduled span)."""
        self.achieved_rate_sum = 0.0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("open model (pacing)")
        group.add_argument(
            "--engineer-rate",
            type=float,
            default=0.0,
            help="Events per second each engineer offers (0: as fast as its writer accepts). The summary reports the "
            "offered and achieved rates and the p99 lag behind schedule.",
        )
        group.add_argument(
            "--ramp-rate",
            type=float,
            default=0.0,
            help="Add this many events/s per engineer every --ramp-step seconds (from --engineer-rate); the summary "
            "reports the highest rate whose p99 lag stays under --lag-bound.",
        )
        group.add_argument(
            "--ramp-step", type=float, default=STEP_S, help="Seconds per ramp step (or per interval of lag over time)."
        )
        group.add_argument("--lag-bound", type=float, default=LAG_BOUND_S, help="p99 lag (s) a step may have.")

    @classmethod
    def for_run(cls, run: Run) -> Pacing:
        options = run.options
        rate = options.engineer_rate
        if getattr(options, "population", 0):  # each user is a gateway: its share of the population's rate
            rate = gateway_rate(options, run.users)
        return cls(rate, options.ramp_rate, options.ramp_step, options.lag_bound, run.anchor_us / 1e6)

    @property
    def active(self) -> bool:
        return self.rate > 0

    def step_of(self, when: float) -> int:
        return max(0, int((when - self.origin_s) // self.step_s))

    def rate_at(self, when: float) -> float:
        return self.rate + self.ramp_rate * self.step_of(when)

    def schedule(self) -> Schedule:
        self.engineers += 1
        return Schedule(self)

    def step(self, index: int) -> Step:
        if index not in self.steps:
            self.steps[index] = Step()
        return self.steps[index]

    def report(self) -> dict:
        return {
            "rate": self.rate,
            "ramp_rate": self.ramp_rate,
            "step_s": self.step_s,
            "lag_bound_s": self.lag_bound_s,
            "engineers": self.engineers,
            "offered_rate_sum": self.offered_rate_sum,
            "achieved_rate_sum": self.achieved_rate_sum,
            "lag": self.lag.encode().decode("ascii"),
            "steps": {
                str(index): {
                    "due_events": step.due_events,
                    "handed_events": step.handed_events,
                    "traces": step.traces,
                    "lag": step.lag.encode().decode("ascii"),
                    "seen": step.seen.encode().decode("ascii"),
                }
                for index, step in sorted(self.steps.items())
            },
        }

    @staticmethod
    def merge(reports: list[dict]) -> dict | None:
        return merge_reports(reports)

    @staticmethod
    def render(section: dict) -> list[str]:
        return render_open_model(section)


class Schedule:
    """One engineer's timetable: when each trace is due, and what it achieved."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self.start = time.time()
        self.due = self.start
        self.events = 0
        self._offered = 0.0
        self._achieved = 0.0

    def wait_until_due(self) -> None:
        """Sleep until the next trace is due. Called before composing it, so a paced engineer holds no rows while it
        waits; `hand_over` then records the trace (its lag includes any wait for the writer's room)."""
        if (wait := self.due - time.time()) > 0:
            gevent.sleep(wait)

    def hand_over(self, events: int) -> None:
        """Wait until a trace of `events` events is due; record its lag when it is late. Call before writing it."""
        pacing = self.pacing
        now = time.time()
        if now < self.due:
            gevent.sleep(self.due - now)
            now = time.time()
        lag = now - self.due
        micros = max(1, round(lag * 1e6))
        due_step, handed_step = pacing.step(pacing.step_of(self.due)), pacing.step(pacing.step_of(now))
        due_step.due_events += events
        due_step.traces += 1
        due_step.lag.record_value(micros)
        handed_step.handed_events += events
        handed_step.seen.record_value(micros)
        pacing.lag.record_value(micros)
        self.events += events
        rate = pacing.rate_at(self.due)
        self.due += events / rate
        # Offered: these events over the span they were scheduled in; achieved: over the span they took.
        offered = self.events / (self.due - self.start)
        achieved = self.events / (now + events / rate - self.start)
        pacing.offered_rate_sum += offered - self._offered
        pacing.achieved_rate_sum += achieved - self._achieved
        self._offered, self._achieved = offered, achieved


def _percentile_s(histogram: HdrHistogram, percentile: float) -> float | None:
    return histogram.get_value_at_percentile(percentile) / 1e6 if histogram.get_total_count() else None


def merge_reports(reports: list[dict]) -> dict | None:
    """Processes' `Pacing.report()`s as one: offered and achieved rates, lag percentiles, steps, capacity."""
    reports = [report for report in reports if report["rate"] > 0]
    if not reports:
        return None
    first = reports[0]
    lag = new_histogram()
    steps: dict[int, dict] = {}
    for report in reports:
        lag.decode_and_add(report["lag"].encode("ascii"))
        for index, part in report["steps"].items():
            step = steps.setdefault(int(index), {"due_events": 0, "handed_events": 0, "traces": 0})
            for key in ("due_events", "handed_events", "traces"):
                step[key] += part[key]
            for key in ("lag", "seen"):
                step.setdefault(key, new_histogram()).decode_and_add(part[key].encode("ascii"))
    step_s, bound = first["step_s"], first["lag_bound_s"]
    rows = []
    for index, step in sorted(steps.items()):
        rows.append(
            {
                "step": index,
                "start_s": index * step_s,
                "rate_per_engineer": first["rate"] + first["ramp_rate"] * index,
                "offered_per_s": step["due_events"] / step_s,
                "achieved_per_s": step["handed_events"] / step_s,
                "traces": step["traces"],
                "lag_p99_s": _percentile_s(step["lag"], 99),
                "lag_max_s": step["lag"].get_max_value() / 1e6 if step["traces"] else None,
                "lag_seen_p99_s": _percentile_s(step["seen"], 99),
            }
        )
    # Capacity: the highest rate of a full step (not the run's partial last one) whose p99 lag stayed in bound.
    full = rows[:-1] if len(rows) > 1 else rows
    within = [row["rate_per_engineer"] for row in full if row["lag_p99_s"] is not None and row["lag_p99_s"] < bound]
    return {
        "rate_per_engineer": first["rate"],
        "ramp_rate": first["ramp_rate"],
        "step_s": step_s,
        "lag_bound_s": bound,
        "engineers": sum(report["engineers"] for report in reports),
        "offered_per_s": sum(report["offered_rate_sum"] for report in reports),
        "achieved_per_s": sum(report["achieved_rate_sum"] for report in reports),
        "lag_p50_s": _percentile_s(lag, 50),
        "lag_p99_s": _percentile_s(lag, 99),
        "lag_max_s": lag.get_max_value() / 1e6 if lag.get_total_count() else None,
        "capacity_rate_per_engineer": max(within) if first["ramp_rate"] and within else None,
        "percentile_method": PERCENTILE_METHOD,
        "steps": rows,
    }


def render_open_model(model: dict) -> list[str]:
    """The merged open model in the summary: offered vs achieved, lag over the run, and the ramp's capacity."""
    lines = [
        f"open model: offered {model['offered_per_s']:,.0f} events/s ({model['engineers']} engineers at "
        f"{model['rate_per_engineer']:,.0f}/s), achieved {model['achieved_per_s']:,.0f}, lag p99 "
        f"{model['lag_p99_s']:.3f} s, max {model['lag_max_s']:.3f} s",
        "lag behind schedule over the run (p99 s of traces handed over per "
        f"{model['step_s']:g} s): " + ", ".join(_s(row["lag_seen_p99_s"]) for row in model["steps"]),
    ]
    if model["ramp_rate"]:
        capacity = model["capacity_rate_per_engineer"]
        steps = ", ".join(f"{row['rate_per_engineer']:,.0f}/s p99 {_s(row['lag_p99_s'])} s" for row in model["steps"])
        lines.append(
            f"ramp: {steps}"
            + f"; capacity (p99 lag < {model['lag_bound_s']} s): "
            + (f"{capacity:,.0f} events/s per engineer" if capacity else "none")
        )
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
