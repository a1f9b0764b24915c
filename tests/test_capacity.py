"""`firehose capacity`: the search ends within its precision of a known threshold; one real coarse search runs.

The search is tested in process against stand-ins whose threshold is known (a probe holds up to it, and past it
delivers a ceiling, as a saturated server does); the real search runs the README's line with tiny sizes.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json

import pytest

from firehose.cli import main
from firehose.tools.capacity.main import limiting_resource
from firehose.tools.capacity.report import render_chart, render_markdown
from firehose.tools.capacity.search import Probe, search
from firehose.tools.cpu_usage import CLIENT_CLASS, SERVER_CLASSES
from tests.readme import readme_tool_command

PER_ENGINEER = 1900 / 86_400


def stand_in(threshold: int, ceilings: list[float] | None = None):
    """A probe that holds up to `threshold` engineers; past it, it delivers a ceiling (the threshold's rate, or the
    next of `ceilings`: runs that do not repeat exactly)."""
    ceilings = list(ceilings or [])

    def probe(population: int) -> Probe:
        offered = population * PER_ENGINEER
        if population <= threshold:
            return Probe(population, True, offered, offered)
        ceiling = ceilings.pop(0) if ceilings else threshold * PER_ENGINEER
        return Probe(population, False, offered, min(offered, ceiling))

    return probe


@pytest.mark.parametrize("threshold", [1, 37, 99_999, 100_000, 371_234, 5_000_000])
@pytest.mark.parametrize("start", [100_000, 1_000])
def test_the_search_ends_within_its_precision_of_the_threshold(threshold, start):
    result = search(stand_in(threshold), start, precision=0.1, max_probes=30)
    assert result.served <= threshold < result.failed
    assert result.failed / result.served - 1 <= 0.1 or result.failed - result.served == 1
    assert not result.exhausted and result.spread in (0.0, None)  # a stand-in's ceiling repeats exactly
    assert all(probe.held == (probe.population <= threshold) for probe in result.probes)


def test_the_search_stops_at_the_runs_spread_when_it_is_wider_than_the_precision():
    # Saturated runs delivered 10,000 then 8,000 events/s: a 20 % spread, so a 1 % precision is not pursued.
    result = search(stand_in(400_000, [10_000, 8_000, 9_000, 9_500]), 100_000, precision=0.01, max_probes=30)
    assert result.spread == pytest.approx(0.2) and result.resolution == pytest.approx(0.2)
    assert result.served <= 400_000 < result.failed and result.failed / result.served - 1 <= 0.2
    assert len(result.probes) < len(search(stand_in(400_000), 100_000, precision=0.01, max_probes=30).probes)


def test_the_probe_budget_is_kept_and_said():
    result = search(stand_in(371_234), 1_000, precision=0.01, max_probes=5)
    assert len(result.probes) == 5 and result.exhausted and result.served and result.failed is None


def cpu(client: float, server: float, busy: float = 0.5) -> dict:
    seconds = {CLIENT_CLASS: client * 10, SERVER_CLASSES[0]: server * 10, SERVER_CLASSES[1]: 0, SERVER_CLASSES[2]: 0}
    return {"cpu_s": seconds, "wall_s": 10, "cores": 2, "machine_busy_share": busy}


def test_what_ran_out_is_named_from_who_used_the_cpu():
    assert limiting_resource(cpu(0.95, 0.5), 0).startswith("the client's CPU")
    assert limiting_resource(cpu(0.3, 1.5), 0).startswith("the server's CPU")
    assert limiting_resource(cpu(0.3, 0.5, busy=0.99), 0).startswith("the machine's CPU")
    assert limiting_resource(cpu(0.3, 0.5), 0).startswith("neither CPU")
    assert limiting_resource(cpu(1.8, 0.1), 2).startswith("the client's CPU")  # two workers at 0.9 each


@pytest.mark.slow
def test_a_real_coarse_search_reports_every_probe_and_its_verdict(dsn, tmp_path):
    tiny = ["--start", "20000", "--duration", "5s", "--max-probes", "3", "--users", "2", "--precision", "1"]
    code = main([*readme_tool_command("capacity"), *tiny, "--pg-dsn", dsn, "--out", str(tmp_path), "--yes"])
    document = json.loads((tmp_path / "capacity.json").read_text())
    (row,) = document["strategies"].values()
    probes = row["probes"]
    assert code == 0 and row["served"] >= 20_000 and probes[0]["held"], probes
    assert 1 <= len(probes) <= 3 and [p["population"] for p in probes][:2] == [20_000, 40_000][: len(probes[:2])]
    for probe in probes:  # every probe's figures, measured: the rate it offered, the lag, who used the CPU
        assert probe["offered_per_s"] == pytest.approx(probe["target_per_s"], rel=0.1)
        assert probe["lag_p99_s"] is not None and probe["cpu"]["server_measured"] and probe["limit"]
        assert probe["held"] == (probe["population"] <= row["served"])
    markdown = (tmp_path / "capacity.md").read_text()
    assert f"serves {'at least ' if row['failed'] is None else ''}{row['served']:,} engineers" in markdown
    assert (tmp_path / "capacity.png").stat().st_size > 10_000


def test_the_report_and_chart_render_a_search(tmp_path):
    result = search(stand_in(300_000, [6_000, 6_300]), 100_000, precision=0.1)
    probes = [
        {"population": p.population, "held": p.held, "offered_per_s": p.offered_per_s,
         "achieved_per_s": p.achieved_per_s, "saturated": p.saturated, "lag_p50_s": 0.01, "lag_p99_s": 0.5,
         "lag_max_s": 0.9, "freshness_p99_s": 8.0, "lost": 0, "cpu": cpu(0.2, 1.6),
         "why_not": [] if p.held else ["lag"]}
        for p in result.probes
    ]  # fmt: skip
    document = {
        "settings": {"events_per_engineer_day": 1900.0, "day_shape": "flat", "users": 8, "duration": "15s",
                     "lag_bound_s": 1.0, "freshness_bound_s": 30.0, "date": "2026-12-03"},
        "machine": {"cores": 2, "postgres_version": "18.6"},
        "strategies": {"CopyEngineer": {
            "served": result.served, "served_per_s": result.served * PER_ENGINEER, "failed": result.failed,
            "bracket": result.bracket, "precision": 0.1, "spread": result.spread, "exhausted": result.exhausted,
            "limit": "the server's CPU", "ceiling_rows_per_s": 6_300, "probes": probes}},
    }  # fmt: skip
    markdown = render_markdown(document)
    assert f"serves {result.served:,} engineers at 1,900 events/day" in markdown
    assert "limited by the server's CPU" in markdown and "6,300 rows/s" in markdown
    assert markdown.count("\n| ") == len(probes) + 1
    render_chart(document, tmp_path / "capacity.png")
    assert (tmp_path / "capacity.png").read_bytes()[:4] == b"\x89PNG"
