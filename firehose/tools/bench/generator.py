"""The generator's micro-benchmarks: our events/s on one core, next to a dict-plus-orjson build and Faker per event."""

from __future__ import annotations

import datetime
import random
import time

import orjson
from faker import Faker

from firehose.tools.bench.figures import BENCH_SEED
from telemetry.generator import EngineerTelemetry, EventIds, engineer_seed
from telemetry.pools import Pools

ANCHOR_US = 1_764_000_000_000_000
"""A fixed time anchor, so every run composes the same timestamps."""


def time_generator(pools: Pools, engineers: int) -> tuple[int, float, float]:
    """Events generated, seconds of CPU on this one core, mean row bytes."""
    ids = EventIds(1)
    events = size = 0
    start = time.process_time()
    for ordinal in range(1, engineers + 1):
        seed = engineer_seed(BENCH_SEED, 0, ordinal)
        for rows in EngineerTelemetry(pools, seed, anchor_us=ANCHOR_US).traces(ids):
            events += len(rows)
            size += sum(map(len, rows.spans)) + sum(map(len, rows.metrics)) + sum(map(len, rows.logs))
    return events, time.process_time() - start, size / events


def time_dict_orjson(pools: Pools, events: int) -> float:
    """The straightforward build: one dict per event, every attribute drawn from its own value list, orjson.

    It draws from the same values our pools hold (no Faker), so the ratio measures only the composition.
    """
    rng = random.Random(BENCH_SEED)
    choices: dict[str, list] = {}
    fragments = [*pools.resources.values(), *pools.headers, *(profile.members for profile in pools.profiles)]
    for fragment in fragments:
        for key, value in orjson.loads("{" + fragment.replace("\\\\", "\\") + "}").items():
            choices.setdefault(key, []).append(value)
    start = time.process_time()
    for n in range(events):
        event = {
            "event_id": n,
            "trace_id": "%032x" % rng.getrandbits(128),
            "span_id": "%016x" % rng.getrandbits(64),
            "service_name": rng.choice(choices["service.name"]),
            "start_time": datetime.datetime.fromtimestamp(ANCHOR_US / 1e6 + n, datetime.UTC).isoformat(),
            "duration_ms": rng.random() * 1000,
            "status_code": 1,
            "attributes": {key: rng.choice(values) for key, values in choices.items()},
        }
        orjson.dumps(event)
    return events / (time.process_time() - start)


def time_faker_per_event(events: int) -> float:
    """Faker called for each event's values (what pools avoid)."""
    fake = Faker("en_US")
    start = time.process_time()
    for _ in range(events):
        event = {
            "user_agent": fake.user_agent(),
            "client": fake.ipv4_public(),
            "request_id": fake.uuid4(),
            "user": fake.user_name(),
            "email": fake.email(),
            "prompt": fake.text(max_nb_chars=600),
            "url": fake.uri(),
        }
        orjson.dumps(event)
    return events / (time.process_time() - start)
