"""The generator's own counts (telemetry.counts) agree with the rows it composed, parsed from their COPY text."""

from collections import Counter

import orjson

from telemetry.counts import SEVERITY_BITS, SPAN_BITS, GeneratedCounts, merge_counts
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import parse_row
from telemetry.pools import SEVERITIES

ANCHOR_US = 1_748_779_200_000_000


def nested(counter: Counter) -> dict:
    tree: dict = {}
    for (outer, inner), count in counter.items():
        tree.setdefault(outer, {})[inner] = count
    return tree


def test_counts_match_the_rows_composed(pools):
    ids = EventIds(5)
    counts = GeneratedCounts(pools.topologies)
    spans, logs, traces = [], [], 0
    for seed in range(4):
        for rows in EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids):
            counts.add(rows.facts)
            spans += [parse_row(line) for line in rows.spans]
            logs += [parse_row(line) for line in rows.logs]
            traces += 1
    service = {(span[1], span[2]): span[4] for span in spans}  # (trace, span id) -> service
    expected_calls, expected_call_errors, model_calls = Counter(), Counter(), Counter()
    for span in spans:
        if span[3] is not None and service[span[1], span[3]] != span[4]:
            expected_calls[service[span[1], span[3]], span[4]] += 1
            expected_call_errors[service[span[1], span[3]], span[4]] += span[10] == "2"
        attributes = orjson.loads(span[12])
        if "ai.cost_usd" in attributes:
            model_calls[attributes["gen_ai.request.model"], attributes["team"]] += 1

    result = counts.as_dict()
    assert result["traces"] == traces
    assert result["spans"] == dict(Counter(span[4] for span in spans))
    assert result["error_spans"] == dict(Counter(span[4] for span in spans if span[10] == "2"))
    assert sum(result["error_spans"].values()) > 0
    assert result["logs"] == nested(Counter((log[3], log[4]) for log in logs))
    assert result["model_calls"] == nested(model_calls)
    assert result["service_calls"] == nested(expected_calls)
    assert result["service_call_errors"] == nested(+expected_call_errors)


def test_counts_merge_by_adding_up():
    one = {"traces": 2, "spans": {"auth": 3}, "logs": {"INFO": {"auth": 1}}}
    two = {"traces": 1, "spans": {"auth": 1, "redis": 2}, "logs": {"INFO": {"auth": 2}, "WARN": {"redis": 1}}}
    assert merge_counts([one, two]) == {
        "logs": {"INFO": {"auth": 3}, "WARN": {"redis": 1}},
        "spans": {"auth": 4, "redis": 2},
        "traces": 3,
    }
    assert merge_counts([]) == {}


def test_the_encoding_of_a_log_fact_fits_its_bits(pools):
    assert max(len(shape) for shape in pools.topologies) <= 1 << SPAN_BITS
    assert max(number for number, _text, _weight in SEVERITIES) < 1 << SEVERITY_BITS
