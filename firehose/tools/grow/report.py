"""The report of `firehose grow`: per layout its steps (write rate, I/O) and the queries' p95 at each size, the
figures the docs quote (rows/s at the start, past shared_buffers, past RAM; the dependency map at the largest
size), one CSV row per step, and the chart (both layouts on it)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from firehose.run.disk_guard import pretty

CHART_SIZE_IN = (13, 5)
CHART_DPI = 120
GB = 1024**3
MB = 1024**2
LINE_STYLES = ("-", "--", ":", "-.")
"""One per layout, in the order they ran."""


def landmarks(document: dict, result: dict) -> dict:
    """The steps the docs quote: the first, the first past shared_buffers, the first past RAM, and the last."""
    steps = result["steps"]
    machine = document["machine"]

    def first_past(size: int) -> dict | None:
        return next((step for step in steps if step["size_bytes"] > size), None)

    return {
        "start": steps[0] if steps else None,
        "past shared_buffers": first_past(machine["shared_buffers_bytes"]),
        "past RAM": first_past(machine["ram_bytes"]),
        "largest": steps[-1] if steps else None,
    }


def render_markdown(document: dict) -> str:
    """grow.md: the settings, then per layout its landmarks, its steps and its queries' p95 at each size."""
    settings, machine = document["settings"], document["machine"]
    lines = [
        "# firehose grow",
        "",
        f"{document['date']}, {machine.get('cores', '?')} cores, {pretty(machine['ram_bytes'])} RAM, PostgreSQL "
        f"{machine.get('postgres_version', '?')} (shared_buffers {pretty(machine['shared_buffers_bytes'])}); "
        f"{settings['strategy']} x {settings['users']} writing with `--timestamps live --time-scale "
        f"{settings['time_scale']:g}`, to {pretty(settings['to_bytes'])} of tables and indexes, a step every "
        f"{pretty(settings['step_bytes'])}; schema/indexes.sql: {'yes' if settings['indexes'] else 'no'}; at each "
        f"step the writers go on while an analyst per query runs it for {settings['burst_s']} s, on "
        f"{_window(settings['window_s'])} ending at the newest data ({_window(settings['dependency_window_s'])} for "
        "service_dependency_map).",
        "",
    ]
    for layout, result in document["layouts"].items():
        lines += [f"## {layout}", "", f"Stopped: {result['stopped']}.", ""]
        if result["steps"]:
            lines += [*_landmarks_table(document, result), "", *_steps_table(result), "", *_queries_table(result), ""]
        writer = result.get("writer") or {}
        events = writer.get("events") or {}
        if events:
            lines += [
                f"The writing run: exit code {writer['exit_code']}, {events.get('in_database', 0):,} rows in the "
                f"database, {events.get('lost', 0):,} lost.",
                "",
            ]
    return "\n".join(lines)


