"""The web UI's "Telemetry" tab and chart page, through Locust's own extension points only.

- The tab: `template_args` `extended_tabs` / `extended_tables` declare it, and every `/stats/requests` answer
  (which Locust's UI polls every 2 s) gets an `extended_stats` entry with its rows: rows/s and MB/s now, per
  table, per user class and in total, the reconciliation counters, and once the run ended its end state (the
  run's average rates, the analysts' query percentiles, the reconciliation line). The table's cells are text
  (Locust renders no links there): the chart page's link is in Locust's "Download Data" tab.
- The end state without a reload: Locust 2.47's page polls `/stats/requests` only while the state it reads
  there is spawning or running, and its runner turns stopped before `test_stop`, where firehose drains and
  reconciles. So while a run counted here is not summarised yet (`LiveTelemetry.ending`), `/stats/requests`
  reports the state as running; its first "stopped" carries the end state (tests/test_webui_form.py pins the
  installed page's rule).
- The chart page, `/telemetry` on Locust's own Flask app: the same figures, a chart of rows/s over the run
  (an inline SVG drawn by a few lines of inline script; nothing from the internet, so it works offline) and
  the end-of-run summary. It polls `/telemetry/data` (JSON) every second.
- The Runs page, `/runs` (runs_page.py): the kept runs, a chart of rows/s across them, two or more compared.
- The start form: its values are checked like the command line's before Locust starts anything (form.py);
  its labels show each option's help as text (defaults filled in, no format codes, short enough to fit); and
  the report of `/stats/report` gets the same firehose section as `--html` (html.py).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable

from flask import Response, before_render_template, jsonify, request
from locust.argument_parser import default_args_dict, get_parser
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING

from firehose.report import form, html, runs_page
from firehose.report.live import LiveTelemetry, percentiles_ms

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
"""Starts the tab's lines of text: Locust sorts the table by its first column, and these sort after the tables
(among themselves, alphabetically)."""
PACED_LINES = ("population:", "open model:")
"""The summary's lines (users/population.py, users/pacing.py) the tab repeats at the end of a paced run."""
HIDDEN_FROM_FORM = ("dsn", "url")
"""Options whose name has one of these stay out of the start form: addresses may carry passwords."""
APPLIED_AT_START_ONLY = (
    "embedded_port",
    "embedded_data_dir",
    "jsonb_compression",
    "disk_budget",
    "disk_floor",
    "analysts",
    "worker_gone_after",
    "layout",
)
"""Options firehose applies once, when Locust starts (the embedded server, the tables' levers and layout, the disk
guard, the analysts' fixed count): the form does not offer them, since a value there would change nothing."""
FORM_LABEL_CHARS = 100
"""A form label is the option's name and its help on one line, and Locust's text field cuts a longer one with
"…" (measured in Chromium at 1500 px: ~105 characters fit in an empty field's label, ~140 in a filled one's,
drawn at 3/4 size): helps that would pass this end at the last sentence or clause that fits (the whole text
is in --help and the docs)."""
FILLED_LABEL_CHARS = 130
"""The same for a field with a value (its default): the label sits small above it."""


