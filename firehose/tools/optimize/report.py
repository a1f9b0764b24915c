"""`firehose optimize`'s result as Markdown: the per-query table, the indexes' sizes and their cost on writes."""

from __future__ import annotations

REFERENCE_SPEEDUPS = {"recent_errors": "43x", "log_severity": "2x", "service_dependency_map": "1.4x"}
"""The reference's published speedups (51 -> 1.2 ms, 65 -> 33 ms, 456 -> 320 ms on ~920k rows)."""


def render_markdown(result: dict) -> str:
    """The report: dataset and machine, queries before/after, indexes, writes."""
    dataset, machine, writes = result["dataset"], result["machine"], result["writes"]
    rows = dataset["rows"]
    lines = [
        f"# firehose optimize: {dataset['users']} users, {sum(rows.values()):,} rows "
        f"({', '.join(f'{table} {count:,}' for table, count in rows.items())}), "
        f"history {dataset['history_s'] / 3600:g} h, window {result['settings']['window_s'] / 3600:g} h",
        "",
        f"PostgreSQL {machine['postgres_version']} on {machine['cores']} cores; {_layout(dataset)}; newest data "
        f"{dataset['newest_data']}"
        f" ({'reused' if dataset['reused'] else 'loaded'}); table sizes "
        + ", ".join(f"{table} {size / 2**20:,.0f} MB" for table, size in dataset["table_bytes"].items())
        + f"; median of {result['settings']['repeat']} runs per query and phase.",
        "",
        "| query | before ms | after ms | speedup | reference | scans before | scans after "
        "| buffers hit/read before | after | identical, not empty |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for name, query in result["queries"].items():
        before, after = query["before"], query["after"]
        lines.append(
            _row(
                name,
                f"{before['median_ms']:,.3f}",
                f"{after['median_ms']:,.3f}",
                "" if query["speedup"] is None else f"{query['speedup']:g}x",
                REFERENCE_SPEEDUPS.get(name, ""),
                "<br>".join(before["scans"]),
                "<br>".join(after["scans"]),
                f"{before['shared_hit']:,}/{before['shared_read']:,}",
                f"{after['shared_hit']:,}/{after['shared_read']:,}",
                "yes" if query["identical"] and query["non_empty"] else "**NO**",
            )
        )
    lines += ["", f"Indexes (created in {result['create_indexes_s']:g} s, then VACUUM ANALYZE):", ""]
    lines += ["| index | table | size MB | definition |", "|---|---|---:|---|"]
    for name, index in result["indexes"].items():
        lines.append(_row(name, index["table"], f"{index['bytes'] / 2**20:,.1f}", f"`{index['definition']}`"))
    lines += [
        "",
        f"Cost on writes (COPY of the same {writes['sample_rows']:,} fresh rows, same run): "
        f"{writes['without_indexes_rows_s']:,} rows/s without the indexes, {writes['with_indexes_rows_s']:,} with "
        f"({writes['ratio']:g} of it).",
    ]
    return "\n".join(lines) + "\n"


def _layout(dataset: dict) -> str:
    if dataset["layout"] == "partitioned":
        return f"tables partitioned by time, one partition per {dataset['partition_interval']}"
    return "plain tables"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"
