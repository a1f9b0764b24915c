"""Value pools: everything costly to make (Faker text, JSON serialisation, COPY escaping) is made here, once.

The generator composes events by picking from these pools, so per-event work is a few random
numbers and one string format. Fragments are stored already JSON-serialised and COPY-escaped
(`copy_escape`), ready to be pasted between the braces of a JSONB `attributes` value.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from faker import Faker

# Pool sizes: large enough that batches do not compress unrealistically well (TOAST's pglz
# would reward repetition), small enough to build in well under a second.
HEADER_VARIANTS = 512
PAYLOAD_VARIANTS = 512
LOG_BODIES = 1024
TOPOLOGIES = 256
ENGINEER_PROFILES = 512
FAKE_DATES_END = 1_767_225_600
"""2026-01-01 UTC: the latest date Faker draws for the pools. Faker's default is now, which made the pools (and so
a run's events) differ from one run to the next for the same seed."""

# Service catalogue: (service, operations). The gateway is every trace's root, so the
# dependency map has edges gateway -> router -> model providers, caches and stores.
SERVICES: dict[str, tuple[str, ...]] = {
    "api-gateway": ("POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models", "POST /v1/agents/run"),
    "auth": ("ValidateToken", "CheckQuota", "ResolveOrg"),
    "llm-router": ("RouteRequest", "SelectModel", "ApplyFallback"),
    "prompt-cache": ("Lookup", "Store"),
    "tokenizer": ("CountTokens", "Truncate"),
    "model-openai": ("chat.completions", "embeddings"),
    "model-anthropic": ("messages.create", "messages.stream"),
    "model-local": ("generate", "embed"),
    "vector-store": ("Query", "Upsert"),
    "billing": ("RecordUsage", "ComputeCost"),
    "guardrails": ("ModerateInput", "ModerateOutput", "DetectPII"),
    "postgres": ("SELECT", "INSERT", "UPDATE"),
    "redis": ("GET", "SET", "XADD"),
}
# Which services a service calls; traces are random walks down this graph.
CALLS: dict[str, tuple[str, ...]] = {
    "api-gateway": ("auth", "llm-router", "guardrails", "billing"),
    "auth": ("redis", "postgres"),
    "llm-router": ("prompt-cache", "tokenizer", "model-openai", "model-anthropic", "model-local", "vector-store"),
    "guardrails": ("model-local", "redis"),
    "billing": ("postgres", "redis"),
    "prompt-cache": ("redis",),
    "vector-store": ("postgres",),
    "tokenizer": (),
    "model-openai": (),
    "model-anthropic": (),
    "model-local": (),
    "postgres": (),
    "redis": (),
}
MODEL_SERVICES = {"model-openai", "model-anthropic", "model-local"}

# (model, provider, USD per 1M input tokens, USD per 1M output tokens)
MODELS: tuple[tuple[str, str, float, float], ...] = (
    ("gpt-4o", "openai", 2.50, 10.00),
    ("gpt-4o-mini", "openai", 0.15, 0.60),
    ("o3", "openai", 2.00, 8.00),
    ("claude-sonnet-4", "anthropic", 3.00, 15.00),
    ("claude-haiku-3.5", "anthropic", 0.80, 4.00),
    ("llama-3.1-70b", "local", 0.00, 0.00),
)
TEAMS = ("platform", "search", "growth", "payments", "support-ai", "data-science", "mobile", "security")
COST_CENTRES = ("CC-1001", "CC-1002", "CC-2040", "CC-3300", "CC-4100", "CC-5120")

# (metric name, unit, type)
METRIC_KINDS: tuple[tuple[str, str, str], ...] = (
    ("llm.tokens.input", "{token}", "sum"),
    ("llm.tokens.output", "{token}", "sum"),
    ("llm.cost", "USD", "sum"),
    ("http.server.duration", "ms", "histogram"),
    ("llm.time_to_first_token", "ms", "histogram"),
    ("process.cpu.utilization", "1", "gauge"),
    ("gpu.memory.used", "By", "gauge"),
    ("cache.hit_ratio", "1", "gauge"),
)
# (severity number, text, weight): OTel severity numbers.
SEVERITIES: tuple[tuple[int, str, int], ...] = ((5, "DEBUG", 10), (9, "INFO", 68), (13, "WARN", 14), (17, "ERROR", 8))


