"""The generator's own counts of what it composed: the expected answers of the analysts' queries.

While composing a trace, the generator keeps a few facts about it (`TraceFacts`: which topology, which spans
failed, the model and team, each log's span and severity): references to values it computed anyway, plus one
small int per log record. A tuple per event (logs and metrics) cost the generator ~6 % in a same-process A/B,
much of it for the garbage collector to track them; metrics are left out, which keeps the cost under 3 %.

`GeneratedCounts` adds up the facts of the traces handed to a writer, and expands them, once at the end, into
what the queries count: spans and error spans per service (error_rates, latency_percentiles), log records per
severity and service (log_severity), model calls per model and team (ai_cost_by_model_team), calls and errors
per caller and callee (service_dependency_map). `firehose chaos` checks them against those queries' results
over a window covering all the data: correct results under load, proved without asking another SQL query.
"""

from __future__ import annotations

from collections import Counter

from telemetry.pools import SEVERITIES, SpanShape

SPAN_BITS = 4
"""Bits of a span's index in its trace: a topology has at most 12 spans (telemetry.pools._topology)."""
SEVERITY_BITS = 5
"""Bits of an OpenTelemetry severity number (1..24)."""
LOG_TOPOLOGY_SHIFT = SPAN_BITS + SEVERITY_BITS
"""A log's fact is `topology << LOG_TOPOLOGY_SHIFT | span << SEVERITY_BITS | severity number`."""
_SEVERITY_TEXT = {number: text for number, text, _weight in SEVERITIES}


TraceFacts = tuple[int, list[bool], str, str, list[int]]
"""What one trace holds, as the generator composed it: (topology, errors, model, team, logs).

- topology: index of the trace's shape in `Pools.topologies` (its spans' services and parent links);
- errors: per span of the shape, whether it failed (status_code 2);
- model: the model every model span of the trace called; team: the engineer's team (`team` attribute);
- logs: each log record's topology, span and severity number, encoded (LOG_TOPOLOGY_SHIFT).
A plain tuple: a NamedTuple's constructor alone cost the generator ~2 % (same-process A/B).
"""


def _nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), count in sorted(counter.items()):
        nested.setdefault(outer, {})[inner] = count
    return nested


class GeneratedCounts:
    """The facts of many traces, added up; `as_dict` gives the queries' expected counts (JSON-able)."""

    def __init__(self, topologies: tuple[tuple[SpanShape, ...], ...]) -> None:
        self._topologies = topologies
        self._model_spans = [sum(span.is_model for span in shape) for shape in topologies]
        self._traces: Counter[int] = Counter()
        self._errors: Counter[tuple[int, int]] = Counter()
        self._model_calls: Counter[tuple[str, str]] = Counter()
        self._logs: Counter[int] = Counter()

    def add(self, facts: TraceFacts) -> None:
        """Count one trace: a few counter increments; the per-span work waits for `as_dict`."""
        topology, errors, model, team, log_keys = facts
        self._traces[topology] += 1
        if True in errors:  # ~1 trace in 4 has an error span (3 % of ~8.5 spans)
            self._errors.update((topology, i) for i, error in enumerate(errors) if error)
        self._model_calls[model, team] += self._model_spans[topology]
        logs = self._logs
        for key in log_keys:  # not Counter.update: its checks cost more than these few increments
            logs[key] += 1

    def as_dict(self) -> dict:
        """Expected counts per query's grouping, as nested dicts keyed by names (mergeable with `merge_counts`)."""
        spans: Counter[str] = Counter()
        calls: Counter[tuple[str, str]] = Counter()
        for topology, traces in self._traces.items():
            shape = self._topologies[topology]
            for span in shape:
                spans[span.service] += traces
                if span.parent >= 0 and shape[span.parent].service != span.service:
                    calls[shape[span.parent].service, span.service] += traces
        error_spans: Counter[str] = Counter()
        call_errors: Counter[tuple[str, str]] = Counter()
        for (topology, index), errors in self._errors.items():
            shape = self._topologies[topology]
            span = shape[index]
            error_spans[span.service] += errors
            if span.parent >= 0 and shape[span.parent].service != span.service:
                call_errors[shape[span.parent].service, span.service] += errors
        span_mask = (1 << SPAN_BITS) - 1
        logs: Counter[tuple[str, str]] = Counter()
        for key, records in self._logs.items():
            span = self._topologies[key >> LOG_TOPOLOGY_SHIFT][key >> SEVERITY_BITS & span_mask]
            logs[_SEVERITY_TEXT[key & (1 << SEVERITY_BITS) - 1], span.service] += records
        return {
            "traces": sum(self._traces.values()),
            "spans": dict(sorted(spans.items())),
            "error_spans": dict(sorted(error_spans.items())),
            "logs": _nested(logs),
            "model_calls": _nested(+self._model_calls),  # + drops the zero counts of model-free traces
            "service_calls": _nested(calls),
            "service_call_errors": _nested(call_errors),
        }


def merge_counts(parts: list[dict]) -> dict:
    """Several `GeneratedCounts.as_dict()`s (processes, or a prefill and a run) added up, in the same shape."""
    merged: dict = {}
    for part in parts:
        _add_into(merged, part)
    return _sorted(merged)


def _add_into(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def _sorted(tree: dict) -> dict:
    return {key: _sorted(value) if isinstance(value, dict) else value for key, value in sorted(tree.items())}
