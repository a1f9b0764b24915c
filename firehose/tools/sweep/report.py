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

from firehose.run.exit_codes import describe
from firehose.strategies import baseline, strategy_named

BASELINE = baseline().name
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
    server_cost: dict | None = None
    """What the run cost the server per row (firehose.tools.server_cost.ServerCost.per_row)."""
    connections: int | None = None
    """Client connections of the writer, for a cell of the connection-scale axis (None: a cell of the grid)."""
    server_connections: int | None = None
    """Most client backends the server had at once during the run (sampled)."""

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
            return "timed out" if self.timed_out else f"failed (exit {describe(self.returncode)})"
        events, rows = self.summary["events"], f"{self.rows_per_s:,.0f}"
        return {
            "ok": rows,
            "lost rows": f"{rows} (lost {events['lost']:,})",
            "duplicates": f"{rows} ({events['duplicates']:,} duplicates)",
            "error": f"{rows} (exit {describe(self.returncode)})",
        }[self.status]


@dataclass
class SweepResult:
    """Every cell of a sweep, with the machine it ran on and how it was run."""

    cells: list[Cell]
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)
    """Strategy -> its C-client reference's run (firehose.tools.references), with `server_cost`."""

    @property
    def grid(self) -> list[Cell]:
        """The cells of the strategies x users table (not those of the connection-scale axis)."""
        return [cell for cell in self.cells if cell.connections is None]

    @property
    def scale(self) -> list[Cell]:
        return [cell for cell in self.cells if cell.connections is not None]

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(cell.strategy for cell in self.grid))

    @property
    def user_counts(self) -> list[int]:
        return sorted({cell.users for cell in self.grid})

    def cell(self, strategy: str, users: int) -> Cell | None:
        return next((c for c in self.grid if c.strategy == strategy and c.users == users), None)

    def database_ratios(self) -> dict[str, float]:
        """Each strategy's C-client reference over the baseline's: what the strategy is worth to the database."""
        base = self.references.get(BASELINE, {}).get("rows_per_s")
        if not base:
            return {}
        return {name: ref["rows_per_s"] / base for name, ref in self.references.items() if ref.get("rows_per_s")}


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
    counts, best = result.user_counts, best_rows_per_s(result.grid)
    with_ratio = bool(best.get(BASELINE))  # a naive run that wrote nothing in its cell gives no ratio
    database = result.database_ratios()
    header = ["strategy", *(f"{users} users" for users in counts), "best"] + (["ratio to naive"] if with_ratio else [])
    header += ["database's ratio"] if database else []
    lines = [_row(header), _row(["---"] + ["--:"] * (len(header) - 1))]
    for strategy in result.strategies:
        cells = [result.cell(strategy, users) for users in counts]
        row = [strategy, *(cell.label() if cell else "" for cell in cells), _rows(best.get(strategy))]
        if with_ratio:
            row.append(_ratio(best[strategy] / best[BASELINE]) if strategy in best else "")
        if database:
            row.append(_ratio(database.get(strategy)) + _via(result, strategy))
        lines.append(_row(row))
    return "\n".join(lines)


def _via(result: SweepResult, strategy: str) -> str:
    kind = result.references.get(strategy, {}).get("kind")
    return " (COPY)" if kind == "copy" and not strategy_named(strategy).own_reference else ""


COST_COLUMNS = (
    ("wal_bytes_per_row", "WAL B/row", 0),
    ("disk_bytes_per_row", "disk B/row", 0),
    ("server_cpu_us_per_row", "server CPU us/row", 0),
    ("commits_per_1k_rows", "commits /1k rows", 1),
    ("wal_syncs_per_1k_rows", "WAL syncs /1k rows", 1),
)


def render_cost_table(result: SweepResult) -> str | None:
    """Per strategy, what its best clean cell cost the server per row, beside its C-client reference's."""
    best: dict[str, Cell] = {}
    for cell in result.grid:
        if (
            cell.ok
            and cell.server_cost
            and (cell.strategy not in best or cell.rows_per_s > best[cell.strategy].rows_per_s)
        ):
            best[cell.strategy] = cell
    if not best:
        return None
    lines = [
        _row(["strategy", "users", *(label for _, label, _ in COST_COLUMNS)]),
        _row(["---"] + ["--:"] * (len(COST_COLUMNS) + 1)),
    ]
    for strategy in result.strategies:
        if (cell := best.get(strategy)) is None:
            continue
        reference = (result.references.get(strategy) or {}).get("server_cost") or {}
        values = [
            _cost(cell.server_cost.get(key), digits) + (f" / {_cost(reference.get(key), digits)}" if reference else "")
            for key, _, digits in COST_COLUMNS
        ]
        lines.append(_row([strategy, str(cell.users), *values]))
    return "\n".join(lines)


def render_probe_table(result: SweepResult) -> str | None:
    """The migration-lock probe of each cell that ran one: failures and lock waits."""
    probed = [cell for cell in result.cells if cell.summary and cell.summary.get("migration_probe")]
    if not probed:
        return None
    lines = [
        _row(["strategy", "users", "attempts", "failed", "connect p50 ms", "lock wait p50 ms", "p95 ms", "max ms"]),
        _row(["---"] + ["--:"] * 7),
    ]
    for cell in probed:
        probe = cell.summary["migration_probe"]
        wait, connect = probe["lock_wait_ms"], probe["connect_ms"]
        lines.append(
            _row([cell.strategy + (f" ({cell.connections} connections)" if cell.connections else ""),
                  str(cell.users), str(probe["attempts"]), str(probe["failed"]), _cost(connect["p50"], 1),
                  _cost(wait["p50"], 1), _cost(wait["p95"], 1), _cost(wait["max"], 1)])
        )  # fmt: skip
    return "\n".join(lines)


