"""The live telemetry of the master (or the only process), and the outputs it feeds.

It merges the processes' snapshots (from the workers' stats reports and final reports, or the local process's
own counters), samples them every second while a run lasts, adds the live totals to the summary, and feeds the
web UI (webui.py), the headless progress line (progress.py), the --csv history (history.py) and, when Locust
quits, the --html report (html.py). The run's lifecycle (firehose.run.lifecycle) calls it from Locust's events,
in the order its steps need.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

import gevent
from locust.env import Environment

from firehose.report import html, webui
from firehose.report.form import OptionCheck
from firehose.report.history import HistoryFile
from firehose.report.live import SAMPLE_S, LiveTelemetry
from firehose.report.progress import PROGRESS_S, progress_line
from firehose.strategies import class_names
from telemetry.layout import TABLES


class Telemetry:
    """The master's (or only process's) live telemetry and the outputs it feeds."""

    def __init__(
        self, environment: Environment, local: Callable[[], dict | None] | None, check_options: OptionCheck
    ) -> None:
        """`local`: this process's own snapshot now, when it runs users too (else None); `check_options`: the
        command line's checks, which the web UI's start form gets too."""
        self.environment = environment
        self.options = environment.parsed_options
        self.live = LiveTelemetry(local=local)
        self.history = HistoryFile(self.options.csv_prefix) if getattr(self.options, "csv_prefix", None) else None
        self._sampler: gevent.Greenlet | None = None
        self.gauges: Callable[[], dict[str, int]] = dict
        """Gauges of the master's own (the analysts' replica lag), added to the processes' in each view."""
        self._last_progress = 0.0
        self.progress = bool(getattr(self.options, "headless", False)) and not getattr(
            self.options, "only_summary", False
        )
        if environment.web_ui is not None:
            webui.install(environment, self.live, check_options)

    def begin(self, run_id: int) -> None:
        """A run was recorded (its id): count it from now."""
        self.live.begin(run_id, class_names(self.environment.user_classes))
        if self.history is not None:
            self.history.begin(self.live.started_at)
        self._last_progress = time.time()
        if self._sampler is None:
            self._sampler = gevent.spawn(self._sample_forever)

    def absorb(self, snapshot: dict) -> None:
        """A worker's snapshot, from its stats report."""
        self.live.absorb(snapshot)

    def _sample_forever(self) -> None:
        while True:
            gevent.sleep(SAMPLE_S)
            if self.live.summary is None:
                self.sample()

    def sample(self, *, final: bool = False) -> dict | None:
        view = self.live.sample()
        if view is None:
            return None
        view["gauges"].update(self.gauges())
        if self.history is not None:
            self.history.offer(self.live.history[-1], final=final)
        if self.progress and not final and time.time() - self._last_progress >= PROGRESS_S:
            self._last_progress = time.time()
            sys.stdout.write(progress_line(view, self.live.started_at) + "\n")
            sys.stdout.flush()
        return view

    def final_totals(self, final_reports: Iterable[dict]) -> dict:
        """The summary's "live" section: the live counters merged with every process's final report."""
        for report in final_reports:
            self.live.absorb(report)
        view = self.sample(final=True) or {}
        total = view.get("total", {})
        return {
            "processes": view.get("processes", 0),
            "acknowledged": total.get("acknowledged", 0),
            "received": total.get("received", 0),
            "buffered": total.get("buffered", 0),
            # every table, also for a run stopped before any process reported (the schema wants the three)
            "by_table": {table: view.get("by_table", {}).get(table, {}).get("acknowledged", 0) for table in TABLES},
        }

    def end(self, summary) -> None:
        """The run ended: its summary (firehose.run.summary.RunSummary, None when none was made) in the web UI
        from now on, which then reports the run's end."""
        if summary is not None and summary.run_id == self.live.run_id:
            self.live.summary = {**summary.as_dict(), "text": summary.render()}
        self.live.ending = False

    def on_quitting(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
        if self.history is not None:
            self.history.close()
        if html_file := getattr(self.options, "html_file", None):
            html.add_to_report(html_file, self.live)