def copy_escape(text: str) -> str:
    """Escape text for PostgreSQL's COPY text format (backslash, tab, newline, carriage return)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def json_members(obj: dict) -> str:
    """The members of a JSON object without its braces, COPY-escaped: fragments concatenate with ','."""
    return copy_escape(orjson.dumps(obj).decode()[1:-1])


@dataclass(frozen=True)
class SpanShape:
    """One span of a trace topology: parent is an index into the same topology (-1 for the root).

    `columns` (service, operation and kind as COPY text) and `resource` (the service's resource
    attributes) are pre-made so composing a span pastes them instead of formatting them.
    """

    service: str
    operation: str
    kind: int
    parent: int
    resource: str
    columns: str = field(init=False)
    is_model: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", f"{self.service}\t{self.operation}\t{self.kind}")
        object.__setattr__(self, "is_model", self.service in MODEL_SERVICES)


@dataclass(frozen=True)
class EngineerProfile:
    """Who spends: the attributes every event of one engineer carries, pre-serialised."""

    members: str  # "user.id":...,"team":...,"project":...,"cost_centre":...
    sessions: tuple[str, ...]
    team: str
    """The team in `members`, kept apart so the generator can count model calls per team without parsing."""


CATALOGUE_SEED = 0
"""Pools are a fixed catalogue (same in every process); the run's seed varies what is drawn from them."""


@dataclass(frozen=True)
class Pools:
    """Everything the generator picks from. Build once per process with `Pools.build(seed)`."""

    topologies: tuple[tuple[SpanShape, ...], ...]
    resources: dict[str, str]  # service -> resource attribute members
    headers: tuple[str, ...]  # HTTP request/response header members
    payloads: tuple[str, ...]  # LLM prompt/response preview members
    log_bodies: tuple[str, ...]  # COPY-escaped plain text
    log_contexts: tuple[str, ...]  # log record attribute members (logger, thread, exception)
    histograms: tuple[str, ...]  # metric data-point members (buckets, exemplars)
    profiles: tuple[EngineerProfile, ...]

    @classmethod
    def build(cls, seed: int = 0) -> Pools:
        from telemetry.quick_faker import QuickFaker  # here: Faker's import costs ~0.3 s, and cached pools skip it

        fake = QuickFaker(seed)
        rng = random.Random(seed)
        resources = {service: _resource(fake, service) for service in SERVICES}
        return cls(
            topologies=tuple(_topology(rng, resources) for _ in range(TOPOLOGIES)),
            resources=resources,
            headers=tuple(_headers(fake) for _ in range(HEADER_VARIANTS)),
            payloads=tuple(_payload(fake) for _ in range(PAYLOAD_VARIANTS)),
            log_bodies=tuple(copy_escape(fake.prose(260)) for _ in range(LOG_BODIES)),
            log_contexts=tuple(_log_context(fake, rng) for _ in range(PAYLOAD_VARIANTS)),
            histograms=tuple(_histogram(rng) for _ in range(PAYLOAD_VARIANTS)),
            profiles=tuple(_profile(fake, rng) for _ in range(ENGINEER_PROFILES)),
        )

    @classmethod
    def cached(cls, seed: int = CATALOGUE_SEED) -> Pools:
        """`build(seed)`, read from a file made by an earlier process when there is one (~15 ms instead of ~1 s of
        CPU: every Locust process, worker and tool builds the same catalogue), else built and stored for the next."""
        path = cache_path(seed)
        try:
            with path.open("rb") as file:
                pools = pickle.load(file)
            if isinstance(pools, cls):
                return pools
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError):
            pass  # none yet, or unreadable: build it
        pools = cls.build(seed)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_bytes(pickle.dumps(pools, protocol=pickle.HIGHEST_PROTOCOL))
            partial.replace(path)  # atomic: a process reading it never sees half a file
        except OSError:
            pass  # a read-only cache costs the build, nothing else
        return pools


