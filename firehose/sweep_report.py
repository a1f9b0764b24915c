"""The results of a sweep: its cells, and the Markdown table, CSV, JSON and chart made of them.

Pure functions of a `SweepResult` (no database, no Locust), so the formatting is tested on hand-made
summaries. A cell counts toward its strategy's best and its ratios only when it is clean: the run
exited 0 and its reconciliation found no lost rows and no duplicates.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = "NaiveEngineer"
"""The strategy every ratio is taken against, as in the reference benchmark."""
CHART_SIZE_IN = (8, 5)
CHART_DPI = 120
LOG_SCALE_SPAN = 10
"""User counts spanning this factor or more (10 to 100, or to 10,000) are drawn on a log axis, evenly apart."""


@dataclass
class Cell:
    """One strategy at one user count: its run's exit code and summary (None when it wrote none)."""

    strategy: str
    users: int
    returncode: int
    summary: dict | None = None
    timed_out: bool = False
    log: str = ""
    """The run's output, relative to the sweep's directory."""
    command: list[str] = field(default_factory=list)
    """The Locust command line, its DSNs redacted."""

    @property
    def status(self) -> str:
        """ok, or why the cell is marked: timed out, failed, lost rows, duplicates, error (exit code)."""
        if self.summary is None:
            return "timed out" if self.timed_out else "failed"
        events = self.summary["events"]
        if events["lost"]:
            return "lost rows"
        if events["duplicates"]:
            return "duplicates"
        return "ok" if self.returncode == 0 else "error"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def rows_per_s(self) -> float | None:
        return None if self.summary is None else self.summary["writes"]["rows_per_s"]

    def label(self) -> str:
        """The cell as the Markdown table shows it: rows/s, with what went wrong when something did."""
        if self.summary is None:
            return "timed out" if self.timed_out else f"failed (exit {self.returncode})"
        events, rows = self.summary["events"], f"{self.rows_per_s:,.0f}"
        return {
            "ok": rows,
            "lost rows": f"{rows} (lost {events['lost']:,})",
            "duplicates": f"{rows} ({events['duplicates']:,} duplicates)",
            "error": f"{rows} (exit {self.returncode})",
        }[self.status]


@dataclass
class SweepResult:
    """Every cell of a sweep, with the machine it ran on and how it was run."""

    cells: list[Cell]
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(cell.strategy for cell in self.cells))

    @property
    def user_counts(self) -> list[int]:
        return sorted({cell.users for cell in self.cells})

    def cell(self, strategy: str, users: int) -> Cell | None:
        return next((c for c in self.cells if c.strategy == strategy and c.users == users), None)


def ratios_to_baseline(cells: list[Cell]) -> dict[tuple[str, int], float]:
    """Each clean cell's rows/s over the baseline's at the same user count (where the baseline is clean)."""
    baseline = {cell.users: cell.rows_per_s for cell in cells if cell.strategy == BASELINE and cell.ok}
    return {
        (cell.strategy, cell.users): cell.rows_per_s / baseline[cell.users]
        for cell in cells
        if cell.ok and baseline.get(cell.users)
    }


def best_rows_per_s(cells: list[Cell]) -> dict[str, float]:
    """Each strategy's highest rows/s over its clean cells (a strategy with none has no entry)."""
    best: dict[str, float] = {}
    for cell in cells:
        if cell.ok:
            best[cell.strategy] = max(best.get(cell.strategy, 0.0), cell.rows_per_s)
    return best


def render_table(result: SweepResult) -> str:
    """Rows/s per strategy (rows) and user count (columns), each strategy's best, and its best's ratio to naive."""
    counts, best = result.user_counts, best_rows_per_s(result.cells)
    with_ratio = BASELINE in best
    header = ["strategy", *(f"{users} users" for users in counts), "best"] + (["ratio to naive"] if with_ratio else [])
    lines = [_row(header), _row(["---"] + ["--:"] * (len(header) - 1))]
    for strategy in result.strategies:
        cells = [result.cell(strategy, users) for users in counts]
        row = [strategy, *(cell.label() if cell else "" for cell in cells), _rows(best.get(strategy))]
        if with_ratio:
            row.append(_ratio(best[strategy] / best[BASELINE]) if strategy in best else "")
        lines.append(_row(row))
    return "\n".join(lines)


def render_ratio_table(result: SweepResult) -> str | None:
    """Each strategy's ratio to naive at each user count; None when naive has no clean cell."""
    ratios = ratios_to_baseline(result.cells)
    if not ratios:
        return None
    counts = result.user_counts
    lines = [_row(["strategy", *(f"{users} users" for users in counts)]), _row(["---"] + ["--:"] * len(counts))]
    for strategy in result.strategies:
        lines.append(_row([strategy, *(_ratio(ratios.get((strategy, users))) for users in counts)]))
    return "\n".join(lines)


