"""The query files and their loader: parameters found, placeholders made, values bound by name (no server)."""

from datetime import UTC, datetime, timedelta

import pytest

from telemetry.durations import parse_duration
from users.queries import Query, load_queries, window_parameters

END = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_there_are_eight_queries_each_with_its_parameters():
    queries = load_queries()
    assert len(queries) == 8
    assert queries["metric_rollups"].parameters == ("metric_name", "window_start", "window_end")
    assert queries["trace_lookup"].parameters == ("trace_id",)
    time_filtered = {name for name, query in queries.items() if "window_start" in query.parameters}
    assert time_filtered == set(queries) - {"trace_lookup"}


@pytest.mark.parametrize("query", load_queries().values(), ids=lambda query: query.name)
def test_every_header_says_its_parameters_and_shows_psql(query):
    header = "\n".join(line for line in query.sql.splitlines() if line.startswith("--"))
    assert "Parameters:" in header and f"-f queries/{query.name}.sql" in header
    assert all(f"-v {name}=" in header for name in query.parameters)


def test_placeholders_replace_psql_variables_and_comments_are_dropped():
    query = Query("x", "-- a :'comment'\nSELECT 100 % 7 WHERE a > :'low' AND b = :'low'::int\n", ("low",))
    assert query.to_psycopg() == "SELECT 100 %% 7 WHERE a > %(low)s AND b = %(low)s::int"
    assert load_queries()["trace_lookup"].to_psycopg().count("%(trace_id)s") == 2


def test_window_parameters_end_at_the_newest_data():
    query = load_queries()["metric_rollups"]
    values = window_parameters(query, END, 900, metric_name="llm.cost", trace_id="ignored")
    assert values == {"metric_name": "llm.cost", "window_start": END - timedelta(minutes=15), "window_end": END}
    with pytest.raises(ValueError, match="metric_name"):
        window_parameters(query, END)


@pytest.mark.parametrize(
    ("text", "seconds"), [("45s", 45), ("90m", 5400), ("1h", 3600), ("3d", 259_200), ("1d12h", 129_600), ("60", 60)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "1.5h", "3 days"])
def test_not_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