def _landmarks_table(document: dict, result: dict) -> list[str]:
    lines = [
        "| where | size | rows/s writing | rows/s during the burst | dependency map p95 ms (executions) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, step in landmarks(document, result).items():
        if step is None:
            lines.append(f"| {name} | not reached | | | |")
            continue
        dependency = step["burst"]["queries"].get("service_dependency_map", {})
        lines.append(
            f"| {name} | {pretty(step['size_bytes'])} | {_count(step['writing']['rows_per_s'])} "
            f"| {_count(step['burst']['rows_per_s'])} | {_query_cell(dependency)} |"
        )
    return lines


def _steps_table(result: dict) -> list[str]:
    lines = [
        "| size | tables / indexes | partitions | data spans h | rows/s writing | WAL MB | checkpoints timed / "
        "requested | hit ratio | MB read | rows/s during the burst | hit ratio | MB read |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for step in result["steps"]:
        writing, burst = step["writing"], step["burst"]
        lines.append(
            f"| {pretty(step['size_bytes'])} | {pretty(step['table_bytes'])} / {pretty(step['index_bytes'])} "
            f"| {step['partitions']} | {_count(step['data_span_h'])} | {_count(writing['rows_per_s'])} "
            f"| {writing['wal_bytes'] / MB:,.0f} | {writing['checkpoints_timed']} / {writing['checkpoints_requested']} "
            f"| {_ratio(writing['hit_ratio'])} | {writing['read_bytes'] / MB:,.0f} | {_count(burst['rows_per_s'])} "
            f"| {_ratio(burst['hit_ratio'])} | {burst['read_bytes'] / MB:,.0f} |"
        )
    return lines


def _queries_table(result: dict) -> list[str]:
    names = list(result["steps"][0]["burst"]["queries"])
    lines = [
        "Each query's p95 in ms (executions in the burst; `cut`: executions the burst's end cut, not timed):",
        "",
        "| size | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for step in result["steps"]:
        queries = step["burst"]["queries"]
        cells = " | ".join(_query_cell(queries[name]) for name in names)
        lines.append(f"| {pretty(step['size_bytes'])} | {cells} |")
    return lines


def _query_cell(query: dict) -> str:
    if not query:
        return "-"
    cut = f", {query['cut']} cut" if query.get("cut") else ""
    failed = f", failed: {query['error']}" if query.get("failures") else ""
    p95 = "-" if query["p95_ms"] is None else f"{query['p95_ms']:,.1f}"
    return f"{p95} ({query['count']:,}{cut}{failed})"


def render_csv(document: dict) -> str:
    """grow.csv: one row per layout and step: sizes, both phases' figures, each query's count, p50 and p95."""
    out = io.StringIO()
    writer = csv.writer(out)
    header_written = False
    for layout, result in document["layouts"].items():
        for index, step in enumerate(result["steps"], 1):
            row = {
                "layout": layout,
                "step": index,
                "size_bytes": step["size_bytes"],
                "table_bytes": step["table_bytes"],
                "index_bytes": step["index_bytes"],
                "partitions": step["partitions"],
                "data_span_h": step["data_span_h"],
                **{f"writing_{key}": value for key, value in step["writing"].items()},
                **{f"burst_{key}": value for key, value in step["burst"].items() if key != "queries"},
            }
            for name, query in step["burst"]["queries"].items():
                row |= {f"{name}_{key}": query[key] for key in ("count", "cut", "p50_ms", "p95_ms")}
            if not header_written:
                writer.writerow(row)
                header_written = True
            writer.writerow(row.values())
    return out.getvalue()


def render_chart(document: dict, path: Path) -> None:
    """A PNG of two panels against the tables' size: the writers' rows/s, and each query's p95 (log scale); one
    line style per layout, shared_buffers and the machine's RAM marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    figure = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    rates, latencies = figure.subplots(1, 2)
    colors: dict[str, str] = {}
    for style, (layout, result) in zip(LINE_STYLES, document["layouts"].items(), strict=False):
        steps = result["steps"]
        sizes = [step["size_bytes"] / GB for step in steps]
        rates.plot(sizes, [_value(step["writing"]["rows_per_s"]) for step in steps], style, marker="o", label=layout)
        for name in steps[0]["burst"]["queries"] if steps else ():
            p95 = [_value(step["burst"]["queries"][name]["p95_ms"]) for step in steps]
            label = None if name in colors else name  # each query once: the line style says the layout
            (line,) = latencies.plot(sizes, p95, style, marker=".", color=colors.get(name), label=label)
            colors.setdefault(name, line.get_color())
    machine = document["machine"]
    for axes in (rates, latencies):
        for size, label in ((machine["shared_buffers_bytes"], "shared_buffers"), (machine["ram_bytes"], "RAM")):
            axes.axvline(size / GB, color="gray", linestyle=":")
            axes.annotate(label, (size / GB, 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                          ha="right", fontsize=8, color="gray")  # fmt: skip
        axes.set_xlabel("tables and indexes, GB")
        axes.grid(alpha=0.3)
    rates.set_ylabel("rows/s written (between the analysts' bursts)")
    rates.set_ylim(bottom=0)
    rates.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    latencies.set_yscale("log")
    latencies.set_ylabel("query p95, ms (log; the line style is the layout's, as on the left)")
    for axes in (rates, latencies) if colors else ():
        axes.legend(fontsize=7)
    settings = document["settings"]
    figure.suptitle(
        f"firehose grow: {settings['strategy']} x {settings['users']}, {document['date'][:10]}, "
        f"{machine.get('cores', '?')} cores, {pretty(machine['ram_bytes'])} RAM, indexes.sql: "
        f"{'yes' if settings['indexes'] else 'no'}"
    )
    figure.tight_layout()
    figure.savefig(path)


def _value(value: float | None) -> float:
    """A figure to plot: a missing one (no execution finished, a phase too short) leaves a gap."""
    return float("nan") if value is None else value


def _window(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds} s"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
