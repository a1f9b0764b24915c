"""The generator's shape: volume, size, trace structure, errors, determinism (no database needed)."""

from collections import defaultdict

import pytest

import telemetry.pools as pools_module
from telemetry.generator import ERROR_SHARE, EngineerTelemetry, EventIds, TraceRows
from telemetry.layout import COLUMNS, parse_row
from telemetry.pools import Pools, cache_path

ANCHOR_US = 1_764_000_000_000_000
USERS = 100


@pytest.fixture(scope="module")
def population(pools):
    """All traces of USERS seeded engineers."""
    ids = EventIds(1)
    return [list(EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids)) for seed in range(USERS)]


def test_events_per_engineer_average_1900(population):
    mean = sum(len(rows) for traces in population for rows in traces) / USERS
    assert 1900 * 0.95 <= mean <= 1900 * 1.05


def test_rows_average_3_kb(population):
    sizes = [len(line.encode()) for traces in population for rows in traces for line in _lines(rows)]
    assert 3000 * 0.9 <= sum(sizes) / len(sizes) <= 3000 * 1.1


def test_rows_have_their_tables_columns(population):
    for rows in population[0]:
        for table, lines in (("spans", rows.spans), ("metrics", rows.metrics), ("logs", rows.logs)):
            for line in lines:
                assert line.endswith("\n")
                assert len(parse_row(line)) == len(COLUMNS[table])


def test_traces_have_5_to_12_spans_with_parents_in_the_same_trace(population):
    services_seen = set()
    for traces in population:
        for rows in traces:
            spans = [parse_row(line) for line in rows.spans]
            assert 5 <= len(spans) <= 12
            trace_ids = {span[1] for span in spans}
            assert len(trace_ids) == 1
            span_ids = {span[2] for span in spans}
            roots = [span for span in spans if span[3] is None]
            assert len(roots) == 1
            for span in spans:
                assert span[3] is None or span[3] in span_ids
                services_seen.add(span[4])
            # metrics and logs point at spans of their trace
            for line in rows.metrics:
                metric = parse_row(line)
                assert metric[7] in trace_ids and metric[8] in span_ids
            for line in rows.logs:
                log = parse_row(line)
                assert log[5] in trace_ids and log[6] in span_ids
    assert len(services_seen) >= 10


def test_parent_child_edges_cross_services(population):
    edges = set()
    for rows in population[0]:
        spans = {span[2]: span for span in map(parse_row, rows.spans)}
        for span in spans.values():
            if span[3] is not None:
                edges.add((spans[span[3]][4], span[4]))
    assert any(parent != child for parent, child in edges)
    assert len(edges) >= 8


def test_error_share_is_as_designed(population):
    statuses = [parse_row(line)[10] for traces in population for rows in traces for line in rows.spans]
    share = statuses.count("2") / len(statuses)
    assert abs(share - ERROR_SHARE) < 0.005
    assert set(statuses) == {"1", "2"}


def test_ai_spend_attributes_present(population):
    import orjson

    model_spans = [
        orjson.loads(parse_row(line)[12])
        for rows in population[0]
        for line in rows.spans
        if line.split("\t")[4].startswith("model-")
    ]
    assert model_spans
    for attributes in model_spans:
        for key in ("gen_ai.request.model", "gen_ai.usage.input_tokens", "ai.cost_usd", "team", "project",
                    "cost_centre", "session.id", "enduser.id"):  # fmt: skip
            assert key in attributes


def test_every_attributes_value_is_valid_json(population):
    import orjson

    for rows in population[0]:
        for line in [*rows.spans, *rows.metrics, *rows.logs]:
            assert isinstance(orjson.loads(parse_row(line)[-1]), dict)


def test_same_seed_same_events_other_seed_other_events(pools):
    def rows_of(seed):
        traces = EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(EventIds(7))
        return [line for rows in traces for line in _lines(rows)]

    assert rows_of(42) == rows_of(42)
    assert rows_of(42) != rows_of(43)


def test_event_ids_are_unique_and_carry_the_writer_key(pools):
    ids = EventIds(5)
    seen = defaultdict(int)
    for seed in range(3):
        for rows in EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids):
            for line in _lines(rows):
                seen[int(line.split("\t", 1)[0])] += 1
    assert max(seen.values()) == 1
    assert {event_id >> 32 for event_id in seen} == {5}


def _lines(rows: TraceRows):
    return [*rows.spans, *rows.metrics, *rows.logs]


def test_cached_pools_are_the_built_ones_and_a_bad_cache_file_is_rebuilt(pools, tmp_path, monkeypatch):
    monkeypatch.setenv("FIREHOSE_CACHE_DIR", str(tmp_path))
    path = cache_path(0)
    assert not path.exists()
    assert Pools.cached(0) == pools and path.exists()  # built, then stored
    stored = path.stat().st_mtime_ns
    assert Pools.cached(0) == pools and path.stat().st_mtime_ns == stored  # read, not rebuilt
    path.write_bytes(b"not a pickle")
    assert Pools.cached(0) == pools and path.read_bytes() != b"not a pickle"
    assert [file.name for file in tmp_path.iterdir()] == [path.name]  # no partial file left


def test_the_pools_cache_file_changes_with_their_code(tmp_path, monkeypatch):
    """Pools made by other code (or another Faker) are never read: the file name carries a digest of both."""
    monkeypatch.setenv("FIREHOSE_CACHE_DIR", str(tmp_path))
    before = cache_path(0)
    monkeypatch.setattr(pools_module, "version", lambda package: "0.0-other")
    assert cache_path(0) != before and cache_path(0).parent == before.parent
