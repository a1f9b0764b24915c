"""`firehose retention`'s Markdown: the layouts side by side, one row per figure."""

from __future__ import annotations

from firehose.run.disk_guard import pretty


def render_markdown(result: dict) -> str:
    """The side-by-side table, the checks, and what each figure means."""
    layouts = result["layouts"]
    settings = result["settings"]
    names = list(layouts)
    lines = [
        "# firehose retention",
        "",
        f"Prefill {settings['prefill']} over {settings['history']} ({settings['partition_interval']} partitions), "
        f"keep {settings['keep']}; {settings['users']} COPY engineers (`--timestamps live`) write throughout, the "
        f"migration probe every {settings['probe_s']:g} s.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, value in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(value, layouts[name]) for name in names) + " |")
    lines += ["", "## Checks", ""]
    for name in names:
        for check, outcome in layouts[name]["checks"].items():
            lines.append(f"- {name}, {check}: {'ok' if outcome['ok'] else 'FAILED ' + _detail(outcome)}")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def _cell(value, layout: dict) -> str:
    try:
        return value(layout)
    except (KeyError, TypeError):
        return "-"


def _detail(outcome: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in outcome.items() if key != "ok")


def _step(layout: dict, step: str) -> dict:
    return layout["steps"][step]


def _writers(layout: dict, step: str, key: str, fmt: str) -> str:
    before, during = _step(layout, "before")["writers"][key], _step(layout, step)["writers"][key]
    ratio = f" ({during / before:.2f}x)" if before and during is not None else ""
    return f"{format(before, fmt)} -> {format(during, fmt) if during is not None else '-'}{ratio}"


def _probe(layout: dict, step: str) -> str:
    probe = _step(layout, step)["probe"]
    failures = ", ".join(f"{count} {kind}" for kind, count in probe["failures"].items())
    longest = probe["longest_lock_wait_ms"]
    return f"{probe['attempts']} tries, longest wait {'-' if longest is None else f'{longest:,.1f} ms'}" + (
        f", {failures}" if failures else ""
    )


def _size(layout: dict, when: str, key: str) -> str:
    return f"{sum(table[key] for table in layout['tables'][when].values()):,}"


def _bytes(layout: dict, when: str) -> str:
    return pretty(sum(table["bytes"] for table in layout["tables"][when].values()))


def _vacuum(layout: dict, render) -> str:
    return render(layout) if "vacuum" in layout["steps"] else "none needed"


ROWS = (
    ("method", lambda layout: _step(layout, "retention")["method"]),
    ("rows removed", lambda layout: f"{layout['rows_removed']:,}"),
    ("partitions dropped: DETACH s, DROP s (slowest DETACH)", lambda layout: (
        f"{sum(_step(layout, 'retention')['partitions'].values())}: {_step(layout, 'retention')['detach_s']:,.2f} s, "
        f"{_step(layout, 'retention')['drop_s']:,.2f} s ({_step(layout, 'retention')['slowest_detach_s']:,.2f} s)")),
    ("tables before (rows, size)", lambda layout: f"{_size(layout, 'before', 'live_tuples')}, "
     f"{_bytes(layout, 'before')}"),
    ("retention wall time", lambda layout: f"{_step(layout, 'retention')['wall_s']:,.2f} s"),
    ("retention WAL (beyond the writers')", lambda layout: f"{pretty(_step(layout, 'retention')['wal_bytes'])} "
     f"({pretty(_step(layout, 'retention')['wal_bytes_beyond_writers'])})"),
    ("writers' rows/s, before -> during", lambda layout: _writers(layout, "retention", "rows_per_s", ",.0f")),
    ("slowest COPY round trip ms, before -> during",
     lambda layout: _writers(layout, "retention", "slowest_round_trip_ms", ",.1f")),
    ("migration probe during", lambda layout: _probe(layout, "retention")),
    ("size after", lambda layout: _bytes(layout, "after_retention")),
    ("dead tuples after", lambda layout: _size(layout, "after_retention", "dead_tuples")),
    ("VACUUM wall time", lambda layout: _vacuum(layout, lambda lay: f"{_step(lay, 'vacuum')['wall_s']:,.2f} s")),
    ("VACUUM WAL (beyond the writers')", lambda layout: _vacuum(
        layout, lambda lay: f"{pretty(_step(lay, 'vacuum')['wal_bytes'])} "
        f"({pretty(_step(lay, 'vacuum')['wal_bytes_beyond_writers'])})")),
    ("writers' rows/s during VACUUM", lambda layout: _vacuum(
        layout, lambda lay: _writers(lay, "vacuum", "rows_per_s", ",.0f"))),
    ("slowest COPY round trip ms during VACUUM", lambda layout: _vacuum(
        layout, lambda lay: _writers(lay, "vacuum", "slowest_round_trip_ms", ",.1f"))),
    ("migration probe during VACUUM", lambda layout: _vacuum(layout, lambda lay: _probe(lay, "vacuum"))),
    ("size after VACUUM", lambda layout: _vacuum(layout, lambda lay: _bytes(lay, "after_vacuum"))),
    ("dead tuples after VACUUM", lambda layout: _vacuum(layout, lambda lay: _size(lay, "after_vacuum", "dead_tuples"))),
)  # fmt: skip
"""(label, how a layout's result shows in that row)."""

NOTES = """How to read it: "before" is the writers' last stretch before the retention started (`--before`); "during" is
the step itself (rows/s over at least 5 s from its start). A round trip or probe attempt counts in a step when it
overlapped it. WAL is the server's (pg_current_wal_lsn around the step): in brackets, without the writers' own (their
rows in the step at their WAL per row before). Sizes are pg_total_relation_size summed over each table's partitions
(heap, TOAST, indexes), the writers' new rows included; tuples from pg_stat_user_tables. A failed probe attempt
waited its whole lock_timeout."""
