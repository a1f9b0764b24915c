"""Where firehose meets Locust's insides: each such seam is one function, checked here against the installed Locust.

- `webui.parser_actions` reads argparse's private `parser._actions` (argparse lists a parser's options nowhere
  else); Locust's start form reads the same list to show a locustfile's options (`ui_extra_args_dict`).
- `process_run.send_request_stats` calls a worker runner's private `_send_stats` (Locust's own periodic report),
  so a worker's request stats reach the master before its drained report.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import inspect
from types import SimpleNamespace

from locust import events
from locust.runners import WorkerRunner
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments, ui_extra_args_dict

from firehose.report import webui
from firehose.run import lifecycle, process_run
from tests.conftest import REPO

SHOWN = {"traces_per_engineer", "analyst_pool_size", "engineer_rate", "migration_probe", "drain_timeout"}
"""Options of firehose the form shows: top-level ones, and those of argument groups (the analysts', pacing's)."""
HIDDEN = {"pg_dsn", "analyst_dsn", "redis_url", "pg_setting", *webui.APPLIED_AT_START_ONLY}
"""Addresses (they may carry passwords), a repeatable option (the form breaks it) and the options applied only when
Locust starts stay out of the form."""
PACKAGES = ("firehose", "users", "writers", "telemetry", "services")


def test_parser_actions_lists_the_options_of_argument_groups_too():
    parser = get_empty_argument_parser()
    setup_parser_arguments(parser)
    locusts = set(webui.parser_actions(parser))
    lifecycle.add_arguments(parser)
    ours = [action for action in webui.parser_actions(parser) if action not in locusts]
    assert {action.dest for action in ours} >= SHOWN | HIDDEN
    assert "num_users" in {action.dest for action in locusts}  # Locust's -u, listed too


def test_locusts_start_form_shows_firehose_options_and_hides_addresses():
    """Locust's own helper for the form's extra arguments, on the parser it builds with our listener."""

    def declare(parser, **_kwargs) -> None:
        webui.declare_in_form(parser, lifecycle.add_arguments)

    events.init_command_line_parser.add_listener(declare)
    try:
        form = ui_extra_args_dict(args=["--headless"])
    finally:
        events.init_command_line_parser.remove_listener(declare)
    assert form.keys() >= SHOWN | {"mixed"} and not HIDDEN & form.keys()  # --mixed: the form's own option
    assert form["analyst_pool_size"]["default_value"] == 8 and "connections" in form["analyst_pool_size"]["help_text"]


def test_no_other_code_reads_these_private_attributes():
    """Acceptance of issue 17: `parser._actions` only in `webui.parser_actions`, and a forced stats report only in
    `process_run.send_request_stats` (a worker's own figures travel in its drain report; Locust's request stats
    need Locust's report)."""
    sources = [REPO / "locustfile.py", *(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))]
    readers = {
        str(path.relative_to(REPO)): text.count("._actions") + text.count("_send_stats")
        for path in sources
        if (text := path.read_text())
    }
    found = {path: count for path, count in readers.items() if count}
    assert found == {"firehose/report/webui.py": 1, "firehose/run/process_run.py": 1}
    assert "return list(parser._actions)" in (REPO / "firehose/report/webui.py").read_text()
    assert "    runner._send_stats()\n" in (REPO / "firehose/run/process_run.py").read_text()


def test_send_request_stats_sends_locusts_own_stats_report():
    """The installed Locust's worker runner reports its stats with `_send_stats()` (no argument but itself), and
    `send_request_stats` calls exactly that."""
    assert list(inspect.signature(WorkerRunner._send_stats).parameters) == ["self"]
    sent = []
    process_run.send_request_stats(SimpleNamespace(_send_stats=lambda: sent.append("stats")))
    assert sent == ["stats"]
