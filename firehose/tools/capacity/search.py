"""The search for the largest population that holds: doubling, then bisecting, no finer than the runs' own spread.

`search(probe, ...)` knows nothing of Locust: `probe(population)` runs (or stands in for) one run and says whether
it held and what it achieved. From `start` it doubles while probes hold (halves while they fail), which brackets
the boundary between the largest population that held and the smallest that did not; then it bisects the bracket
until its upper end is within `precision` of its lower end, or within the run-to-run spread measured at the
boundary, whichever is wider: a finer answer than the runs themselves repeat would be noise.

The spread: a probe that did not hold because the server (or client) ran out delivered its ceiling (achieved <
offered); the relative spread (max - min) / max of the ceilings of such probes is how far the capacity moves from
one run to the next, since the population served is the ceiling's events/s over each engineer's events/s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SATURATED_SHARE = 0.97
"""A probe whose achieved events/s are under this share of its offered ones ran at its ceiling."""
MIN_POPULATION = 1


@dataclass
class Probe:
    """One run at one population: whether it held, and the figures the report shows."""

    population: int
    held: bool
    offered_per_s: float
    achieved_per_s: float
    figures: dict = field(default_factory=dict)
    """Anything else the report shows (lag, freshness, lost, CPU, why it failed)."""

    @property
    def saturated(self) -> bool:
        return self.offered_per_s > 0 and self.achieved_per_s < SATURATED_SHARE * self.offered_per_s


@dataclass
class SearchResult:
    """The largest population that held (0: none did), the smallest that did not (None: none failed), the probes."""

    served: int
    failed: int | None
    probes: list[Probe]
    precision: float
    spread: float | None
    """Relative spread of the saturated probes' achieved events/s (None: fewer than two saturated probes)."""
    exhausted: bool = False
    """True when the probe budget ran out before the bracket was as narrow as asked."""

    @property
    def resolution(self) -> float:
        """The bracket's width the search aimed at: the precision asked, or the runs' spread when wider."""
        return max(self.precision, self.spread or 0.0)

    @property
    def bracket(self) -> float | None:
        """How wide the final bracket is: failed / served - 1 (None when it is open)."""
        return self.failed / self.served - 1 if self.failed is not None and self.served else None


def spread(probes: list[Probe]) -> float | None:
    """(max - min) / max of the achieved events/s of the saturated probes; None with fewer than two."""
    ceilings = [probe.achieved_per_s for probe in probes if probe.saturated]
    if len(ceilings) < 2:
        return None
    return (max(ceilings) - min(ceilings)) / max(ceilings)


def search(
    probe: Callable[[int], Probe],
    start: int,
    *,
    precision: float = 0.1,
    max_probes: int = 12,
    on_probe: Callable[[Probe], None] | None = None,
) -> SearchResult:
    """The largest population in [1, ...) for which `probe` holds, within max(precision, spread) of the smallest
    that fails, using at most `max_probes` probes."""
    probes: list[Probe] = []

    def run(population: int) -> bool:
        result = probe(population)
        probes.append(result)
        if on_probe is not None:
            on_probe(result)
        return result.held

    served, failed = 0, None
    population = max(start, MIN_POPULATION)
    # Bracket: double while it holds, halve while it fails.
    while len(probes) < max_probes:
        if run(population):
            served = population
            if failed is not None:
                break
            population *= 2
        else:
            failed = population
            if served:
                break
            if population == MIN_POPULATION:
                break
            population = max(population // 2, MIN_POPULATION)
    # Bisect (geometrically: the bracket is a ratio) until it is as narrow as the runs allow.
    while served and failed is not None and len(probes) < max_probes:
        if failed / served - 1 <= max(precision, spread(probes) or 0.0):
            break
        middle = round((served * failed) ** 0.5)
        if middle in (served, failed):
            break
        if run(middle):
            served = middle
        else:
            failed = middle
    if failed is None or not served:  # an open bracket: done only when even one engineer was too many
        done = failed == MIN_POPULATION
    else:
        done = failed - served <= 1 or failed / served - 1 <= max(precision, spread(probes) or 0.0)
    return SearchResult(served, failed, probes, precision, spread(probes), exhausted=not done)
