"""Attach the live telemetry to a Locust process, through Locust's events only (`attach`).

- In a worker: add the process's snapshot to each stats report (`report_to_master`).
- On the master (or the only process): merge the snapshots (`worker_report`, or the local process's own
  counters), sample them every second while a run lasts, add the live totals to the summary, and feed the
  web UI (webui.py), the headless progress line (progress.py), the --csv history (history.py) and, when
  Locust quits, the --html report (html.py).
"""

from __future__ import annotations

import sys
import time

import gevent
from locust.env import Environment

from firehose.report import html, webui
from firehose.report.history import HistoryFile
from firehose.report.live import SAMPLE_S, LiveTelemetry, process_snapshot
from firehose.report.progress import PROGRESS_S, progress_line
from firehose.strategies import class_names
from services.postgres import redact
from telemetry.layout import TABLES

LIVE = "firehose_live"
"""Key of a worker's stats report (events.report_to_master): its live snapshot, histograms encoded."""


class Telemetry:
    """The master's (or only process's) live telemetry and the outputs it feeds."""

    def __init__(self, environment: Environment, firehose) -> None:
        self.environment = environment
        self.firehose = firehose
        self.options = environment.parsed_options
        process = firehose.process
        self.live = LiveTelemetry(local=self._local_snapshot if process is not None else None)
        self.history = HistoryFile(self.options.csv_prefix) if getattr(self.options, "csv_prefix", None) else None
        self._sampler: gevent.Greenlet | None = None
        self._last_progress = 0.0
        self.progress = bool(getattr(self.options, "headless", False)) and not getattr(
            self.options, "only_summary", False
        )

    def _local_snapshot(self) -> dict | None:
        run = self.firehose.process_run
        return process_snapshot(run, encode=False) if run is not None else None

    @property
    def coordinator(self):
        return self.firehose.coordinator

    def on_test_start(self) -> None:
        """After the coordinator recorded the run."""
        if self.coordinator.run is None:
            return
        self.live.begin(self.coordinator.run.run_id, class_names(self.environment.user_classes))
        if self.history is not None:
            self.history.begin(self.live.started_at)
        self._last_progress = time.time()
        if self._sampler is None:
            self._sampler = gevent.spawn(self._sample_forever)

    def _sample_forever(self) -> None:
        while True:
            gevent.sleep(SAMPLE_S)
            if self.live.summary is None:
                self.sample()

    def sample(self, *, final: bool = False) -> dict | None:
        view = self.live.sample()
        if view is None:
            return None
        if self.history is not None:
            self.history.offer(self.live.history[-1], final=final)
        if self.progress and not final and time.time() - self._last_progress >= PROGRESS_S:
            self._last_progress = time.time()
            sys.stdout.write(progress_line(view, self.live.started_at) + "\n")
            sys.stdout.flush()
        return view

    def final_totals(self) -> dict:
        """The summary's "live" section: the merged live counters once every process drained."""
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

    def on_test_stop(self) -> None:
        """After the coordinator's summary: it is shown in the web UI from now on."""
        if (summary := self.coordinator.summary) is not None and summary.run_id == self.live.run_id:
            self.live.summary = {**summary.as_dict(), "text": summary.render()}

    def on_worker_report(self, client_id: str, data: dict) -> None:
        if LIVE in data:
            self.live.absorb(client_id, data[LIVE])

    def on_quitting(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
        if self.history is not None:
            self.history.close()
        if html_file := getattr(self.options, "html_file", None):
            html.add_to_report(html_file, self.live)


def attach(environment: Environment, firehose) -> Telemetry | None:
    """Attach the live telemetry to this process (`firehose`: its lifecycle.Firehose). None in a worker."""
    events = environment.events
    if firehose.coordinator is None:  # a worker: its counters travel with its stats reports

        @events.report_to_master.add_listener
        def _(data: dict, **_kwargs) -> None:
            if (run := firehose.process_run) is not None:
                data[LIVE] = process_snapshot(run, encode=True)

        return None
    telemetry = Telemetry(environment, firehose)
    firehose.coordinator.summary_extras["live"] = telemetry.final_totals
    events.test_start.add_listener(lambda **_: telemetry.on_test_start())
    events.test_stop.add_listener(lambda **_: telemetry.on_test_stop())
    events.worker_report.add_listener(lambda client_id, data, **_: telemetry.on_worker_report(client_id, data))
    events.quitting.add_listener(lambda **_: telemetry.on_quitting())
    # The target is the database: Locust's Host field shows it (redacted), and its "no host" warning goes.
    environment.host = redact(firehose.coordinator.postgres)
    if environment.web_ui is not None:
        webui.install(environment, telemetry.live)
    return telemetry
