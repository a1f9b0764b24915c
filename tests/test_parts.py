"""The parts of a process's run (users.run.Part, listed in firehose.run.parts): each has its section in the
summary's schema, and a part added to the list alone declares its options and reaches the summary's JSON and text."""

import argparse
import time

from locust.argument_parser import get_empty_argument_parser

from firehose.run import lifecycle, parts
from firehose.run.summary import RunSummary
from tests.conftest import SUMMARY_SCHEMA
from users.run import Part, Run


def test_every_part_has_its_own_section_in_the_summary_schema():
    names = [part.name for part in parts.PARTS]
    assert len(set(names)) == len(names)
    assert set(names) <= SUMMARY_SCHEMA["properties"].keys()


class Heartbeats(Part):
    """A part as a later issue would add one: it counts beats per process."""

    name = "heartbeats"

    def __init__(self) -> None:
        self.beats = 0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--heartbeat-interval", type=float, default=1.0)

    @classmethod
    def for_run(cls, run: Run) -> "Heartbeats":
        return cls()

    def report(self) -> dict:
        return {"beats": self.beats}

    @staticmethod
    def merge(reports: list[dict]) -> dict | None:
        return {"beats": sum(report["beats"] for report in reports)} if reports else None

    @staticmethod
    def render(section: dict) -> list[str]:
        return [f"heartbeats: {section['beats']}"]


def _report(writer_key: int, sections: dict) -> dict:
    return {"run_id": 1, "writer_key": writer_key, "writers": {}, "engineers": [0, 0], "parts": sections}


def test_a_part_added_to_the_list_alone_declares_its_options_and_reaches_the_summary(monkeypatch):
    monkeypatch.setattr(parts, "PARTS", (*parts.PARTS, Heartbeats))
    parser = get_empty_argument_parser(default_config_files=[])  # our options are Locust's custom arguments
    lifecycle.add_arguments(parser)
    assert parser.parse_args(["--heartbeat-interval", "2"]).heartbeat_interval == 2.0

    one, two = Heartbeats(), Heartbeats()
    one.beats, two.beats = 3, 4
    reports = [_report(1, {"heartbeats": one.report()}), _report(2, {"heartbeats": two.report()}), _report(3, {})]
    now = time.time()
    summary = RunSummary(1, 1, "host=127.0.0.1", now - 2, now, reports, {1: {}, 2: {}, 3: {}})
    assert summary.as_dict()["heartbeats"] == {"beats": 7}
    assert "heartbeats: 7" in summary.render().splitlines()
    assert summary.as_dict()["queries"] == {} and summary.as_dict()["open_model"] is None  # reported by none
