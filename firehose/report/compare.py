"""Runs side by side: each figure of two or more runs (or groups of runs under one label), with its delta to the
first, and a warning wherever what makes runs comparable differs (settings, machine, version, population).

A group of several runs shows each figure's median and min-max; a delta between groups whose spreads overlap is
marked "within spread": it does not exceed the noise the runs themselves show.
"""

from __future__ import annotations

from dataclasses import dataclass

from firehose.report.figures import PER_QUERY, Spread, figure_order, figures, group_figures, higher_is_better
from firehose.report.store import StoredRun

SHOWN_PER_TABLE = ("rows_per_s", "mb_per_s", "freshness_p99_ms")
SHOWN_PER_QUERY = ("query_p95_ms",)
"""Per table and per query, the figures a comparison shows (the others stay in the JSON and in --check)."""
COMPARABLE = (
    "classes",
    "users",
    "population",
    "traces_per_engineer",
    "continuous",
    "run_time",
    "analysts",
    "engineer_rate",
    "layout",
    "partition_interval",
    "timestamps",
    "time_scale",
    "history",
    "pg_settings",
    "jsonb_compression",
    "indexes",
    "server",
    "machine",
    "firehose",
)
"""The context fields (the summary's "context") that must match for a comparison to compare like with like."""

OVERVIEW_COLUMNS = (
    "ref",
    "started_at",
    "label",
    "classes",
    "users",
    "rows_per_s",
    "mb_per_s",
    "freshness_p99_ms",
    "lost",
    "verdict",
    "checks",
)


@dataclass(frozen=True)
class Group:
    """A column of the comparison: one run, or the runs under one label."""

    name: str
    runs: list[StoredRun]


def comparison(groups: list[Group]) -> dict:
    """Each shown figure per group (median, min, max), its delta to the first group, and the warnings."""
    spreads = [group_figures([run.summary for run in group.runs]) for group in groups]
    names = sorted({name for spread in spreads for name in spread if shown(name)}, key=figure_order)
    rows = []
    for name in names:
        values = [spread.get(name) for spread in spreads]
        rows.append(
            {
                "figure": name,
                "better": "higher" if higher_is_better(name) else "lower",
                "values": [None if value is None else vars(value) for value in values],
                "deltas": [None, *(delta(name, values[0], value) for value in values[1:])],
            }
        )
    return {
        "groups": [{"name": group.name, "runs": [run.ref for run in group.runs]} for group in groups],
        "rows": rows,
        "warnings": warnings(groups),
    }


def shown(name: str) -> bool:
    if "[" not in name:
        return name.split("[", 1)[0] not in PER_QUERY
    base = name.split("[", 1)[0]
    return base in SHOWN_PER_TABLE or base in SHOWN_PER_QUERY


def delta(name: str, first: Spread | None, other: Spread | None) -> dict | None:
    """`other` against `first`: the difference of the medians, in units and percent, whether it is better, and
    whether it exceeds the spread (the two groups' min-max ranges do not overlap; None unless both groups have
    several runs: one run has no spread)."""
    if first is None or other is None:
        return None
    difference = other.median - first.median
    return {
        "abs": difference,
        "pct": None if first.median == 0 else 100 * difference / first.median,
        "better": difference != 0 and (difference > 0) == higher_is_better(name),
        "beyond_spread": (other.low > first.high or other.high < first.low)
        if first.runs > 1 and other.runs > 1
        else None,
    }


def warnings(groups: list[Group]) -> list[str]:
    """One line per context field whose values differ between (or within) the groups compared."""
    found = [
        f"{run.ref} has no context (a summary from before it was kept): its settings are not compared"
        for group in groups
        for run in group.runs
        if not run.context
    ]
    for key in COMPARABLE:
        seen: dict[str, dict[str, list[str]]] = {}
        for group in groups:
            for run in (run for run in group.runs if run.context):
                for field, value in flatten(key, run.context.get(key)).items():
                    text = "?" if value is None else str(value)
                    if run.ref not in seen.setdefault(field, {}).setdefault(text, []):
                        seen[field][text].append(f"{group.name}" if len(group.runs) == 1 else run.ref)
        for field, values in seen.items():
            if len(values) > 1:
                found.append(
                    f"{field} differs: " + "; ".join(f"{value} ({', '.join(where)})" for value, where in values.items())
                )
    return found


def flatten(key: str, value: object) -> dict[str, object]:
    """`{"server": {"version": ..., "settings": {...}}}` as `server.version`, `server.settings.shared_buffers`."""
    if isinstance(value, dict):
        return {name: item for child, inner in value.items() for name, item in flatten(f"{key}.{child}", inner).items()}
    if isinstance(value, list):
        return {key: ", ".join(map(str, value)) or "none"}
    return {key: value}


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"


def cell(value: dict | None) -> str:
    """A group's figure: its median, with min-max when several runs gave it."""
    if value is None:
        return "-"
    if value["runs"] > 1:
        return f"{_number(value['median'])} [{_number(value['low'])}-{_number(value['high'])}]"
    return _number(value["median"])


def delta_text(change: dict | None) -> str:
    if change is None:
        return ""
    pct = "" if change["pct"] is None else f" {change['pct']:+.1f}%"
    verdict = "better" if change["better"] else ("same" if change["abs"] == 0 else "worse")
    spread = {None: "", True: ", beyond spread", False: ", within spread"}[change["beyond_spread"]]
    return f"{_signed(change['abs'])}{pct} ({verdict}{spread})"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + _number(abs(value))


def render(result: dict) -> str:
    """The comparison as a text table: one column per group (the second and later with their delta)."""
    header = ["figure"]
    for i, group in enumerate(result["groups"]):
        runs = len(group["runs"])
        header.append(f"{group['name']}" + (f" ({runs} runs)" if runs > 1 else "") + (" (delta to first)" if i else ""))
    table = [header]
    for row in result["rows"]:
        line = [row["figure"]]
        for value, change in zip(row["values"], row["deltas"], strict=True):
            line.append(cell(value) + (f"  {delta_text(change)}" if change else ""))
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for group in result["groups"]:
        lines.append(f"{group['name']}: {', '.join(group['runs'])}")
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    return "\n".join(lines)


def overview(run: StoredRun) -> dict:
    """A run's line in `firehose runs` and on the Runs page."""
    found = figures(run.summary)
    checks = run.summary.get("checks") or []
    return {
        "ref": run.ref,
        "started_at": run.started_at,
        "label": run.label,
        "classes": " ".join(run.classes),
        "users": run.context.get("users_total"),
        "rows_per_s": round(found["rows_per_s"], 1),
        "mb_per_s": round(found["mb_per_s"], 2),
        "freshness_p99_ms": found.get("freshness_p99_ms"),
        "lost": found["lost"],
        "verdict": run.summary["run"]["verdict"],
        "checks": f"{sum(c['passed'] for c in checks)}/{len(checks)} passed" if checks else "",
    }