def render_markdown(result: SweepResult) -> str:
    """The whole report: what ran where, the rows/s table, the ratios, and the marked cells."""
    machine, settings = result.machine, result.settings
    parts = [
        "# firehose sweep",
        f"{machine.get('cores', '?')} cores, PostgreSQL {machine.get('postgres_version', '?')}; each cell a "
        f"`--continuous` headless run of {settings.get('duration', '?')} into emptied tables. rows/s = rows "
        "written per second across spans, metrics and logs; marked cells count toward neither best nor ratios.",
        render_table(result),
    ]
    if (ratios := render_ratio_table(result)) is not None:
        parts += ["Ratio to naive at each user count:", ratios]
    marked = [cell for cell in result.cells if not cell.ok]
    if marked:
        parts.append(
            "Marked cells:\n"
            + "\n".join(
                f"- {c.strategy} at {c.users} users: {c.status} (exit {c.returncode}), see {c.log}" for c in marked
            )
        )
    return "\n\n".join(parts) + "\n"


def render_csv(result: SweepResult) -> str:
    """One row per cell: status, rows/s, ratio to naive and the reconciliation's figures."""
    ratios = ratios_to_baseline(result.cells)
    columns = [
        "strategy", "users", "status", "rows_per_s", "ratio_to_naive", "mb_per_s", "generated", "in_database",
        "lost", "duplicates", "failed", "quarantined", "elapsed_s", "returncode", "log",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for cell in result.cells:
        row = {"strategy": cell.strategy, "users": cell.users, "status": cell.status, "returncode": cell.returncode}
        row |= {"ratio_to_naive": _round(ratios.get((cell.strategy, cell.users)), 3), "log": cell.log}
        if cell.summary is not None:
            events, writes = cell.summary["events"], cell.summary["writes"]
            row |= {
                key: events[key] for key in ("generated", "in_database", "lost", "duplicates", "failed", "quarantined")
            }
            row |= {"rows_per_s": _round(writes["rows_per_s"], 1), "mb_per_s": _round(writes["mb_per_s"], 2)}
            row["elapsed_s"] = _round(cell.summary["run"]["elapsed_s"], 2)
        writer.writerow(row)
    return out.getvalue()


def render_json(result: SweepResult) -> str:
    """Everything: the sweep's settings, the machine, and every cell with its full summary."""
    ratios = ratios_to_baseline(result.cells)
    cells = [
        {
            "strategy": cell.strategy,
            "users": cell.users,
            "status": cell.status,
            "returncode": cell.returncode,
            "rows_per_s": cell.rows_per_s,
            "ratio_to_naive": ratios.get((cell.strategy, cell.users)),
            "log": cell.log,
            "command": cell.command,
            "summary": cell.summary,
        }
        for cell in result.cells
    ]
    return json.dumps({"sweep": result.settings, "machine": result.machine, "cells": cells}, indent=2) + "\n"


def render_chart(result: SweepResult, path: Path) -> None:
    """A PNG line chart of rows/s against users, one line per strategy; marked cells are crosses off the lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator, StrMethodFormatter

    figure = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    counts = result.user_counts
    any_marked = False
    for strategy in result.strategies:
        cells = [result.cell(strategy, users) for users in counts]
        clean = [cell.rows_per_s if cell is not None and cell.ok else float("nan") for cell in cells]
        (line,) = axes.plot(counts, clean, marker="o", label=strategy)
        marked = [(c.users, c.rows_per_s) for c in cells if c is not None and not c.ok and c.rows_per_s is not None]
        if marked:
            axes.scatter(*zip(*marked, strict=True), marker="x", color=line.get_color())
            any_marked = True
    if any_marked:  # one legend entry for the crosses of every strategy
        axes.scatter([], [], marker="x", color="gray", label="marked: lost rows, duplicates or exit code")
    if counts[-1] >= LOG_SCALE_SPAN * counts[0]:
        axes.set_xscale("log")
        axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticks(counts, [str(users) for users in counts])
    axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.set_xlabel("simulated engineers (Locust users)")
    axes.set_ylabel("rows/s (spans + metrics + logs)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    machine = result.machine
    axes.set_title(
        f"firehose sweep: {machine.get('cores', '?')} cores, PostgreSQL {machine.get('postgres_version', '?')}, "
        f"{result.settings.get('duration', '?')} per cell"
    )
    figure.tight_layout()
    figure.savefig(path)


def write_results(result: SweepResult, out: Path) -> dict[str, Path]:
    """The four result files of a sweep, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"sweep.{kind}" for kind in ("md", "csv", "json", "png")}
    paths["md"].write_text(render_markdown(result))
    paths["csv"].write_text(render_csv(result))
    paths["json"].write_text(render_json(result))
    render_chart(result, paths["png"])
    return paths


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rows(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
