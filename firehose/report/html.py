"""Locust's reports gain the run's telemetry: the summary's table per table (and per user class), the
reconciliation, and the rows/s chart (an inline SVG: the report stays one self-contained file).

Locust 2.47 has no hook for its report's content: it writes `--html` before it fires `quitting`, so at
`quitting` this module inserts its section before the file's `</body>`; the web UI's `/stats/report` gets
the same section in its answer (webui.py). Tests check both with the pinned Locust.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from firehose.report.live import LiveTelemetry

SECTION_ID = "firehose-telemetry"
CHART_W, CHART_H, MARGIN = 900, 240, 60


def chart_svg(series: list[dict]) -> str:
    """Rows/s over the run as an SVG polyline (empty when the run had fewer than two samples)."""
    if len(series) < 2:
        return ""
    t_max = max(series[-1]["t"], 1e-9)
    y_max = max(1.0, *(point["rows_per_s"] for point in series)) * 1.1

    def x(t: float) -> float:
        return MARGIN + (CHART_W - MARGIN - 10) * t / t_max

    def y(v: float) -> float:
        return CHART_H - 30 - (CHART_H - 40) * v / y_max

    points = " ".join(f"{x(p['t']):.1f},{y(p['rows_per_s']):.1f}" for p in series)
    ticks = "".join(
        f'<text x="{MARGIN - 5}" y="{y(y_max * i / 4) + 4:.1f}" font-size="11" text-anchor="end">'
        f"{y_max * i / 4:,.0f}</text>"
        for i in range(5)
    )
    return (
        f'<svg width="{CHART_W}" height="{CHART_H}" xmlns="http://www.w3.org/2000/svg" '
        f'style="background:#fff;border:1px solid #ddd">{ticks}'
        f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="2"/>'
        f'<text x="{CHART_W / 2}" y="{CHART_H - 8}" font-size="12" text-anchor="middle">'
        f"rows/s, seconds since test start (0 - {t_max:,.0f})</text></svg>"
    )


def section(live: LiveTelemetry) -> str:
    """The report's telemetry section (the end-of-run summary and the chart)."""
    summary = live.summary
    parts = [f'<section id="{SECTION_ID}" style="font-family:sans-serif;margin:2em">', "<h2>firehose telemetry</h2>"]
    if summary is None:
        parts.append("<p>No firehose summary yet: the run has not ended (or it did not end normally).</p>")
    else:
        writes = summary["writes"]
        parts.append('<table class="firehose-telemetry" border="1" cellpadding="4" style="border-collapse:collapse">')
        parts.append(
            "<tr><th>table</th><th>generated</th><th>acknowledged</th><th>in database</th>"
            "<th>rows/s</th><th>MB/s</th></tr>"
        )
        for table, row in writes["by_table"].items():
            parts.append(
                f"<tr><td>{escape(table)}</td><td>{row['generated']:,}</td><td>{row['acknowledged']:,}</td>"
                f"<td>{row['in_database']:,}</td><td>{row['rows_per_s']:,.0f}</td><td>{row['mb_per_s']:.1f}</td></tr>"
            )
        events = summary["events"]
        parts.append(
            f"<tr><th>total</th><td>{events['generated']:,}</td><td>{events['acknowledged']:,}</td>"
            f"<td>{events['in_database']:,}</td><td>{writes['rows_per_s']:,.0f}</td>"
            f"<td>{writes['mb_per_s']:.1f}</td></tr></table>"
        )
        parts.append(f"<pre>{escape(summary['text'])}</pre>")
    parts.append(chart_svg(live.series()))
    parts.append("</section>")
    return "\n".join(parts)


def add_to_report(path: str, live: LiveTelemetry) -> None:
    """Insert the telemetry section into Locust's report at `path` (already written), once."""
    report = Path(path)
    if not report.exists():
        return
    text = report.read_text(encoding="utf-8")
    if SECTION_ID not in text:
        report.write_text(insert_section(text, live), encoding="utf-8")


def insert_section(text: str, live: LiveTelemetry) -> str:
    """A Locust report's HTML with the telemetry section before its `</body>` (at its end without one)."""
    at = text.rfind("</body>")
    addition = section(live)
    return text[:at] + addition + text[at:] if at >= 0 else text + addition
