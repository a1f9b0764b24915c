"""Composes one simulated engineer's telemetry as COPY text rows, trace by trace.

Rows are produced directly in PostgreSQL's COPY text format (one `str` per row, ending in a
newline, columns in the order of schema/tables.sql): the COPY writer sends them as they are, and
the other writers split them (see `telemetry.layout`). Composing from `Pools` keeps the per-event cost to
a few random numbers and one `%` format; nothing here calls Faker or a JSON encoder.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from telemetry.counts import LOG_TOPOLOGY_SHIFT, SEVERITY_BITS, TraceFacts
from telemetry.layout import NULL, TABLES
from telemetry.pools import METRIC_KINDS, MODELS, SEVERITIES, Pools

TRACES_PER_ENGINEER = 100
"""~100 traces x (8.5 spans + 5.5 metrics + 5 logs) = ~1,900 events, the seed's per-user volume."""
ERROR_SHARE = 0.03
"""Share of spans with status_code 2 (error)."""
WINDOW_S = 3600
"""An engineer's traces start within the hour before the run's anchor time."""

# Timestamps are folded into the row formats ("%s.%06d+00": a cached second, then microseconds), so a
# row is one `%` operation; this and SpanShape's pre-joined columns keep us above 100k events/s.
SPAN_ROW = "%d\t%s\t%s\t%s\t%s\t%s.%06d+00\t%s.%06d+00\t%.3f\t%d\t%s\t{%s,%s,%s}\n"
METRIC_ROW = '%d\t%s\t%s\t%s.%06d+00\t%.6f\t%s\t%s\t%s\t%s\t{%s,%s,%s,"gen_ai.request.model":"%s"}\n'
LOG_ROW = "%d\t%s.%06d+00\t%d\t%s\t%s\t%s\t%s\t%s\t{%s,%s,%s}\n"
TRACE_SECONDS = 8
"""Seconds a trace can span: the root lasts at most ~6.02 s and children end within their parent."""

_SEVERITY_TABLE = tuple(sev for sev in SEVERITIES for _ in range(sev[2]))  # 100 entries, by weight
_ERROR_SEVERITY = SEVERITIES[-1]


