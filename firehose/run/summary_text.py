"""The end-of-run summary as text for the terminal, from its JSON figures (firehose.run.summary).

Tables per table and per user class, retries and freshness, each part's lines (firehose.run.parts), what
could not be counted or stopped the run, every process with no final report, and the reconciliation line
last (the web UI shows that line on its own).
"""

from __future__ import annotations

from firehose.run import disk_guard, parts, replica


def render(figures: dict, ended_at: float) -> str:
    """`figures`: a summary's JSON (RunSummary.as_dict); `ended_at`: when it was made (the unaccounted
    processes' last reports are dated from it)."""
    run, events, writes = figures["run"], figures["events"], figures["writes"]
    lines = [
        f"firehose run {run['run_id']} (seed {run['seed']}) on {run['database']} ({run['layout']} tables): "
        f"{run['writing_s']:.1f} s writing "
        f"({run['elapsed_s']:.1f} s since test start)",
        f"{'table':<10}{'generated':>12}{'acknowledged':>14}{'in database':>13}{'rows/s':>10}{'MB/s':>8}",
    ]
    for table, row in writes["by_table"].items():
        lines.append(
            f"{table:<10}{row['generated']:>12,}{row['acknowledged']:>14,}{row['in_database']:>13,}"
            f"{row['rows_per_s']:>10,.0f}{row['mb_per_s']:>8.1f}"
        )
    lines.append(
        f"{'total':<10}{events['generated']:>12,}{events['acknowledged']:>14,}{events['in_database']:>13,}"
        f"{writes['rows_per_s']:>10,.0f}{writes['mb_per_s']:>8.1f}"
    )
    if len(writes["by_class"]) > 1:
        lines.append(f"{'user class':<24}{'acknowledged':>14}{'rows/s':>10}{'MB/s':>8}{'fresh p99 ms':>14}")
        for name, row in writes["by_class"].items():
            lines.append(
                f"{name:<24}{row['acknowledged']:>14,}{row['rows_per_s']:>10,.0f}{row['mb_per_s']:>8.1f}"
                f"{_ms(row['freshness']['p99_ms']):>14}"
            )
    if retried := {name: row for name, row in writes["by_class"].items() if row["retries"]}:
        lines.append(
            "retries after a lost connection (blocked s, summed over deliveries): "
            + "; ".join(f"{name} {row['retries']:,} ({row['blocked_s']:,.1f} s)" for name, row in retried.items())
        )
    fresh = figures["freshness"]["by_class"]
    lines.append(
        "freshness (hand-over to commit) p50/p95/p99 ms: "
        + "; ".join(f"{name} {_ms(f['p50_ms'])} / {_ms(f['p95_ms'])} / {_ms(f['p99_ms'])}" for name, f in fresh.items())
    )
    for part in parts.PARTS:
        if section := figures[part.name]:
            lines.extend(part.render(section))
    if not events["in_database_counted"]:
        lines.append("the database could not be reached to count the rows: in database = acknowledged")
    if guard := figures.get("disk_guard"):
        lines.extend(disk_guard.render(guard))
    for spool in figures.get("valve") or ():
        host, _, directory = spool["spool"].partition(":")
        lines.append(
            f"spooled, not written: {spool['rows']:,} rows behind {spool['pointers']:,} pointers in spool "
            f"{directory} on {host} (load them there with `firehose valve flush --spool {directory}`)"
        )
    if section := figures.get("replica"):
        lines.extend(replica.render(section))
    if run["stopped_by"]:
        lines.append(f"stopped by an error of the setup: {run['stopped_by']}; {events['lost']:,} rows not written")
    for worker in figures["unaccounted"]:
        lines.append(_render_unaccounted(worker, ended_at))
    reported = len(figures["processes"])
    over = f" of the {reported} process{'es' if reported != 1 else ''} that reported" if figures["unaccounted"] else ""
    lines.append(
        f"reconciliation{over}: lost = {events['lost']:,}, duplicates = {events['duplicates']:,}, "
        f"quarantined = {events['quarantined']:,}, failed = {events['failed']:,}  [{run['verdict']}]"
    )
    return "\n".join(lines)


def _render_unaccounted(worker: dict, ended_at: float) -> str:
    """One line for a process with no final report: who, why, and what is known of its rows."""
    who = f"{worker['worker'] or 'unknown process'} (writer key {worker['writer_key']})"
    if worker["received"] is None:
        known = "no stats report before it stopped"
        lost = "unknown"
    else:
        age = ended_at - worker["last_report_at"]
        known = (
            f"at its last report ({age:.0f} s before the end) {worker['received']:,} rows received, "
            f"{worker['acknowledged']:,} acknowledged"
        )
        lost = f"at least {worker['lost_with_it_at_least']:,}"
    # A live worker past --drain-timeout may still commit its rows: not lost yet, unflushed when counted.
    what = "unflushed when counted" if worker["state"] == "live" else "lost with it"
    return (
        f"UNACCOUNTED {who}: {worker['reason']}; {known}; {worker['in_database']:,} rows of its key in the "
        f"database; {what}: {lost}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
