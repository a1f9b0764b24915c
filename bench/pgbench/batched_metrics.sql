-- BatchedEngineer's round trip for metrics, from a C client: one INSERT of 500 rows, a transaction each,
-- with the batched writer's ON CONFLICT DO NOTHING (no event_id repeats, so it skips none).
-- `firehose bench` runs it with pgbench -M prepared (direct) or -M extended (through pgBouncer 1.18, which
-- cannot keep prepared statements: the pooled writer does not prepare either), -D first_id=... -D n=0, and one
-- generated row's values as -D metrics_<column>=...
-- pgbench binds at most 255 parameters per statement, so the 500 rows come from generate_series, and each
-- value is cast from text once per row (CASE WHEN g >= 0 keeps the server from casting it once for all):
-- the server parses every row's timestamps, numbers and JSONB as it does for the writer's 500-row VALUES.
\set n :n + 1
\set first :first_id + :client_id * 16777216 + :n * 500
INSERT INTO metrics (event_id, name, service_name, time, value, unit, metric_type, trace_id, span_id, attributes)
SELECT :first::bigint + g,
       (CASE WHEN g >= 0 THEN :metrics_name END)::text,
       (CASE WHEN g >= 0 THEN :metrics_service_name END)::text,
       (CASE WHEN g >= 0 THEN :metrics_time END)::timestamptz,
       (CASE WHEN g >= 0 THEN :metrics_value END)::double precision,
       (CASE WHEN g >= 0 THEN :metrics_unit END)::text,
       (CASE WHEN g >= 0 THEN :metrics_metric_type END)::text,
       (CASE WHEN g >= 0 THEN :metrics_trace_id END)::text,
       (CASE WHEN g >= 0 THEN :metrics_span_id END)::text,
       (CASE WHEN g >= 0 THEN :metrics_attributes END)::jsonb
FROM generate_series(0, 499) AS g
ON CONFLICT DO NOTHING;
