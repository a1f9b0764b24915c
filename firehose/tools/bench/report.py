"""`firehose bench`'s results as Markdown: one table of headline figures, then each part measured, in this order."""

from __future__ import annotations

from firehose.tools.bench import crash_cost, layouts
from firehose.tools.bench.figures import END_TO_END, Figure
from firehose.tools.references import RAW_CONNECTIONS


def render_markdown(results: dict) -> str:
    """The parts of `results` that were measured, as Markdown: the headline table, then each section."""
    machine = results["machine"]
    settings = ", ".join(f"{name}={value}" for name, value in machine["settings"].items())
    lines = [
        f"## firehose bench, {machine['date']}",
        "",
        f"{machine['cores']} cores, PostgreSQL {machine['postgresql']} ({settings}; {machine.get('layout', 'plain')} "
        f"tables), Python {machine['python']}; "
        f"median of {machine['repetitions']} (min-max).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for part, render in TABLE_ROWS.items():
        if data := results.get(part):
            lines += render(data)
    for part, render in SECTIONS.items():
        if data := results.get(part):
            lines += ["", *render(data)]
    return "\n".join(lines) + "\n"


def _generator_rows(generator: dict) -> list[str]:
    return [
        f"| generator, events/s on one core | {_fig(generator['events_per_s'])} |",
        f"| generator vs dict + orjson per event | {generator['ratio_to_dict_orjson']:.1f}x |",
        f"| generator vs Faker per event | {generator['ratio_to_faker']:.0f}x |",
    ]


def _end_to_end_rows(e2e: dict) -> list[str]:
    return [
        f"| raw `psql \\copy`, {RAW_CONNECTIONS} connections, rows/s ({e2e['rows']:,} rows) "
        f"| {_fig(e2e['raw_copy_rows_per_s'])} |",
        f"| {END_TO_END} through Locust, rows/s (same rows) | {_fig(e2e['copy_engineer_rows_per_s'])} |",
        f"| **end to end / raw \\copy** | **{e2e['ratio']:.2f}** |",
    ]


def _profiles_lines(profiles: dict) -> list[str]:
    lines: list[str] = []
    for name, profile in profiles.items():
        lines += [*([""] if lines else []), f"**{name}**: " + _profile_lines(profile)[0], *_profile_lines(profile)[1:]]
    return lines


def _lever_lines(levers: dict) -> list[str]:
    lines = [f"Levers ({END_TO_END}, one change at a time, vs the end-to-end figure above):", "",
             "| lever | rows/s | effect |", "|---|---|---|"]  # fmt: skip
    for label, data in levers.items():
        if "skipped" in data:
            lines.append(f"| {label} | skipped: {data['skipped']} | |")
        else:
            lines.append(f"| {label} | {_fig(data)} | {data['effect']:+.0%} |")
    return lines


def _fig(data: dict) -> str:
    return Figure(data["values"]).text()


def _strategy_lines(strategies: dict) -> list[str]:
    """Ours vs the C client per strategy, the goal, and what each costs the server per row."""
    length = (
        f"{strategies['duration']} each, --continuous"
        if strategies.get("traces_per_user") is None
        else f"{strategies['traces_per_user']} traces each, a fixed volume"
    )
    lines = [
        f"Strategies against their C-client references ({strategies['users']} users, {length}; the reference with "
        "the strategy's connection count, in the same run):",
        "",
        "| strategy | ours, rows/s | reference | reference, rows/s | ours / reference | goal | client us/row |",
        "|---|--:|---|--:|--:|---|--:|",
    ]
    for name, data in strategies["rows_per_s"].items():
        ratio, goal = strategies["ratio_to_reference"][name], strategies["goal"][name]
        verdict = "met" if ratio >= goal else f"short by {goal - ratio:.2f}"
        cpu = strategies["client_cpu_us_per_row"].get(name)
        lines.append(
            f"| {name} | {_fig(data)} | {strategies['reference'][name]} | "
            f"{_fig(strategies['reference_rows_per_s'][name])} | **{ratio:.2f}** | >= {goal:.2f}: {verdict} | "
            f"{'' if cpu is None else f'{cpu:.0f}'} |"
        )
    lines += [
        "",
        "What each costs the server per row (medians; ours / the reference): WAL bytes, bytes on disk (heap, TOAST,",
        "indexes), the server's CPU (all its processes, from /proc), commits and WAL fsyncs per 1,000 rows:",
        "",
        "| strategy | WAL B/row | disk B/row | server CPU us/row | commits /1k rows | WAL syncs /1k rows |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, sides in strategies["server_cost"].items():
        ours, ref = sides["ours"], sides.get("reference") or {}
        cells = [
            f"{_cost(ours.get(key), digits)} / {_cost(ref.get(key), digits)}"
            for key, digits in (("wal_bytes_per_row", 0), ("disk_bytes_per_row", 0), ("server_cpu_us_per_row", 0),
                                ("commits_per_1k_rows", 1), ("wal_syncs_per_1k_rows", 1))
        ]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, sides in strategies["server_cost"].items():  # a strategy through Redis: that server's CPU too
        if redis_cpu := sides.get("ours", {}).get("redis_cpu_us_per_row"):
            lines += [
                "",
                f"{name}'s Redis (append-only file, fsynced per write) spent {redis_cpu:.1f} us of CPU per row.",
            ]
    return lines


def _cost(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _profile_lines(profile: dict) -> list[str]:
    lines = [
        f"Client CPU per row (in-process, {profile['rows']:,} rows at {profile['rows_per_s']:,.0f} "
        f"rows/s): **{profile['client_cpu_us_per_row']:.1f} us/row**, "
        f"{profile['client_cpu_share_of_a_core']:.0%} of one core:",
        "",
        "| step | us/row |",
        "|---|---|",
    ]
    lines += [f"| {label} | {us:.1f} |" for label, us in profile["us_per_row"].items()]
    if "redis_cpu_us_per_row" in profile:
        lines += [
            "",
            f"Beside it, the servers' own CPU per row (user + system time from /proc, same run): Redis "
            f"{profile['redis_cpu_us_per_row']:.1f} us/row, PostgreSQL {_cost(profile['server_cpu_us_per_row'], 1)} "
            "us/row.",
        ]
    if "spool_chunks" in profile:
        lines += [
            "",
            f"The spool: {profile['spool_chunks']:,} chunks of {profile['rows_per_chunk']:,.0f} rows on average, "
            f"each {profile['spool_ms_per_chunk']:,.1f} ms from its spooler taking it to its fsync's end (wall "
            "time an engineer waits, not CPU).",
        ]
    return lines


TABLE_ROWS = {"generator": _generator_rows, "end_to_end": _end_to_end_rows, "layouts": layouts.table_rows}
"""Parts whose figures are rows of the headline table, in this order."""
SECTIONS = {
    "client_profile": _profile_lines,
    "strategies": _strategy_lines,
    "profiles": _profiles_lines,
    "levers": _lever_lines,
    "layouts": layouts.markdown_lines,
    "crash_cost": crash_cost.markdown_lines,
}
"""Parts rendered as sections of their own after the table, in this order: a new part adds its renderer here."""
