-- NaiveEngineer's round trip for one span, from a C client: one INSERT, autocommit (a transaction each).
-- `firehose bench` runs it with pgbench -M prepared (the statement is prepared once per connection, each row's
-- values are bound as text and parsed by the server, as psycopg does), -D first_id=... -D n=0, and one
-- generated row's values as -D spans_<column>=...
-- Each client numbers its rows itself (pgbench keeps a client's variables between transactions), so every
-- event_id is new: first_id + client_id * 2^24 + n.
\set n :n + 1
\set event_id :first_id + :client_id * 16777216 + :n
INSERT INTO spans (event_id, trace_id, span_id, parent_span_id, service_name, name, kind, start_time, end_time, duration_ms, status_code, status_message, attributes)
VALUES (:event_id, :spans_trace_id, :spans_span_id, :spans_parent_span_id, :spans_service_name, :spans_name, :spans_kind, :spans_start_time, :spans_end_time, :spans_duration_ms, :spans_status_code, NULL, :spans_attributes);