def cache_path(seed: int) -> Path:
    """The cache file of `seed`'s pools, named by a digest of everything they are made from (this package's
    code, Faker's and orjson's versions), so a change to any of them builds new pools instead of reading stale ones.
    Under FIREHOSE_CACHE_DIR, else the user's cache directory."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(f"{version('faker')} {version('orjson')}".encode())
    base = (
        os.environ.get("FIREHOSE_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "firehose"
    )
    return Path(base) / f"pools-{seed}-{digest.hexdigest()[:16]}.pickle"


def _hex(fake: Faker, digits: int) -> str:
    return "%0*x" % (digits, fake.random.getrandbits(4 * digits))


def _topology(rng: random.Random, resources: dict[str, str]) -> tuple[SpanShape, ...]:
    """A trace of 5..12 spans rooted at the gateway, each child calling a service its parent calls."""
    size = rng.randint(5, 12)
    root_op = rng.choice(SERVICES["api-gateway"])
    spans = [SpanShape("api-gateway", root_op, 2, -1, resources["api-gateway"])]
    while len(spans) < size:
        parent = rng.randrange(len(spans))
        callees = CALLS[spans[parent].service]
        if not callees:
            continue
        service = rng.choice(callees)
        # The caller records a client span; we keep one span per hop (the server side), like a
        # sampled trace whose client spans were dropped, so every edge crosses services.
        kind = 3 if service in ("postgres", "redis") or service in MODEL_SERVICES else 2
        spans.append(SpanShape(service, rng.choice(SERVICES[service]), kind, parent, resources[service]))
    return tuple(spans)


def _resource(fake: Faker, service: str) -> str:
    return json_members(
        {
            "service.name": service,
            "service.namespace": "ai-platform",
            "service.version": f"{fake.random_int(1, 9)}.{fake.random_int(0, 40)}.{fake.random_int(0, 99)}",
            "deployment.environment": "production",
            "host.name": f"{service}-{_hex(fake, 8)}",
            "host.arch": "amd64",
            "k8s.cluster.name": "prod-eu-west-1",
            "k8s.namespace.name": "ai-platform",
            "k8s.pod.name": f"{service}-{_hex(fake, 10)}-{fake.lexify('?????').lower()}",
            "k8s.node.name": f"ip-10-{fake.random_int(0, 255)}-{fake.random_int(0, 255)}-{fake.random_int(0, 255)}",
            "cloud.provider": "aws",
            "cloud.region": "eu-west-1",
            "cloud.availability_zone": f"eu-west-1{fake.random_element('abc')}",
            "container.image.name": f"registry.internal/ai-platform/{service}",
            "container.image.tag": fake.sha1()[:12],
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": "1.27.0",
            "process.runtime.name": "cpython",
            "process.runtime.version": "3.11.7",
            "process.executable.path": "/usr/local/bin/python3.11",
            "process.command_line": f"/usr/local/bin/python3.11 -m {service.replace('-', '_')}.main --config "
            f"/etc/{service}/config.yaml --workers {fake.random_int(2, 32)} --log-level info",
            "os.type": "linux",
            "os.description": "Debian GNU/Linux 12 (bookworm) 6.1.0-28-cloud-amd64",
            "host.id": fake.uuid4(),
            "service.instance.id": fake.uuid4(),
            "k8s.deployment.name": service,
            "k8s.replicaset.name": f"{service}-{_hex(fake, 10)}",
        }
    )


def _headers(fake: Faker) -> str:
    return json_members(
        {
            "http.request.header.user_agent": fake.user_agent(),
            "http.request.header.accept": "application/json, text/event-stream",
            "http.request.header.accept_language": fake.locale().replace("_", "-"),
            "http.request.header.x_forwarded_for": f"{fake.ipv4_public()}, {fake.ipv4_private()}",
            "http.request.header.x_request_id": fake.uuid4(),
            "http.request.header.traceparent_vendor": fake.hexify("^" * 24),
            "http.request.header.referer": fake.link(),
            "http.request.header.content_type": "application/json",
            "http.request.header.content_length": fake.random_int(200, 90000),
            "http.response.header.content_type": "application/json",
            "http.response.header.x_ratelimit_remaining": fake.random_int(0, 10000),
            "http.response.header.x_ratelimit_reset": fake.iso8601(end_datetime=FAKE_DATES_END),
            "http.response.header.cache_control": "no-store",
            "client.address": fake.ipv4_public(),
            "client.port": fake.port_number(),
            "server.address": fake.hostname(),
            "url.full": fake.link() + "?" + fake.uri_extension().strip(".") + "=" + fake.term(),
            "user_agent.original": fake.user_agent(),
            "http.request.header.cookie": f"session={_hex(fake, 64)}; _ga=GA1.2.{fake.random_int()}."
            f"{fake.unix_time(end_datetime=FAKE_DATES_END):.0f}; theme=dark; consent={_hex(fake, 40)}",
            "http.request.header.baggage": f"tenant.id={fake.uuid4()},feature.flags={fake.term()}|{fake.term()}|"
            f"{fake.term()},experiment={_hex(fake, 16)}",
        }
    )


def _payload(fake: Faker) -> str:
    return json_members(
        {
            "gen_ai.prompt.preview": fake.prose(600),
            "gen_ai.completion.preview": fake.prose(520),
            "gen_ai.request.temperature": round(fake.pyfloat(min_value=0, max_value=1.2), 2),
            "gen_ai.request.top_p": 0.95,
            "gen_ai.request.max_tokens": fake.random_element((256, 512, 1024, 2048, 4096)),
            "gen_ai.response.finish_reason": fake.random_element(("stop", "length", "tool_calls")),
            "gen_ai.tool.names": [fake.term() + "_" + fake.term() for _ in range(3)],
        }
    )


def _log_context(fake: Faker, rng: random.Random) -> str:
    frames = "\n".join(
        f'  File "/app/{fake.term()}/{fake.term()}.py", line {rng.randint(10, 900)}, in {fake.term()}_{fake.term()}'
        for _ in range(18)
    )
    return json_members(
        {
            "logger.name": f"app.{fake.term()}.{fake.term()}",
            "thread.name": f"worker-{rng.randint(1, 64)}",
            "code.filepath": f"/app/{fake.term()}/{fake.term()}.py",
            "code.lineno": rng.randint(10, 900),
            "code.function": f"{fake.term()}_{fake.term()}",
            "exception.type": rng.choice(("TimeoutError", "RateLimitError", "ValidationError", "KeyError")),
            "exception.stacktrace": "Traceback (most recent call last):\n" + frames,
        }
    )


def _histogram(rng: random.Random) -> str:
    bounds = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]
    return json_members(
        {
            "data_point.explicit_bounds": bounds,
            "data_point.bucket_counts": [rng.randint(0, 5000) for _ in range(len(bounds) + 1)],
            "data_point.count": rng.randint(1, 80000),
            "data_point.sum": round(rng.uniform(10, 1e6), 3),
            "data_point.min": round(rng.uniform(0, 5), 3),
            "data_point.max": round(rng.uniform(5000, 12000), 3),
            "data_point.exemplars": [
                {"value": round(rng.uniform(0, 9000), 3), "filtered.http.route": "/v1/chat/completions"}
                for _ in range(14)
            ],
            "aggregation.temporality": "cumulative",
            "scope.name": "opentelemetry.instrumentation.openai",
            "scope.version": "0.48b0",
        }
    )


def _profile(fake: Faker, rng: random.Random) -> EngineerProfile:
    team = rng.choice(TEAMS)
    members = json_members(
        {
            "enduser.id": fake.user_name(),
            "enduser.email": fake.email(),
            "team": team,
            "project": f"{team}-{fake.term()}",
            "cost_centre": rng.choice(COST_CENTRES),
        }
    )
    sessions = tuple(fake.uuid4() for _ in range(rng.randint(2, 6)))
    return EngineerProfile(members, sessions, team)
