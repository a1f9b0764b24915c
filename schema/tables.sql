-- firehose telemetry schema: OpenTelemetry-shaped spans, metrics and logs.
-- Hot fields are typed columns; everything else lives in the JSONB `attributes`.
-- event_id is the primary key of every row: a retried batch can never duplicate
-- (the high 32 bits are a writer key from firehose_writer_key, the low 32 bits a
-- per-writer counter; see telemetry/generator.py).

CREATE TABLE IF NOT EXISTS spans (
    event_id        bigint PRIMARY KEY,
    trace_id        text        NOT NULL,          -- 32 hex digits (W3C trace context)
    span_id         text        NOT NULL,          -- 16 hex digits
    parent_span_id  text,                          -- NULL for a trace's root span
    service_name    text        NOT NULL,
    name            text        NOT NULL,          -- operation, e.g. "POST /v1/chat"
    kind            smallint    NOT NULL,          -- OTel SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    duration_ms     double precision NOT NULL,
    status_code     smallint    NOT NULL,          -- 0 unset, 1 ok, 2 error
    status_message  text,
    attributes      jsonb       NOT NULL
);

CREATE TABLE IF NOT EXISTS metrics (
    event_id        bigint PRIMARY KEY,
    name            text        NOT NULL,          -- e.g. "llm.tokens.output"
    service_name    text        NOT NULL,
    time            timestamptz NOT NULL,
    value           double precision NOT NULL,
    unit            text        NOT NULL,
    metric_type     text        NOT NULL,          -- gauge, sum, histogram
    trace_id        text,                          -- exemplar link to the span that produced it
    span_id         text,
    attributes      jsonb       NOT NULL
);

CREATE TABLE IF NOT EXISTS logs (
    event_id        bigint PRIMARY KEY,
    time            timestamptz NOT NULL,
    severity_number smallint    NOT NULL,          -- OTel severity: 5 debug, 9 info, 13 warn, 17 error
    severity_text   text        NOT NULL,
    service_name    text        NOT NULL,
    trace_id        text,
    span_id         text,
    body            text        NOT NULL,
    attributes      jsonb       NOT NULL
);

-- Bookkeeping: one row per run, one writer key per writing process of a run.
-- A run's rows are the event_ids in [key << 32, (key + 1) << 32) of its keys.
CREATE SEQUENCE IF NOT EXISTS firehose_writer_key;

CREATE TABLE IF NOT EXISTS firehose_runs (
    run_id      bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seed        bigint      NOT NULL,
    label       text        NOT NULL
);

CREATE TABLE IF NOT EXISTS firehose_writer_keys (
    writer_key  bigint PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES firehose_runs ON DELETE CASCADE
);

-- Rows the validated path refused, with the reason; nothing is dropped silently.
CREATE TABLE IF NOT EXISTS quarantine (
    id          bigserial PRIMARY KEY,
    run_id      bigint,
    table_name  text        NOT NULL,
    reason      text        NOT NULL,
    row_data    bytea       NOT NULL,          -- the row as received (it may hold bytes text cannot)
    received_at timestamptz NOT NULL DEFAULT now()
);

-- What each writing process connected as: which address and name a process of a run used.
ALTER TABLE firehose_writer_keys
    ADD COLUMN IF NOT EXISTS application_name text DEFAULT current_setting('application_name'),
    ADD COLUMN IF NOT EXISTS client_addr      inet DEFAULT inet_client_addr();

-- Each run's summary JSON (what --summary-json writes), kept with its run: what `firehose runs` and
-- `firehose compare` read back (the local store keeps the same).
CREATE TABLE IF NOT EXISTS firehose_run_summaries (
    run_id      bigint PRIMARY KEY REFERENCES firehose_runs ON DELETE CASCADE,
    summary     jsonb  NOT NULL
);

-- The schema's version: firehose applies this file only when it differs (a role without DDL rights can run).
COMMENT ON TABLE firehose_runs IS 'firehose schema 3';
