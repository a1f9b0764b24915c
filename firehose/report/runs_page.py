"""The web UI's Runs page, `/runs` on Locust's own Flask app (like `/telemetry`): the kept runs (firehose.report.store),
newest first, a chart of rows/s across them, and a comparison of the runs ticked (firehose.report.compare).

Offline, like the telemetry page: plain HTML, an inline SVG and a few lines of inline script, nothing from the
internet. `/runs/data` gives the list as JSON, `/runs/compare?run=REF&run=REF` the comparison.
"""

from __future__ import annotations

from flask import Response, jsonify, request
from locust.web import WebUI

from firehose.report.compare import Group, comparison, overview, render
from firehose.report.store import load_all, resolve

PAGE = "/runs"


def install(web_ui: WebUI) -> None:
    """Add the page and its two JSON routes to Locust's web UI (behind its login, when it has one)."""

    @web_ui.auth_required_if_enabled
    def runs_page() -> Response:
        return Response(PAGE_HTML, mimetype="text/html")

    @web_ui.auth_required_if_enabled
    def runs_data() -> Response:
        return jsonify([overview(run) for run in load_all()])

    @web_ui.auth_required_if_enabled
    def runs_compare() -> Response:
        stored = load_all()
        groups = [Group(ref, runs) for ref in request.args.getlist("run") if (runs := resolve(ref, stored))]
        if len(groups) < 2:
            return jsonify({"error": "tick two or more runs to compare"}), 400
        result = comparison(groups)
        return jsonify({**result, "text": render(result)})

    app = web_ui.app
    app.add_url_rule(PAGE, "firehose_runs", runs_page)
    app.add_url_rule(f"{PAGE}/data", "firehose_runs_data", runs_data)
    app.add_url_rule(f"{PAGE}/compare", "firehose_runs_compare", runs_compare)


PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>firehose runs</title>
<style>
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 3px 10px; text-align: right; border-bottom: 1px solid #ddd; }
td:nth-child(-n+5), th:nth-child(-n+5) { text-align: left; }
.better { color: #060; } .worse { color: #a00; } .warning { color: #a60; }
svg { background: #fff; border: 1px solid #ddd; }
</style></head><body>
<h1>firehose: kept runs</h1>
<svg id="chart" width="900" height="240" viewBox="0 0 900 240"></svg>
<p><button id="compare">Compare the ticked runs</button> <span id="message"></span></p>
<table id="runs"></table>
<h2>Comparison</h2>
<table id="comparison"></table>
<div id="warnings"></div>
<p><a href="./">back to Locust</a> &middot; <a href="./telemetry">telemetry</a></p>
<script>
const escapes = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, c => escapes[c]);
const fmt = (v) => v == null ? "-" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US")
  : v.toLocaleString("en-US", {maximumSignificantDigits: 3});
function chart(runs) {
  const svg = document.getElementById("chart"), W = 900, H = 240, L = 60, B = 30;
  const points = runs.slice().reverse();  // oldest first, left to right
  if (!points.length) { svg.innerHTML = ""; return; }
  const yMax = Math.max(1, ...points.map(r => r.rows_per_s)) * 1.1;
  const x = i => L + (W - L - 20) * (points.length > 1 ? i / (points.length - 1) : 0.5);
  const y = v => H - B - (H - B - 10) * v / yMax;
  let body = "";
  for (let i = 0; i <= 4; i++) {
    const v = yMax * i / 4;
    body += `<line x1="${L}" x2="${W - 10}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/>` +
      `<text x="${L - 5}" y="${y(v) + 4}" font-size="11" text-anchor="end">${fmt(v)}</text>`;
  }
  body += `<path d="${points.map((r, i) => (i ? "L" : "M") + x(i) + "," + y(r.rows_per_s)).join("")}"` +
    ` fill="none" stroke="#1f77b4" stroke-width="2"/>`;
  points.forEach((r, i) => { body += `<circle cx="${x(i)}" cy="${y(r.rows_per_s)}" r="4" fill="#1f77b4">` +
    `<title>${esc(r.ref)} ${esc(r.label)}: ${fmt(r.rows_per_s)} rows/s</title></circle>`; });
  body += `<text x="${W / 2}" y="${H - 8}" font-size="12" text-anchor="middle">rows/s of each kept run, oldest` +
    ` to newest</text>`;
  svg.innerHTML = body;
}
async function load() {
  const runs = await (await fetch("./runs/data")).json();
  let rows = "<tr><th></th><th>run</th><th>started</th><th>label</th><th>classes</th><th>rows/s</th>" +
    "<th>MB/s</th><th>freshness p99 ms</th><th>lost</th><th>verdict</th><th>checks</th></tr>";
  for (const r of runs) {
    rows += `<tr><td><input type="checkbox" name="run" value="${esc(r.ref)}"></td><td>${esc(r.ref)}</td>` +
      `<td>${esc(r.started_at)}</td><td>${esc(r.label)}</td><td>${esc(r.classes)}</td>` +
      `<td>${fmt(r.rows_per_s)}</td><td>${fmt(r.mb_per_s)}</td><td>${fmt(r.freshness_p99_ms)}</td>` +
      `<td>${fmt(r.lost)}</td><td>${esc(r.verdict)}</td><td>${esc(r.checks)}</td></tr>`;
  }
  document.getElementById("runs").innerHTML = runs.length ? rows : "<tr><td>no runs kept yet</td></tr>";
  chart(runs);
}
async function compare() {
  const picked = [...document.querySelectorAll("input[name=run]:checked")].map(box => box.value);
  const query = picked.map(ref => "run=" + encodeURIComponent(ref)).join("&");
  const answer = await (await fetch("./runs/compare?" + query)).json();
  const table = document.getElementById("comparison"), message = document.getElementById("message");
  if (answer.error) { message.textContent = answer.error; table.innerHTML = ""; return; }
  message.textContent = "";
  let rows = "<tr><th>figure</th>" + answer.groups.map(g => `<th>${esc(g.name)}</th>`).join("") + "</tr>";
  for (const row of answer.rows) {
    rows += `<tr><td>${esc(row.figure)}</td>` + row.values.map((v, i) => {
      const d = row.deltas[i];
      const change = d ? ` <span class="${d.better ? "better" : (d.abs ? "worse" : "")}">` +
        `(${d.abs >= 0 ? "+" : ""}${fmt(d.abs)}${d.pct == null ? "" : ", " + (d.pct >= 0 ? "+" : "") +
        d.pct.toFixed(1) + "%"})</span>` : "";
      return `<td>${v ? fmt(v.median) : "-"}${change}</td>`;
    }).join("") + "</tr>";
  }
  table.innerHTML = rows;
  document.getElementById("warnings").innerHTML =
    answer.warnings.map(w => `<div class="warning">warning: ${esc(w)}</div>`).join("");
}
document.getElementById("compare").addEventListener("click", compare);
load();
</script></body></html>
"""
