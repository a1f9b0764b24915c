"""What every part of `firehose bench` shares: the seed of its rows, and a figure measured several times."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from users import CopyEngineer

BENCH_SEED = 20261125
"""The seed of every engineer's rows in a bench: two builds measure the same rows."""
END_TO_END = CopyEngineer.__name__
"""The engineer class the end-to-end and lever parts run: COPY, the path of the physical limit (`psql \\copy`)."""


@dataclass
class Figure:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict:
        spread = [min(self.values), max(self.values)] if self.values else []
        return {"median": self.median, "spread": spread, "values": self.values}

    def text(self, fmt: str = "{:,.0f}") -> str:
        if not self.values:
            return "n/a"
        low, high = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} ({fmt.format(low)}-{fmt.format(high)})"


def median_costs(runs: list[dict]) -> dict:
    """Per-row server costs of several runs: the median of each figure (None where a figure is unknown)."""
    if not runs:
        return {}
    keys = [key for key in runs[0] if key.endswith("_per_row") or key.endswith("_per_1k_rows")]
    return {
        key: statistics.median(values) if (values := [run[key] for run in runs if run[key] is not None]) else None
        for key in keys
    }
