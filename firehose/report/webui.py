"""The web UI's "Telemetry" tab and chart page, through Locust's own extension points only.

- The tab: `template_args` `extended_tabs` / `extended_tables` declare it, and every `/stats/requests` answer
  (which Locust's UI polls every 2 s) gets an `extended_stats` entry with its rows: rows/s and MB/s now, per
  table, per user class and in total, the reconciliation counters, and the end-of-run reconciliation once
  the run ended. The table's cells are text (Locust renders no links there): a row names the chart's address.
- The chart page, `/telemetry` on Locust's own Flask app: the same figures, a chart of rows/s over the run
  (an inline SVG drawn by a few lines of inline script; nothing from the internet, so it works offline) and
  the end-of-run summary. It polls `/telemetry/data` (JSON) every second.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from flask import Response, jsonify, request
from locust.env import Environment

from firehose.report.live import RATE_WINDOW_S, LiveTelemetry, percentiles_ms

TAB = "telemetry"
PAGE = "/telemetry"
STRUCTURE = [
    {"key": "name", "title": "Telemetry"},
    {"key": "rate", "title": "rows/s now"},
    {"key": "mbps", "title": "MB/s now"},
    {"key": "rows", "title": "rows acknowledged"},
    {"key": "buffered", "title": "buffered"},
    {"key": "failed", "title": "failed"},
    {"key": "quarantined", "title": "quarantined"},
    {"key": "retries", "title": "retries"},
    {"key": "fresh", "title": "freshness p50 / p99 ms"},
]


INFO = "\u00bb "
"""Starts the tab's lines of text: Locust sorts the table by its first column, and these sort after the tables."""
HIDDEN_FROM_FORM = ("dsn", "url")
"""Options whose name has one of these stay out of the start form: addresses may carry passwords."""


