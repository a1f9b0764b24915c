"""A population of engineers (`--population N`) spoken for by the run's users, as gateways.

The reference benchmark's question is a business one: how many engineers, each sending E events a day, can this
PostgreSQL serve? Ten million Locust users cannot run (~50 KB each), so with `--population N` every engineer user
becomes a *gateway*, like the reference's proxy service: together the gateways offer N x E / 86,400 events/s (the
busiest hour's rate with `--day-shape office`), each its share on a deterministic timetable (users.pacing, whose
lag accounting is the verdict), and every trace belongs to one of the N engineers (telemetry.population: an
identity derived from the engineer's index, no object per engineer).

Gateway g of G (the run's users; g interleaves the processes: local ordinal x processes + process index) speaks
for engineers g, g + G, g + 2G, ... in turn, so the population is split between processes and gateways and each
engineer's traces come round every N x (events per trace) / rate seconds: E a day on average.
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Iterator

from telemetry.generator import TraceRows
from telemetry.population import Identities
from users.run import Part, Run

EVENTS_PER_ENGINEER_DAY = 1900.0
"""The reference's figure: "10 million concurrent users sending 1,900 telemetry events a day"."""
DAY_S = 86_400
OFFICE_HOURS = (0.1,) * 7 + (0.4, 0.8, 1.0, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0, 1.0, 0.7, 0.4) + (0.2,) * 5
"""Relative activity per hour of the day (00-23 h) of an office day: nights quiet, 09-17 h busy, lunch lighter."""
DAY_SHAPES = {"flat": 1.0, "office": max(OFFICE_HOURS) / (sum(OFFICE_HOURS) / len(OFFICE_HOURS))}
"""Day shape -> the busiest hour's rate over the day's mean: the run offers the busiest hour (office: ~2.05x)."""
ENDLESS = sys.maxsize
"""A gateway's traces: it speaks until the run ends (-t, or stopped)."""


def daily_rate(population: int, events_per_engineer_day: float, day_shape: str) -> float:
    """Events/s a population offers in its busiest hour: N x E / 86,400 x the day shape's peak factor."""
    return population * events_per_engineer_day / DAY_S * DAY_SHAPES[day_shape]


def target_per_s(options: argparse.Namespace) -> float:
    """`daily_rate` of the run's options."""
    return daily_rate(options.population, options.events_per_engineer_day, options.day_shape)


def gateway_rate(options: argparse.Namespace, gateways: int) -> float:
    """Events/s each of `gateways` gateways offers."""
    return target_per_s(options) / max(gateways, 1)


class Population(Part):
    """This process's gateways of the run's population (one instance per process and run)."""

    name = "population"

    def __init__(self, run: Run) -> None:
        options = run.options
        self.size = options.population
        self.events_per_day = options.events_per_engineer_day
        self.day_shape = options.day_shape
        self.gateways = max(run.users, 1)
        """Gateways of the whole run (every process): the stride between the engineers one gateway speaks for."""
        self.processes = max(run.processes, 1)
        self.process_index = run.process_index
        self.gateways_here = 0
        self.traces_composed = 0
        self._run = run
        self._identities = Identities(run.pools, run.seed) if self.size else None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("population (capacity in engineers)")
        group.add_argument(
            "--population",
            type=int,
            default=0,
            help="Engineers the run speaks for (0: none, each user is one engineer). Users become gateways that "
            "together offer POPULATION x --events-per-engineer-day / 86,400 events/s, each event from one of the "
            "POPULATION engineers; the summary gives offered vs achieved events/s and the lag behind schedule.",
        )
        group.add_argument(
            "--events-per-engineer-day",
            type=float,
            default=EVENTS_PER_ENGINEER_DAY,
            help="Events each engineer of --population sends a day (default: %(default)g, the reference's figure).",
        )
        group.add_argument(
            "--day-shape",
            choices=sorted(DAY_SHAPES),
            default="flat",
            help="flat: the day's events spread evenly; office: weighted to office hours, and the run offers the "
            "busiest hour's rate (%.2fx flat)." % DAY_SHAPES["office"],
        )

    @classmethod
    def for_run(cls, run: Run) -> Population:
        return cls(run)

    @property
    def active(self) -> bool:
        return self.size > 0

    def traces(self) -> Iterator[TraceRows]:
        """A new gateway's traces, endless: each one of the engineers it speaks for, in turn."""
        run = self._run
        ordinal = self.gateways_here * self.processes + self.process_index
        self.gateways_here += 1
        telemetry = run.engineer_telemetry(ENDLESS)
        speak_as, stride, size = self._identities.speak_as, self.gateways, self.size
        engineer = ordinal
        while True:
            speak_as(telemetry, engineer % size)
            self.traces_composed += 1
            yield telemetry.trace(run.ids)
            engineer += stride

    def report(self) -> dict:
        return {
            "population": self.size,
            "events_per_engineer_day": self.events_per_day,
            "day_shape": self.day_shape,
            "gateways": self.gateways,
            "gateways_here": self.gateways_here,
            "traces": self.traces_composed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    @staticmethod
    def merge(reports: list[dict]) -> dict | None:
        reports = [report for report in reports if report["population"]]
        if not reports:
            return None
        first = reports[0]
        traces = sum(report["traces"] for report in reports)
        size = first["population"]
        return {
            "population": size,
            "events_per_engineer_day": first["events_per_engineer_day"],
            "day_shape": first["day_shape"],
            "peak_factor": DAY_SHAPES[first["day_shape"]],
            "target_per_s": daily_rate(size, first["events_per_engineer_day"], first["day_shape"]),
            "gateways": first["gateways"],
            "gateways_started": sum(report["gateways_here"] for report in reports),
            "traces": traces,
            "engineers_spoken_for": min(size, traces),
            "peak_rss_mb_per_process": [round(report["peak_rss_mb"], 1) for report in reports],
        }

    @staticmethod
    def render(section: dict) -> list[str]:
        rss = ", ".join(f"{value:,.0f}" for value in section["peak_rss_mb_per_process"])
        return [
            f"population: {section['population']:,} engineers at {section['events_per_engineer_day']:,g} events/day "
            f"({section['day_shape']} day, busiest hour x{section['peak_factor']:.2f}): "
            f"{section['target_per_s']:,.0f} events/s to offer over {section['gateways_started']} gateways "
            f"(of {section['gateways']}); {section['traces']:,} traces from "
            f"{section['engineers_spoken_for']:,} engineers; peak RSS per process {rss} MB"
        ]
