"""soak.md: the verdict and its checks, the faults with what each cost, the reconciliation per writer key, the
killed workers against their bound, and the totals per strategy."""

from __future__ import annotations


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _costs(costs: dict | None) -> tuple[str, str, str]:
    """Retries, seconds blocked, and the strategies they fell on, of one fault."""
    if not costs:
        return "0", "0.0", ""
    retries = sum(row["retries"] for row in costs.values())
    blocked = sum(row["blocked_s"] for row in costs.values())
    hit = ", ".join(
        f"{name} {row['retries']:,} ({row['blocked_s']:,.1f} s)"
        for name, row in costs.items()
        if row["retries"] or row["blocked_s"]
    )
    return f"{retries:,}", f"{blocked:,.1f}", hit


def render_markdown(result: dict) -> str:
    """The soak's report."""
    settings, machine, verdict = result["settings"], result["machine"], result["verdict"]
    lines = [
        f"# Soak of {result['date']}: {'PASSED' if verdict['ok'] else 'FAILED'}",
        "",
        f"{', '.join(settings['strategies'])}; {settings['users']} engineers over a master and "
        f"{settings['workers']} workers, {settings['duration_s']} s `--continuous` "
        f"(`{' '.join(settings['locust_args'])}`), writing {result['writing_after_s']:g} s after the start; "
        f"schedule seed {settings['seed']}. Machine: {machine['cores']} cores, PostgreSQL "
        f"{machine['postgres_version']}, Locust {machine['locust']}, Python {machine['python']}.",
        "",
        "| check | | detail |",
        "|---|---|---|",
        *(f"| {c['check']} | {'ok' if c['ok'] else '**FAILED**'} | {c['detail']} |" for c in verdict["checks"]),
        "",
        "## Faults",
        "",
        "Retries and seconds blocked: what the workers' reports added from the fault to the next one (seconds blocked "
        "summed over deliveries).",
        "",
        "| at (s of writing) | fault | what was done | took s | retries | blocked s | by strategy: retries (blocked s) "
        "| disk guard back after s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fault in result["faults"]:
        if fault["at"] is None:
            lines.append(
                f"| ({fault['planned_at_s']:g}) | {fault['kind']} | not injected: the run was ending | | | | | |"
            )
            continue
        retries, blocked, hit = _costs(fault.get("costs"))
        back = fault.get("disk_guard_back_after_s", "")
        done = fault.get("detail") or f"**failed**: {fault['error']}"
        lines.append(
            f"| {fault['at_s']:g} | {fault['kind']} | {done} | {fault['took_s']:g} | {retries} | {blocked} | {hit} "
            f"| {'not seen' if back is None else back} |"
        )
    before, _, _ = _costs(result["retries_before_faults"])
    lines += ["", f"Retries before the first fault: {before}.", "", "## Reconciliation per writer key", ""]
    lines += [
        "| writer key | worker | state | generated | in database | lost | received at its last report | lost with it, "
        "at least |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["keys"]:
        lines.append(
            f"| {row['writer_key']} | {row['worker'] or '?'} | {row['state']} | {_number(row.get('generated'))} "
            f"| {_number(row['in_database'])} | {_number(row.get('lost'))} | "
            f"{_number(row.get('received_at_last_report'))} | {_number(row.get('lost_with_it_at_least'))} |"
        )
    if result["killed"]:
        lines += [
            "",
            "## Killed workers",
            "",
            "| worker | writer key | named in the summary | lost with it, at least | held unacknowledged at its last "
            "report, by strategy (the bound) | its replacement (writer key) |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["killed"]:
            held = ", ".join(f"{name} {rows:,}" for name, rows in row["allowance"].items()) or "-"
            lines.append(
                f"| {row['victim']} | {row['writer_key'] if row['writer_key'] is not None else 'none drawn'} "
                f"| {'yes' if row['named_in_summary'] else 'no'} | {_number(row['lost_with_it_at_least'])} | {held} "
                f"| {row['replacement']} ({row['replacement_key'] if row['replacement_key'] is not None else 'none'}) |"
            )
    if (events := result["events"]) is not None:
        lines += [
            "",
            "## Totals",
            "",
            f"Generated {events['generated']:,}, acknowledged {events['acknowledged']:,}, in the database "
            f"{events['in_database']:,}; lost {events['lost']:,}, duplicates {events['duplicates']:,}, failed "
            f"{events['failed']:,} (the processes that reported); {result['rows_per_s']:,.0f} rows/s.",
            "",
            "| strategy | acknowledged | rows/s | retries | blocked s |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {row['acknowledged']:,} | {row['rows_per_s']:,.0f} | {row['retries']:,} | "
                f"{row['blocked_s']:,.1f} |"
                for name, row in result["by_class"].items()
            ),
        ]
    lines += ["", f"Master exit code {result['master']['exit_code']}.", ""]
    return "\n".join(lines)
