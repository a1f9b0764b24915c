-- BatchedEngineer's round trip for logs, from a C client: one INSERT of 500 rows, a transaction each,
-- with the batched writer's ON CONFLICT DO NOTHING (no event_id repeats, so it skips none).
-- `firehose bench` runs it with pgbench -M prepared (direct) or -M extended (through pgBouncer 1.18, which
-- cannot keep prepared statements: the pooled writer does not prepare either), -D first_id=... -D n=0, and one
-- generated row's values as -D logs_<column>=...
-- pgbench binds at most 255 parameters per statement, so the 500 rows come from generate_series, and each
-- value is cast from text once per row (CASE WHEN g >= 0 keeps the server from casting it once for all):
-- the server parses every row's timestamps, numbers and JSONB as it does for the writer's 500-row VALUES.
\set n :n + 1
\set first :first_id + :client_id * 16777216 + :n * 500
INSERT INTO logs (event_id, time, severity_number, severity_text, service_name, trace_id, span_id, body, attributes)
SELECT :first::bigint + g,
       (CASE WHEN g >= 0 THEN :logs_time END)::timestamptz,
       (CASE WHEN g >= 0 THEN :logs_severity_number END)::smallint,
       (CASE WHEN g >= 0 THEN :logs_severity_text END)::text,
       (CASE WHEN g >= 0 THEN :logs_service_name END)::text,
       (CASE WHEN g >= 0 THEN :logs_trace_id END)::text,
       (CASE WHEN g >= 0 THEN :logs_span_id END)::text,
       (CASE WHEN g >= 0 THEN :logs_body END)::text,
       (CASE WHEN g >= 0 THEN :logs_attributes END)::jsonb
FROM generate_series(0, 499) AS g
ON CONFLICT DO NOTHING;