def render_scale_table(result: SweepResult) -> str | None:
    """rows/s and server connections used at each client-connection count, per strategy of the scale axis."""
    cells = result.scale
    if not cells:
        return None
    counts = sorted({cell.connections for cell in cells})
    strategies = list(dict.fromkeys(cell.strategy for cell in cells))
    lines = [
        _row(["strategy", *(f"{count} client connections" for count in counts)]),
        _row(["---"] + ["--:"] * len(counts)),
    ]
    for strategy in strategies:
        row = [strategy]
        for count in counts:
            cell = next((c for c in cells if c.strategy == strategy and c.connections == count), None)
            if cell is None:
                row.append("")
                continue
            used = "" if cell.server_connections is None else f", {cell.server_connections} server connections"
            row.append(f"{cell.label()}{used}")
        lines.append(_row(row))
    return "\n".join(lines)


def render_ratio_table(result: SweepResult) -> str | None:
    """Each strategy's ratio to naive at each user count; None when naive has no clean cell."""
    ratios = ratios_to_baseline(result.grid)
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
    if result.references:
        parts.append(
            "database's ratio: each strategy's C-client reference (pgbench running its statements, `psql \\copy` for "
            "COPY and the paths that end in COPY) over naive's, with the same connections, on the same server: what "
            "the strategy is worth to the database, without our client. References: "
            + ", ".join(
                f"{name} {ref['rows_per_s']:,.0f} rows/s ({ref['clients']} connections, rows counted "
                f"{ref['rows_counted']:,} of {ref['rows_claimed']:,} claimed)"
                for name, ref in result.references.items()
                if _via(result, name) == ""
            )
            + "."
        )
    if (ratios := render_ratio_table(result)) is not None:
        parts += ["Ratio to naive at each user count:", ratios]
    if (costs := render_cost_table(result)) is not None:
        parts += [
            "What each strategy cost the server per row at its best cell (ours / its C-client reference): WAL bytes, "
            "bytes on disk (heap, TOAST, indexes), the server's CPU (all its processes, from /proc), commits and WAL "
            "fsyncs per 1,000 rows:",
            costs,
        ]
    if (scale := render_scale_table(result)) is not None:
        parts += [
            "Connection scale: the batched INSERTs with N client connections, directly and through pgBouncer "
            f"(transaction pooling, {result.settings.get('bouncer_pool_size', '?')} server connections); "
            f"{result.settings.get('scale_users', '?')} engineers each; server connections = most client backends "
            "seen at once:",
            scale,
        ]
    if (probe := render_probe_table(result)) is not None:
        parts += [
            "Migration-lock probe (LOCK TABLE ... ACCESS EXCLUSIVE under lock_timeout, on its own connection):",
            probe,
        ]
    marked = [cell for cell in result.cells if not cell.ok]
    if marked:
        parts.append(
            "Marked cells:\n"
            + "\n".join(
                f"- {c.strategy} at {c.users} users"
                + (f", {c.connections} connections" if c.connections else "")
                + f": {c.status} (exit {describe(c.returncode)}), see {c.log}"
                for c in marked
            )
        )
    return "\n\n".join(parts) + "\n"


def render_csv(result: SweepResult) -> str:
    """One row per cell: status, rows/s, ratio to naive and the reconciliation's figures."""
    ratios = ratios_to_baseline(result.grid)
    columns = [
        "strategy", "users", "status", "rows_per_s", "ratio_to_naive", "mb_per_s", "generated", "in_database",
        "lost", "duplicates", "failed", "quarantined", "elapsed_s", "returncode", "log", "connections",
        "server_connections", *(key for key, _, _ in COST_COLUMNS), "probe_attempts", "probe_failed",
        "probe_lock_wait_max_ms",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for cell in result.cells:
        row = {"strategy": cell.strategy, "users": cell.users, "status": cell.status, "returncode": cell.returncode}
        row |= {"ratio_to_naive": _round(ratios.get((cell.strategy, cell.users)), 3), "log": cell.log}
        row |= {"connections": cell.connections, "server_connections": cell.server_connections}
        row |= {key: _round(value, 2) for key, value in (cell.server_cost or {}).items() if key in dict(_COSTS)}
        if cell.summary is not None and (probe := cell.summary.get("migration_probe")):
            row |= {"probe_attempts": probe["attempts"], "probe_failed": probe["failed"]}
            row["probe_lock_wait_max_ms"] = _round(probe["lock_wait_ms"]["max"], 1)
        if cell.summary is not None:
            events, writes = cell.summary["events"], cell.summary["writes"]
            row |= {
                key: events[key] for key in ("generated", "in_database", "lost", "duplicates", "failed", "quarantined")
            }
            row |= {"rows_per_s": _round(writes["rows_per_s"], 1), "mb_per_s": _round(writes["mb_per_s"], 2)}
            row["elapsed_s"] = _round(cell.summary["run"]["elapsed_s"], 2)
        writer.writerow(row)
    return out.getvalue()


_COSTS = [(key, label) for key, label, _ in COST_COLUMNS]


def render_json(result: SweepResult) -> str:
    """Everything: the sweep's settings, the machine, and every cell with its full summary."""
    ratios = ratios_to_baseline(result.grid)
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
            "connections": cell.connections,
            "server_connections": cell.server_connections,
            "server_cost": cell.server_cost,
            "summary": cell.summary,
        }
        for cell in result.cells
    ]
    document = {"sweep": result.settings, "machine": result.machine, "references": result.references, "cells": cells}
    return json.dumps(document, indent=2) + "\n"


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


def _cost(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
