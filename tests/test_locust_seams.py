"""Where firehose meets Locust's insides: each such seam is one function, checked here against the installed Locust.

- `webui.parser_actions` reads argparse's private `parser._actions` (argparse lists a parser's options nowhere
  else); Locust's start form reads the same list to show a locustfile's options (`ui_extra_args_dict`).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

from locust import events
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments, ui_extra_args_dict

from firehose.report import webui
from firehose.run import lifecycle
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
    """Acceptance of issue 17: `parser._actions` only in `webui.parser_actions`, and no forced stats report
    (`runner._send_stats()`): a worker's final figures travel in its own drain report."""
    sources = [REPO / "locustfile.py", *(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))]
    readers = {
        str(path.relative_to(REPO)): text.count("._actions") + text.count("_send_stats")
        for path in sources
        if (text := path.read_text())
    }
    assert {path: count for path, count in readers.items() if count} == {"firehose/report/webui.py": 1}
    assert "return list(parser._actions)" in (REPO / "firehose/report/webui.py").read_text()
