"""A run's named figures, read from its summary JSON: what `--check`, `--baseline`, `firehose compare` and the Runs
page speak of.

One name per figure, a table or query in brackets where it has one: `rows_per_s`, `mb_per_s[spans]`,
`freshness_p99_ms`, `query_p95_ms[service_dependency_map]`, `lost`. Each says whether more is better, so a
delta and a regression read the right way round. Several runs of one group (a label, `--repeat`) give each figure's
median with its min-max: the spread a difference must exceed to mean something.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from telemetry.layout import TABLES
from users.queries import load_queries

HIGHER_IS_BETTER = {"rows_per_s": True, "mb_per_s": True}
"""Figures where more is better; every other one (times, losses) is better lower."""
PER_TABLE = ("rows_per_s", "mb_per_s", "freshness_p50_ms", "freshness_p99_ms")
"""Figures that also exist per table: `rows_per_s[spans]`."""
PER_QUERY = ("query_p50_ms", "query_p95_ms", "query_p99_ms", "query_per_s", "query_failures")
"""Figures that exist per analyst query only: `query_p95_ms[trace_lookup]`."""
RUN_WIDE = (
    "rows_per_s",
    "mb_per_s",
    "freshness_p50_ms",
    "freshness_p99_ms",
    "lost",
    "duplicates",
    "failed",
    "quarantined",
    "writing_s",
    "lag_p50_s",
    "lag_p99_s",
    "lag_max_s",
    "replica_lag_p95_ms",
    "replica_visible_p95_ms",
)
"""Figures of the whole run. Freshness run-wide is the worst table's (the summary keeps percentiles per table). The
lag behind schedule exists only in paced runs (--engineer-rate, --population), the replica's figures only where
the analysts queried one (its replay lag, and how long after its commit a row was visible there)."""
_NAME = re.compile(r"^([a-z0-9_]+)(?:\[([A-Za-z0-9_]+)\])?$")


@dataclass(frozen=True)
class Spread:
    """One figure over a group of runs: median, min and max, and how many runs had it."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        return cls(statistics.median(values), min(values), max(values), len(values)) if values else None


def higher_is_better(name: str) -> bool:
    return HIGHER_IS_BETTER.get(name.split("[", 1)[0], False)


def unknown_figure(name: str) -> str | None:
    """Why `name` names no figure (None when it does): checked before a run starts."""
    match = _NAME.match(name)
    if match is None:
        return f"{name!r} is not a figure name (e.g. rows_per_s, query_p95_ms[trace_lookup])"
    base, key = match.groups()
    if key is None:
        if base in RUN_WIDE:
            return None
        if base in PER_QUERY:
            return f"{base} needs a query in brackets, e.g. {base}[{next(iter(sorted(load_queries())))}]"
        return f"unknown figure {base!r}: choose from {', '.join((*RUN_WIDE, *PER_QUERY))}"
    if base in PER_TABLE:
        return None if key in TABLES else f"unknown table {key!r} in {name}: choose from {', '.join(TABLES)}"
    if base in PER_QUERY:
        queries = sorted(load_queries())
        return None if key in queries else f"unknown query {key!r} in {name}: choose from {', '.join(queries)}"
    return f"{base} has no per-table or per-query figures: choose from {', '.join((*PER_TABLE, *PER_QUERY))}"


def figures(summary: dict) -> dict[str, float]:
    """Every figure a summary holds (a query no analyst ran, or a percentile with no sample, is absent)."""
    writes, events, fresh = summary["writes"], summary["events"], summary["freshness"]["by_table"]
    found: dict[str, float] = {
        "rows_per_s": writes["rows_per_s"],
        "mb_per_s": writes["mb_per_s"],
        "writing_s": summary["run"]["writing_s"],
        **{name: events[name] for name in ("lost", "duplicates", "failed", "quarantined")},
    }
    for table, row in writes["by_table"].items():
        found[f"rows_per_s[{table}]"] = row["rows_per_s"]
        found[f"mb_per_s[{table}]"] = row["mb_per_s"]
    for p in ("p50", "p99"):
        per_table = {table: row[f"{p}_ms"] for table, row in fresh.items() if row.get(f"{p}_ms") is not None}
        found.update({f"freshness_{p}_ms[{table}]": value for table, value in per_table.items()})
        if per_table:
            found[f"freshness_{p}_ms"] = max(per_table.values())
    if paced := summary.get("open_model"):
        found.update({name: paced[name] for name in ("lag_p50_s", "lag_p99_s", "lag_max_s") if paced[name] is not None})
    if replica := summary.get("replica"):
        measured = {
            "replica_lag_p95_ms": replica["lag"]["replay_ms"]["p95"],
            "replica_visible_p95_ms": replica["visible_freshness"]["p95_ms"],
        }
        found.update({name: value for name, value in measured.items() if value is not None})
    writing_s = max(summary["run"]["writing_s"], 1e-9)
    for name, query in (summary.get("queries") or {}).items():
        found[f"query_per_s[{name}]"] = query["count"] / writing_s
        found[f"query_failures[{name}]"] = query["failures"]
        for p in ("p50", "p95", "p99"):
            if query.get(f"{p}_ms") is not None:
                found[f"query_{p}_ms[{name}]"] = query[f"{p}_ms"]
    return found


def group_figures(summaries: list[dict]) -> dict[str, Spread]:
    """Each figure over a group of runs (those that have it)."""
    per_run = [figures(summary) for summary in summaries]
    names = sorted({name for found in per_run for name in found}, key=figure_order)
    return {name: Spread.of([found[name] for found in per_run if name in found]) for name in names}


def figure_order(name: str) -> tuple[int, str]:
    """Run-wide figures first in their declared order, then per table, then per query."""
    base = name.split("[", 1)[0]
    if "[" not in name:
        return RUN_WIDE.index(base) if base in RUN_WIDE else len(RUN_WIDE), name
    return (len(RUN_WIDE) + 1 if base in PER_TABLE else len(RUN_WIDE) + 2), name