@lru_cache(maxsize=1 << 16)
def _second(epoch_s: int) -> str:
    """COPY text of a timestamptz's whole second (UTC); rows append ".micros+00"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_s))


def engineer_seed(run_seed: int, process_index: int, ordinal: int) -> int:
    """The seed of a run's `ordinal`-th engineer (from 1) in a process: a run's seed replays all of them."""
    return random.Random(f"{run_seed}:{process_index}:{ordinal}").getrandbits(64)


class EventIds:
    """Event ids of one writing process: `writer_key << 32 | n`, unique across runs and processes."""

    def __init__(self, writer_key: int) -> None:
        self.writer_key = writer_key
        self._next = writer_key << 32
        self._end = (writer_key + 1) << 32

    def take(self, count: int) -> int:
        """Reserve `count` consecutive ids and return the first."""
        first = self._next
        self._next += count
        if self._next > self._end:
            raise OverflowError(f"writer key {self.writer_key} ran out of its 2**32 event ids")
        return first


@dataclass
class TraceRows:
    """The rows one trace produced, per table, and what the generator knows of them (`facts`)."""

    spans: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    facts: TraceFacts | None = None
    """The trace's facts for the generator's own counts (telemetry.counts); None for rows made elsewhere."""

    def __len__(self) -> int:
        return len(self.spans) + len(self.metrics) + len(self.logs)

    def by_table(self) -> tuple[tuple[str, list[str]], ...]:
        """(table, rows) for each table of the layout, in its order."""
        return tuple((table, getattr(self, table)) for table in TABLES)


class LiveClock:
    """--timestamps live: the data's time now, in microseconds since the epoch: the run's anchor (its start) plus the
    time since, `scale` times faster (60: a run's minute stands for an hour), so rows carry the time they are written
    and time moves forward through the partitions."""

    def __init__(self, anchor_us: int, scale: float = 1.0) -> None:
        self.anchor_us = anchor_us
        self.scale = scale

    def __call__(self) -> int:
        return self.at(time.time())

    def at(self, wall_s: float) -> int:
        """The data's time at wall-clock time `wall_s`."""
        return self.anchor_us + int((wall_s * 1_000_000 - self.anchor_us) * self.scale)


class EngineerTelemetry:
    """One simulated engineer: `traces` traces with their metrics and logs, deterministic from `seed`.

    `anchor_us` (microseconds since the epoch) ends the time window the traces fall in; pass it
    explicitly for reproducible output, as the run does with its start time. With a `clock` (LiveClock), each trace
    starts at the clock's time when it is composed instead (the rest stays deterministic from `seed`).
    """

    def __init__(
        self,
        pools: Pools,
        seed: int,
        *,
        anchor_us: int | None = None,
        traces: int = TRACES_PER_ENGINEER,
        window_s: int = WINDOW_S,
        clock: LiveClock | None = None,
    ) -> None:
        self._pools = pools
        self._clock = clock
        self._rng = random.Random(seed)
        self.traces_left = traces
        anchor = int(time.time() * 1_000_000) if anchor_us is None else anchor_us
        self._window_us = window_s * 1_000_000
        self._start_us = anchor - self._window_us
        profile = pools.profiles[self._rng.randrange(len(pools.profiles))]
        self.speak_as(profile.members, profile.sessions, profile.team)

    def speak_as(self, members: str, sessions: tuple[str, ...], team: str) -> None:
        """Compose the next traces as this engineer (`EngineerProfile`'s fields: a gateway speaks for many engineers
        of a population in turn, and makes no object for any of them)."""
        self._members, self._sessions, self._team = members, sessions, team

    def traces(self, ids: EventIds) -> Iterator[TraceRows]:
        """The engineer's remaining traces, one at a time (the caller yields to other greenlets between them)."""
        while self.traces_left > 0:
            self.traces_left -= 1
            yield self.trace(ids)

    def trace(self, ids: EventIds) -> TraceRows:
        """Compose one trace with its metrics and logs, numbered from `ids`."""
        pools = self._pools
        rand = self._rng.random
        bits = self._rng.getrandbits
        topology = int(rand() * len(pools.topologies))
        shape = pools.topologies[topology]
        n_spans = len(shape)
        n_metrics = 3 + int(rand() * 6)
        n_logs = 2 + int(rand() * 7)
        event_id = ids.take(n_spans + n_metrics + n_logs)

        trace_id = "%032x" % bits(128)
        span_ids = ["%016x" % bits(64) for _ in range(n_spans)]
        sessions = self._sessions
        context = '"session.id":"%s",%s' % (sessions[int(rand() * len(sessions))], self._members)
        model, provider, usd_in, usd_out = MODELS[int(rand() * len(MODELS))]
        tokens_in = 50 + int(rand() * rand() * 8000)
        tokens_out = 20 + int(rand() * rand() * 2000)
        cost = (tokens_in * usd_in + tokens_out * usd_out) / 1e6
        llm_members = (
            '"gen_ai.system":"%s","gen_ai.request.model":"%s","gen_ai.usage.input_tokens":%d,'
            '"gen_ai.usage.output_tokens":%d,"ai.cost_usd":%.6f,%s'
            % (provider, model, tokens_in, tokens_out, cost, pools.payloads[int(rand() * len(pools.payloads))])
        )
        headers = pools.headers

        rows = TraceRows()
        starts = [0] * n_spans
        ends = [0] * n_spans
        errors = [False] * n_spans
        t0 = self._start_us + int(rand() * self._window_us) if self._clock is None else self._clock()
        first_second = t0 // 1_000_000
        seconds = [_second(first_second + offset) for offset in range(TRACE_SECONDS)]
        for i, span in enumerate(shape):
            if span.parent < 0:
                start = t0
                duration = 20_000 + int(rand() * rand() * 6_000_000)
            else:
                parent_start = starts[span.parent]
                parent_duration = ends[span.parent] - parent_start
                start = parent_start + int(rand() * parent_duration * 0.4)
                duration = 50 + int(parent_duration * (0.05 + rand() * 0.5))
            starts[i] = start
            ends[i] = end = start + duration
            error = rand() < ERROR_SHARE
            errors[i] = error
            if span.is_model:
                detail = llm_members
            else:
                detail = '%s,"http.response.status_code":%d' % (
                    headers[int(rand() * len(headers))],
                    500 if error else 200,
                )
            rows.spans.append(
                SPAN_ROW
                % (
                    event_id,
                    trace_id,
                    span_ids[i],
                    NULL if span.parent < 0 else span_ids[span.parent],
                    span.columns,
                    seconds[start // 1_000_000 - first_second],
                    start % 1_000_000,
                    seconds[end // 1_000_000 - first_second],
                    end % 1_000_000,
                    duration / 1000,
                    2 if error else 1,
                    "upstream error" if error else NULL,
                    span.resource,
                    context,
                    detail,
                )
            )
            event_id += 1

        histograms = pools.histograms
        for _ in range(n_metrics):
            name, unit, kind = METRIC_KINDS[int(rand() * len(METRIC_KINDS))]
            k = int(rand() * n_spans)
            if name == "llm.tokens.input":
                value = float(tokens_in)
            elif name == "llm.tokens.output":
                value = float(tokens_out)
            elif name == "llm.cost":
                value = cost
            elif unit == "ms":
                value = (ends[k] - starts[k]) / 1000
            else:
                value = rand()
            span = shape[k]
            at = ends[k]
            rows.metrics.append(
                METRIC_ROW
                % (
                    event_id,
                    name,
                    span.service,
                    seconds[at // 1_000_000 - first_second],
                    at % 1_000_000,
                    value,
                    unit,
                    kind,
                    trace_id,
                    span_ids[k],
                    span.resource,
                    context,
                    histograms[int(rand() * len(histograms))],
                    model,
                )
            )
            event_id += 1

        bodies = pools.log_bodies
        log_contexts = pools.log_contexts
        # A log's fact is a small int (telemetry.counts' encoding): no object per event for the collector to track.
        log_facts = []
        add_log_fact, log_key, severity_bits = log_facts.append, topology << LOG_TOPOLOGY_SHIFT, SEVERITY_BITS
        for _ in range(n_logs):
            k = int(rand() * n_spans)
            number, text, _weight = _ERROR_SEVERITY if errors[k] else _SEVERITY_TABLE[int(rand() * 100)]
            add_log_fact(log_key | k << severity_bits | number)
            span = shape[k]
            at = starts[k] + int((ends[k] - starts[k]) * rand())
            rows.logs.append(
                LOG_ROW
                % (
                    event_id,
                    seconds[at // 1_000_000 - first_second],
                    at % 1_000_000,
                    number,
                    text,
                    span.service,
                    trace_id,
                    span_ids[k],
                    bodies[int(rand() * len(bodies))],
                    span.resource,
                    context,
                    log_contexts[int(rand() * len(log_contexts))],
                )
            )
            event_id += 1
        rows.facts = (topology, errors, model, self._team, log_facts)
        return rows
