"""`firehose chaos`'s result as Markdown: writes alone and with analysts beside the reference, per query, checks,
table sizes and who used the CPU."""

from __future__ import annotations

REFERENCE = {
    "rows_per_s_alone": "~67,000 (COPY)",
    "rows_per_s_with_analysts": "~39,000",
    "retention": "0.58",
    "queries": "7,000+",
    "p95": "9 ms",
    "slowest": "service dependency map, ~1.2 s",
}
"""The reference's published chaos figures (1,000 users, 1.8M events, M2 MacBook Air): seed-figures.md."""
PHASES = {"alone": "writer alone", "with_analysts": "with analysts"}


def render_markdown(result: dict) -> str:
    """The report: the headline table, per query, table sizes, CPU."""
    settings, machine, phases = result["settings"], result["machine"], result["phases"]
    alone, mixed = phases["alone"], phases["with_analysts"]
    queries = mixed["queries"]
    p95s = [query["p95_ms"] for query in queries.values() if query["p95_ms"] is not None]
    slowest = max(queries.items(), key=lambda item: item[1]["p50_ms"] or 0, default=None)
    lines = [
        f"# firehose chaos: {settings['strategy']}, {settings['users']} engineers, {settings['analysts']} analysts, "
        f"{settings['duration']} per phase, {settings['prefill_rows']:,} rows prefilled over "
        f"{settings['history_s'] / 3600:g} h",
        "",
        f"PostgreSQL {machine['postgres_version']} on {machine['cores']} cores (client and server share them); "
        f"Locust --processes {settings['processes'] or 'none'}; extra Locust options: "
        f"{' '.join(settings['locust_args']) or 'none'}.",
        "",
        "| figure | ours | reference |",
        "|---|---:|---:|",
        f"| write rows/s, writer alone | {alone['rows_per_s']:,.0f} | {REFERENCE['rows_per_s_alone']} |",
        f"| write rows/s, with {settings['analysts']} analysts | {mixed['rows_per_s']:,.0f} "
        f"| {REFERENCE['rows_per_s_with_analysts']} |",
        f"| retention (with / alone) | {_num(result['retention'], '{:.2f}')} | {REFERENCE['retention']} |",
        f"| queries served (per s of writing) | {result['queries_served']:,} "
        f"({_num(result['queries_per_s'], '{:,.1f}')}/s over {mixed['writing_s']:.1f} s) | {REFERENCE['queries']} |",
        f"| query p95, per query | {_range(p95s)} | {REFERENCE['p95']} |",
        f"| slowest query (p50) | {_slowest(slowest)} | {REFERENCE['slowest']} |",
        f"| lost rows, alone / with analysts | {alone['events'].get('lost', '?')} / {mixed['events'].get('lost', '?')} "
        '| 0 ("every write committed") |',
        "",
        "| query | count | during writes | failures | p50 ms | p95 ms | p99 ms | checked after the run | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, query in queries.items():
        check = mixed["checks"].get(name, {})
        lines.append(
            _row(
                name,
                f"{query['count']:,}",
                f"{query['during_writes']:,}",
                f"{query['failures']:,}",
                _num(query["p50_ms"], "{:,.1f}"),
                _num(query["p95_ms"], "{:,.1f}"),
                _num(query["p99_ms"], "{:,.1f}"),
                check.get("checked", ""),
                _verdict(check.get("ok")),
            )
        )
    if queries:
        lines += ["", f"Percentiles: {next(iter(queries.values()))['percentile_method']}."]
    lines += [
        "",
        "| table | phase | rows before | rows after | MB before | MB after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for table in alone["tables_before"]:
        for phase, label in PHASES.items():
            before, after = phases[phase]["tables_before"][table], phases[phase]["tables_after"][table]
            lines.append(
                _row(
                    table,
                    label,
                    f"{before['rows']:,}",
                    f"{after['rows']:,}",
                    f"{before['bytes'] / 2**20:,.0f}",
                    f"{after['bytes'] / 2**20:,.0f}",
                )
            )
    lines += ["", "Who used the CPU (seconds of CPU during each run, from /proc):", ""]
    lines += ["| process | writer alone | with analysts |", "|---|---:|---:|"]
    for kind in alone["cpu"]["cpu_s"]:
        lines.append(_row(kind, f"{alone['cpu']['cpu_s'][kind]:,.1f}", f"{mixed['cpu']['cpu_s'][kind]:,.1f}"))
    lines.append(
        _row(
            "machine busy (all cores)",
            f"{_num(alone['cpu']['machine_busy_share'], '{:.0%}')} of {alone['cpu']['wall_s']:g} s",
            f"{_num(mixed['cpu']['machine_busy_share'], '{:.0%}')} of {mixed['cpu']['wall_s']:g} s",
        )
    )
    if not mixed["cpu"]["server_measured"]:
        lines += ["", "The server is not on this machine: its processes' CPU could not be read."]
    if result.get("on_replica"):
        lines += render_replica(result)
    verdict = "all checks passed, no row lost" if result["ok"] else "**a check failed, a run failed or rows were lost**"
    lines += ["", f"Result: {verdict}."]
    return "\n".join(lines) + "\n"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _range(values: list[float]) -> str:
    return f"{min(values):,.1f}-{max(values):,.1f} ms" if values else "-"


def _slowest(item: tuple[str, dict] | None) -> str:
    if item is None:
        return "-"
    name, query = item
    return f"{name}, p50 {_num(query['p50_ms'], '{:,.0f}')} ms, p95 {_num(query['p95_ms'], '{:,.0f}')} ms"


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "**MISMATCH**", None: "not checked"}[ok]


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def render_replica(result: dict) -> list[str]:
    """The third phase beside the second: the same analysts on a streaming replica instead of the primary."""
    phases, figures = result["phases"], result["on_replica"]
    alone, mixed, on_replica = phases["alone"], phases["with_analysts"], phases["with_analysts_on_replica"]
    replica = on_replica["replica"] or {}
    lag, fresh = replica.get("lag", {}), replica.get("visible_freshness", {})
    end = replica.get("end") or {}
    replay = lag.get("replay_ms", {})
    lines = [
        "",
        "## The analysts on a streaming replica (same invocation, same prefill)",
        "",
        "| figure | analysts on the primary | analysts on the replica |",
        "|---|---:|---:|",
        f"| write rows/s (alone: {alone['rows_per_s']:,.0f}) | {mixed['rows_per_s']:,.0f} "
        f"| {on_replica['rows_per_s']:,.0f} |",
        f"| retention (with / alone) | {_num(result['retention'], '{:.2f}')} "
        f"| {_num(figures['retention'], '{:.2f}')} |",
        f"| queries served (per s of writing) | {result['queries_served']:,} "
        f"({_num(result['queries_per_s'], '{:,.1f}')}/s) | {figures['queries_served']:,} "
        f"({_num(figures['queries_per_s'], '{:,.1f}')}/s) |",
        f"| replication replay lag p50 / p95 / max | - | {_num(replay.get('p50'), '{:,.1f}')} / "
        f"{_num(replay.get('p95'), '{:,.1f}')} / {_num(replay.get('max'), '{:,.1f}')} ms |",
        f"| replica behind p95 / max | - | {_mb(lag.get('behind_bytes', {}).get('p95'))} / "
        f"{_mb(lag.get('behind_bytes', {}).get('max'))} |",
        f"| visible on the replica after commit p50 / p95 / p99 | immediate | {_num(fresh.get('p50_ms'), '{:,.1f}')} / "
        f"{_num(fresh.get('p95_ms'), '{:,.1f}')} / {_num(fresh.get('p99_ms'), '{:,.1f}')} ms "
        f"({fresh.get('samples', 0):,} samples, resolution {_num(fresh.get('resolution_ms'), '{:g}')} ms) |",
        f"| replica at the end | - | {'caught up' if end.get('caught_up') else 'NOT caught up'} in "
        f"{_num(end.get('waited_s'), '{:.2f}')} s |",
        f"| replica when its queries were checked | - | {_behind(on_replica.get('replica_behind_at_checks_bytes'))} |",
        f"| recovery conflicts (SQLSTATE 40001), hot_standby_feedback {replica.get('hot_standby_feedback')} | - "
        f"| {sum(query.get('conflicts', 0) for query in on_replica['queries'].values()):,} |",
        f"| lost rows | {mixed['events'].get('lost', '?')} | {on_replica['events'].get('lost', '?')} |",
        "",
        "| query | p95 ms on the primary | p95 ms on the replica | failures on the replica | checked on the replica |",
        "|---|---:|---:|---:|---|",
    ]
    for name, query in on_replica["queries"].items():
        primary_p95 = mixed["queries"].get(name, {}).get("p95_ms")
        lines.append(
            _row(
                name,
                _num(primary_p95, "{:,.1f}"),
                _num(query["p95_ms"], "{:,.1f}"),
                f"{query['failures']:,}",
                _verdict(on_replica["checks"].get(name, {}).get("ok")),
            )
        )
    lines += ["", "Who used the CPU (seconds of CPU during each run):", ""]
    lines += ["| process | analysts on the primary | analysts on the replica |", "|---|---:|---:|"]
    for kind, seconds in on_replica["cpu"]["cpu_s"].items():
        lines.append(_row(kind, _num(mixed["cpu"]["cpu_s"].get(kind), "{:,.1f}"), f"{seconds:,.1f}"))
    lines.append(
        _row(
            "machine busy (all cores)",
            f"{_num(mixed['cpu']['machine_busy_share'], '{:.0%}')}",
            f"{_num(on_replica['cpu']['machine_busy_share'], '{:.0%}')}",
        )
    )
    return lines


def _behind(behind_bytes: int | None) -> str:
    """The checks compare the replica's answers with the generator's counts: they hold only on a replica that caught
    up, so one still behind is said beside their verdicts."""
    if behind_bytes is None:
        return "-"
    return "caught up" if behind_bytes == 0 else f"{_mb(behind_bytes)} behind (the wait for it ran out)"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MB"