def declare_in_form(parser: argparse.ArgumentParser, declare: Callable[[argparse.ArgumentParser], None]) -> None:
    """`declare(parser)` adds firehose's options (the form's own, --mixed, too); each is then shown in
    Locust's start form, or hidden (`show_in_form`)."""
    before = set(parser_actions(parser))
    declare(parser)
    form.add_arguments(parser)
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
    Nor do options applied only when Locust starts (`APPLIED_AT_START_ONLY`).
    """
    for action in actions:
        repeatable = isinstance(action, argparse._AppendAction)
        hidden = (
            any(word in action.dest for word in HIDDEN_FROM_FORM)
            or action.dest == "help"
            or repeatable
            or action.dest in APPLIED_AT_START_ONLY
        )
        action.include_in_web_ui = getattr(action, "include_in_web_ui", True) and not hidden
        action.is_secret = getattr(action, "is_secret", False)
        action.is_required = getattr(action, "is_required", False)
        action.is_multiple = getattr(action, "is_multiple", False)


def form_help(name: str, text: str | None, default: object) -> str:
    """Option `name`'s help as the form's label shows it: argparse's format codes filled in ("%(default)s",
    "%%"), and (but a checkbox's, which wraps) cut when the label would be longer than `FORM_LABEL_CHARS`:
    after its last whole sentence that fits, else before its last clause that fits with its parentheses
    closed."""
    text = (text or "").replace("%(default)s", str(default)).replace("%%", "%")
    if isinstance(default, bool):
        return text  # a checkbox's label wraps
    width = FORM_LABEL_CHARS if default in (None, "") else FILLED_LABEL_CHARS
    room = width - len(form.field_label(name)) - 3  # "Name (help)"
    if len(text) <= room:
        return text
    head = text[: room + 1]
    sentences = [match.start() + 1 for match in re.finditer(r"(?<!e\.g)(?<!\.\.)\.\s", head)]
    clauses = [
        match.start()
        for match in re.finditer(r";\s|:\s|,\s|\s\(|\s-\s", head)
        if head[: match.start()].count("(") == head[: match.start()].count(")")
    ]
    end = max(sentences, default=0) or max(clauses, default=0) or head.rfind(" ")
    return text[:end].rstrip(" ,;:")


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 10) % 10}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def tab_rows(live: LiveTelemetry, *, continuous: bool = False) -> list[dict]:
    """The Telemetry tab's rows (text cells) from the live view; once the run ended, its rates are the run's
    averages and its end state follows (`continuous`: engineers start over, so none ever finishes)."""
    view = live.view
    if view is None:
        return [{"name": "no run yet: start one (firehose counts rows once engineers write)"}]
    summary = live.summary
    # once the run ended, "now" is over: the run's averages over its seconds of writing (same keys)
    rate = view["rate"] if summary is None else summary["writes"]
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
            rows.append(counters(f"class {name}", row, rate["by_class"].get(name), fresh["by_class"].get(name)))
    total = counters("total", view["total"], rate, None)
    all_fresh = [p for p in (percentiles_ms(h) for h in fresh["by_class"].values()) if p["p99_ms"] is not None]
    if len(all_fresh) == 1:
        total["fresh"] = f"{_ms(all_fresh[0]['p50_ms'])} / {_ms(all_fresh[0]['p99_ms'])}"
    rows.append(total)
    rows.append({"name": INFO + rate_line(view, summary) + "; " + engineers_line(view, continuous)})
    if view["gauges"]:
        rows.append({"name": f"{INFO}gauges: " + ", ".join(f"{k} {v:,}" for k, v in view["gauges"].items())})
    rows.extend({"name": INFO + line} for line in query_lines((summary or view).get("queries")))
    if summary is not None:
        text = summary["text"].splitlines()
        rows.append({"name": INFO + text[0]})  # "firehose run N (seed S) on ...: 9.8 s writing (...)"
        # --population / --engineer-rate: the population, offered vs achieved events/s and the lag behind schedule
        rows.extend({"name": INFO + line} for line in text if line.startswith(PACED_LINES))
        rows.append({"name": INFO + text[-1]})  # "reconciliation: lost = 0, duplicates = 0, ...  [OK]"
    elif live.ending and view["total"]["received"]:
        rows.append({"name": f"{INFO}running, or committing what is buffered: the end state follows here"})
    rows.append({"name": f"{INFO}the rows/s chart and the whole summary: Download Data tab, or the address {PAGE}"})
    return rows


def rate_line(view: dict, summary: dict | None) -> str:
    """What the tab's rates are measured over: the run's seconds of writing once it ended, else the window
    of "rows/s now" as it is (shorter than RATE_WINDOW_S at the start of a run)."""
    if summary is not None:
        return f"rows/s: the run's average over its {summary['run']['writing_s']:,.1f} s of writing"
    rate = view["rate"]
    if rate["from"] is None:
        return "rows/s now: from the second sample on (one a second)"
    return (
        f"rows/s now: over the last {rate['to'] - rate['from']:.1f} s ({_clock(rate['from'])} - {_clock(rate['to'])})"
    )


def engineers_line(view: dict, continuous: bool) -> str:
    """Engineers as the run counts them: each finishes its telemetry once, or (--continuous) starts over."""
    started, finished = view["engineers"]
    if continuous:
        return f"engineers: {started:,} rounds of telemetry started (--continuous); processes {view['processes']}"
    return f"engineers finished/started {finished:,}/{started:,}; processes {view['processes']}"


def query_lines(queries: dict | None) -> list[str]:
    """The analysts' queries (so far, or at the end): count, failures, and p50/p95/p99 from the processes' HDR
    histograms merged."""
    return [
        f"query {name}: {query['count']:,} runs, {query['failures']:,} failed; p50 / p95 / p99 ms "
        f"{_ms(query['p50_ms'])} / {_ms(query['p95_ms'])} / {_ms(query['p99_ms'])} (HDR histograms)"
        for name, query in (queries or {}).items()
        if query["count"]
    ]


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


def reported_state(state: str, ending: bool) -> str:
    """The state `/stats/requests` reports: running while a run counted here is not summarised yet (it stops,
    or drains), so that Locust's page keeps polling until the end state is in; else the runner's own."""
    return STATE_RUNNING if ending and state != STATE_SPAWNING else state


def install(environment: Environment, live: LiveTelemetry, check: form.OptionCheck) -> None:
    """Add the tab, its rows in /stats/requests, the chart page, the form's checks (`check`: the command
    line's checks of a set of options) and labels, and the firehose section of /stats/report to Locust's web UI."""
    web_ui = environment.web_ui
    web_ui.template_args["extended_tabs"] = [{"title": "Telemetry", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": STRUCTURE}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": f".{PAGE}", "title": "Telemetry: rows/s chart (page)"},
        {"href": f".{runs_page.PAGE}", "title": "Runs: kept runs compared (page)"},
    ]
    app = web_ui.app

    @app.before_request
    def _check_form() -> Response | None:
        if request.method != "POST" or not request.path.endswith("/swarm"):
            return None
        own = default_args_dict()
        actions = {action.dest: action for action in parser_actions(get_parser()) if action.dest not in own}
        picked = request.form.getlist("user_classes") if web_ui.userclass_picker_is_active else None
        problem, values = form.refusal(environment, request.form, picked, actions, check)
        if problem is not None:
            return jsonify({"success": False, "message": problem, "host": environment.host})
        # Locust's view converts each value to the type of the option's current one: make that the right type
        vars(environment.parsed_options).update(values)
        return None

    @app.after_request
    def _add_telemetry(response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            body = response.get_json()
            if environment.runner is not None:
                body["state"] = reported_state(environment.runner.state, live.ending)
            continuous = bool(getattr(environment.parsed_options, "continuous", False))
            body["extended_stats"] = [{"key": TAB, "data": tab_rows(live, continuous=continuous)}]
            response.set_data(json.dumps(body))
        elif request.path.endswith("/stats/report") and response.mimetype == "text/html":
            response.set_data(html.insert_section(response.get_data(as_text=True), live))
        return response

    def _form_labels(_sender, template, context: dict, **_extra) -> None:
        for name, option in context.get("template_args", {}).get("extra_options", {}).items():
            option["help_text"] = form_help(name, option["help_text"], option["default_value"])

    before_render_template.connect(_form_labels, app, weak=False)

    @web_ui.auth_required_if_enabled
    def telemetry_page() -> Response:
        return Response(PAGE_HTML, mimetype="text/html")

    @web_ui.auth_required_if_enabled
    def telemetry_data() -> Response:
        return jsonify(page_data(live))

    app.add_url_rule(PAGE, "firehose_telemetry", telemetry_page)
    app.add_url_rule(f"{PAGE}/data", "firehose_telemetry_data", telemetry_data)
    runs_page.install(web_ui)


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
