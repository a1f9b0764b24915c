"""--population: gateways speak for N engineers at E events a day each, with no object per engineer.

In process: identities derived from an index, the rate a population offers, the settings refused. End to end: the
rate counted in the database and the distinct engineers in it (200,000 engineers for 60 s), and a population of
10,000,000 in no more memory than one of 1,000 (30 s each, both at once).
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import re

import gevent
import psycopg
import pytest

from firehose.run import preflight
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.population import Identities
from tests.conftest import load_summary, run_locust
from users.population import DAY_SHAPES, Population, gateway_rate, target_per_s

ENDUSER = re.compile(r'"enduser\.id":"engineer-(\d+)"')


def options(**given) -> argparse.Namespace:
    settings = {"population": 200_000, "events_per_engineer_day": 1900.0, "day_shape": "flat"}
    return argparse.Namespace(**{**settings, **given})


def test_a_population_offers_its_days_events_spread_over_the_day_or_its_busiest_hour():
    assert target_per_s(options()) == pytest.approx(200_000 * 1900 / 86_400)
    assert gateway_rate(options(), 4) == pytest.approx(200_000 * 1900 / 86_400 / 4)
    assert target_per_s(options(day_shape="office")) == pytest.approx(target_per_s(options()) * DAY_SHAPES["office"])
    assert 1.5 < DAY_SHAPES["office"] < 3  # office hours weighted: the busiest hour well above the mean


def test_each_index_is_its_own_engineer_with_a_team_and_sessions_from_the_pools(pools):
    identities = Identities(pools, seed=7)
    telemetry = EngineerTelemetry(pools, 1, anchor_us=1_764_000_000_000_000)
    ids = EventIds(1)
    teams = {profile.team for profile in pools.profiles}
    seen = {}
    for index in (0, 1, 2, 9_999_999, 123_456):
        identities.speak_as(telemetry, index)
        rows = telemetry.trace(ids)
        users = {int(user) for row in rows.spans + rows.metrics + rows.logs for user in ENDUSER.findall(row)}
        assert users == {index}  # every event of the trace is this engineer's
        team = rows.facts[3]
        assert team in teams and f'"team":"{team}"' in rows.spans[0]
        seen[index] = team
    Identities(pools, seed=7).speak_as(telemetry, 123_456)  # from (seed, index) alone: the same in every process
    assert telemetry.trace(ids).facts[3] == seen[123_456]
    assert len(set(seen.values())) > 1  # spread over the pools, not all one profile


def test_a_population_with_its_own_rate_or_ramp_is_refused():
    for dest in ("engineer_rate", "ramp_rate"):
        with pytest.raises(preflight.Refused) as refused:
            preflight.check_population(
                argparse.Namespace(**{"engineer_rate": 0, "ramp_rate": 0, dest: 5}, population=9)
            )
        assert refused.value.option == dest and "--population" in str(refused.value)
    preflight.check_population(argparse.Namespace(population=0, engineer_rate=5, ramp_rate=0))


def count_in_database(dsn: str) -> tuple[int, int]:
    """Rows in the three tables, and distinct end-user ids in spans."""
    with psycopg.connect(dsn) as conn:
        events = conn.execute(
            "SELECT (SELECT count(*) FROM spans) + (SELECT count(*) FROM metrics) + (SELECT count(*) FROM logs)"
        ).fetchone()[0]
        users = conn.execute("SELECT count(DISTINCT attributes->>'enduser.id') FROM spans").fetchone()[0]
    return events, users


@pytest.mark.slow
@pytest.mark.usefixtures("rate_priority")  # a rate compared while other tests share the cores
def test_200000_engineers_for_60_s_write_their_days_rate_from_as_many_engineers(dsn, tmp_path):
    population, seconds = 200_000, 60
    path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "4", "-r", "4", "-t", f"{seconds}s", "--population", str(population),
        "--pg-dsn", dsn, "--summary-json", str(path), timeout=seconds + 120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = load_summary(path)
    events, users = count_in_database(dsn)
    expected = population * 1900 / 86_400  # 4,398 events/s
    assert summary["events"]["lost"] == 0
    model = summary["open_model"]
    print(f"events/s in the database {events / seconds:,.0f} (expected {expected:,.0f}), {users:,} engineers; {model}")
    assert events / seconds == pytest.approx(expected, rel=0.02), (events, model)
    traces = summary["population"]["traces"]
    assert users >= 0.9 * min(population, traces), (users, traces)
    assert model["offered_per_s"] == pytest.approx(expected, rel=0.02) and model["lag_p99_s"] is not None
    assert summary["population"]["gateways_started"] == 4 and summary["population"]["target_per_s"] == expected


@pytest.mark.slow
def test_ten_million_engineers_take_no_more_memory_than_a_thousand(dsn, tmp_path):
    # Both at the same offered rate (~2,000 events/s: E scaled), so only the population's size differs; both at once.
    rate = 2000

    def run(population: int) -> dict:
        path = tmp_path / f"summary-{population}.json"
        result = run_locust(
            "CopyEngineer", "-u", "2", "-r", "2", "-t", "30s", "--population", str(population),
            "--events-per-engineer-day", str(rate * 86_400 / population),
            "--pg-dsn", dsn, "--summary-json", str(path), timeout=150,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return load_summary(path)["population"]

    small, large = gevent.spawn(run, 1_000), gevent.spawn(run, 10_000_000)
    gevent.joinall([small, large], raise_error=True)
    (small_rss,), (large_rss,) = small.value["peak_rss_mb_per_process"], large.value["peak_rss_mb_per_process"]
    print(f"peak RSS: 1,000 engineers {small_rss:.0f} MB, 10,000,000 engineers {large_rss:.0f} MB")
    assert large.value["engineers_spoken_for"] > small.value["population"]  # it did speak for more than 1,000
    assert large_rss <= 1.10 * small_rss


def test_the_population_part_merges_and_renders_every_process():
    reports = [
        {"population": 10, "events_per_engineer_day": 1900.0, "day_shape": "flat", "gateways": 3, "gateways_here": n,
         "traces": traces, "peak_rss_mb": 100.0 + n}
        for n, traces in ((2, 4), (1, 9))
    ]  # fmt: skip
    section = Population.merge(reports)
    assert section["gateways_started"] == 3 and section["traces"] == 13 and section["engineers_spoken_for"] == 10
    assert section["peak_rss_mb_per_process"] == [102.0, 101.0]
    assert "10 engineers at 1,900 events/day" in Population.render(section)[0]
    assert Population.merge([{**reports[0], "population": 0}]) is None