def declare_in_form(parser: argparse.ArgumentParser, declare: Callable[[argparse.ArgumentParser], None]) -> None:
    """`declare(parser)` adds firehose's options; each is then shown in Locust's start form, or hidden
    (`show_in_form`)."""
    before = set(parser_actions(parser))
    declare(parser)
    show_in_form([action for action in parser_actions(parser) if action not in before])


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option `parser` holds, those of its argument groups included.

    argparse has no public way to list them, and Locust reads the same private list to build its form
    (`LocustArgumentParser.args_included_in_web_ui`): the one read of that private list in firehose, checked
    against the installed Locust by tests/test_locust_seams.py.
    """
    return list(parser._actions)


def show_in_form(actions: list[argparse.Action]) -> None:
    """firehose's options in Locust's start form, as Locust shows a locustfile's custom arguments.

    Locust marks only options added on its parser itself; those added in argument groups (each strategy's)
    carry no mark and would be left out. Addresses (DSNs, URLs) never show: they may carry passwords. Nor do
    repeatable options (`--pg-setting`): Locust's form turns an empty one into [""] and fails to start the run.
    """
    for action in actions:
        repeatable = isinstance(action, argparse._AppendAction)
        hidden = any(word in action.dest for word in HIDDEN_FROM_FORM) or action.dest == "help" or repeatable
        action.include_in_web_ui = getattr(action, "include_in_web_ui", True) and not hidden
        action.is_secret = getattr(action, "is_secret", False)
        action.is_required = getattr(action, "is_required", False)
        action.is_multiple = getattr(action, "is_multiple", False)


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 10) % 10}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def tab_rows(live: LiveTelemetry) -> list[dict]:
    """The Telemetry tab's rows (text cells) from the live view."""
    view = live.view
    if view is None:
        return [{"name": "no run yet: start one (firehose counts rows once engineers write)"}]
    rate = view["rate"]
    fresh = view["freshness_histograms"]
    rows = []

    def counters(name: str, row: dict, rate_row: dict | None, histogram) -> dict:
        p = percentiles_ms(histogram)
        return {
            "name": name,
            "rate": f"{rate_row['rows_per_s']:,.0f}" if rate_row else "",
            "mbps": f"{rate_row['mb_per_s']:.1f}" if rate_row else "",
            "rows": f"{row['acknowledged']:,}",
            "buffered": f"{row['buffered']:,}",
            "failed": f"{row['failed']:,}",
            "quarantined": f"{row['quarantined']:,}",
            "retries": f"{row['retries']:,}",
            "fresh": f"{_ms(p['p50_ms'])} / {_ms(p['p99_ms'])}",
        }

    for table, row in view["by_table"].items():
        rows.append(counters(table, row, rate["by_table"].get(table), fresh["by_table"].get(table)))
    if len(view["by_class"]) > 1:
        for name, row in view["by_class"].items():
            rows.append(counters(f"class {name}", row, None, fresh["by_class"].get(name)))
    total = counters("total", view["total"], rate, None)
    all_fresh = [p for p in (percentiles_ms(h) for h in fresh["by_class"].values()) if p["p99_ms"] is not None]
    if len(all_fresh) == 1:
        total["fresh"] = f"{_ms(all_fresh[0]['p50_ms'])} / {_ms(all_fresh[0]['p99_ms'])}"
    rows.append(total)
    started, finished = view["engineers"]
    rows.append(
        {
            "name": f"{INFO}rows/s now: over {_clock(rate['from'])} - {_clock(rate['to'])} "
            f"(the last {RATE_WINDOW_S:.0f} s); engineers finished/started {finished:,}/{started:,}; "
            f"processes {view['processes']}"
        }
    )
    if view["gauges"]:
        rows.append({"name": f"{INFO}stream: " + ", ".join(f"{k} {v:,}" for k, v in view["gauges"].items())})
    if live.summary is not None:
        rows.append({"name": INFO + live.summary["text"].splitlines()[-1]})  # "reconciliation: lost = 0, ...  [OK]"
    rows.append({"name": f"{INFO}rows/s chart and the summary: {PAGE} (this address, path {PAGE})"})
    return rows


def page_data(live: LiveTelemetry) -> dict:
    """What the chart page shows, as JSON."""
    view = live.view
    data: dict = {"run_id": live.run_id, "started_at": live.started_at, "summary": None, "now": None}
    if view is not None:
        data["now"] = {
            "rate": view["rate"],
            "total": view["total"],
            "by_table": view["by_table"],
            "engineers": view["engineers"],
            "gauges": view["gauges"],
            "processes": view["processes"],
        }
        data["series"] = live.series()
    if live.summary is not None:
        data["summary"] = {"text": live.summary["text"], "events": live.summary["events"]}
    return data


def install(environment: Environment, live: LiveTelemetry) -> None:
    """Add the tab, its rows in /stats/requests, and the chart page to Locust's web UI."""
    web_ui = environment.web_ui
    web_ui.template_args["extended_tabs"] = [{"title": "Telemetry", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": STRUCTURE}]
    web_ui.template_args["extended_csv_files"] = [{"href": f".{PAGE}", "title": "Telemetry: rows/s chart (page)"}]
    app = web_ui.app

    @app.after_request
    def _add_telemetry(response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            body = response.get_json()
            body["extended_stats"] = [{"key": TAB, "data": tab_rows(live)}]
            response.set_data(json.dumps(body))
        return response

    @web_ui.auth_required_if_enabled
    def telemetry_page() -> Response:
        return Response(PAGE_HTML, mimetype="text/html")

    @web_ui.auth_required_if_enabled
    def telemetry_data() -> Response:
        return jsonify(page_data(live))

    app.add_url_rule(PAGE, "firehose_telemetry", telemetry_page)
    app.add_url_rule(f"{PAGE}/data", "firehose_telemetry_data", telemetry_data)


PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>firehose telemetry</title>
<style>
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } .big { font-size: 2.4em; font-weight: bold; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 4px 12px; text-align: right; border-bottom: 1px solid #ddd; }
td:first-child, th:first-child { text-align: left; } pre { background: #fff; padding: 1em; border: 1px solid #ddd; }
.ok { color: #060; } .bad { color: #a00; } svg { background: #fff; border: 1px solid #ddd; }
</style></head><body>
<h1>firehose: rows written per second <small id="run"></small></h1>
<div><span class="big" id="rows-per-s" data-from="" data-to="">-</span> rows/s now
 &nbsp; <span class="big" id="mb-per-s">-</span> MB/s &nbsp; <span id="window"></span></div>
<div id="counters"></div>
<table id="tables"></table>
<svg id="chart" width="900" height="260" viewBox="0 0 900 260"></svg>
<div id="reconciliation"></div>
<pre id="summary" hidden></pre>
<p><a href="./">back to Locust</a></p>
<script>
const fmt = (v, d = 0) => v.toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: d});
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB") + "." + Math.floor((t * 10) % 10);
function chart(series) {
  const svg = document.getElementById("chart"), W = 900, H = 260, L = 60, B = 30;
  if (!series || series.length < 2) { svg.innerHTML = ""; return; }
  const tMax = series[series.length - 1].t, yMax = Math.max(1, ...series.map(p => p.rows_per_s)) * 1.1;
  const x = t => L + (W - L - 10) * t / Math.max(tMax, 1e-9), y = v => H - B - (H - B - 10) * v / yMax;
  const path = series.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p.rows_per_s).toFixed(1)).join("");
  let grid = "";
  for (let i = 0; i <= 4; i++) {
    const v = yMax * i / 4;
    grid += `<line x1="${L}" x2="${W - 10}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/>` +
      `<text x="${L - 5}" y="${y(v) + 4}" font-size="11" text-anchor="end">${fmt(v)}</text>`;
  }
  svg.innerHTML = grid + `<path d="${path}" fill="none" stroke="#1f77b4" stroke-width="2"/>` +
    `<text x="${W / 2}" y="${H - 8}" font-size="12" text-anchor="middle">` +
    `seconds since test start (0 - ${fmt(tMax)}); rows/s</text>`;
}
async function refresh() {
  const data = await (await fetch("./telemetry/data")).json();
  document.getElementById("run").textContent = data.run_id ? `(run ${data.run_id})` : "(no run yet)";
  if (data.now) {
    const r = data.now.rate, t = data.now.total, el = document.getElementById("rows-per-s");
    el.textContent = fmt(r.rows_per_s); el.dataset.from = r.from || ""; el.dataset.to = r.to || "";
    document.getElementById("mb-per-s").textContent = fmt(r.mb_per_s, 1);
    document.getElementById("window").textContent = r.from ? `over ${clock(r.from)} - ${clock(r.to)}` : "";
    document.getElementById("counters").textContent =
      `acknowledged ${fmt(t.acknowledged)}, received ${fmt(t.received)}, buffered ${fmt(t.buffered)}, ` +
      `failed ${fmt(t.failed)}, quarantined ${fmt(t.quarantined)}, retries ${fmt(t.retries)}; engineers ` +
      `finished/started ${fmt(data.now.engineers[1])}/${fmt(data.now.engineers[0])}; processes ${data.now.processes}` +
      Object.entries(data.now.gauges).map(([k, v]) => `; ${k} ${fmt(v)}`).join("");
    let rows = "<tr><th>table</th><th>rows/s now</th><th>MB/s now</th><th>acknowledged</th><th>buffered</th></tr>";
    for (const [table, row] of Object.entries(data.now.by_table)) {
      const rr = r.by_table[table] || {rows_per_s: 0, mb_per_s: 0};
      rows += `<tr><td>${table}</td><td>${fmt(rr.rows_per_s)}</td><td>${fmt(rr.mb_per_s, 1)}</td>` +
        `<td>${fmt(row.acknowledged)}</td><td>${fmt(row.buffered)}</td></tr>`;
    }
    document.getElementById("tables").innerHTML = rows;
    chart(data.series);
  }
  const summary = document.getElementById("summary"), rec = document.getElementById("reconciliation");
  if (data.summary) {
    summary.hidden = false; summary.textContent = data.summary.text;
    const line = data.summary.text.split("\\n").pop();
    rec.textContent = line; rec.className = line.endsWith("[OK]") ? "ok" : "bad";
  } else { summary.hidden = true; rec.textContent = ""; }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
