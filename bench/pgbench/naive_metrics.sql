-- NaiveEngineer's round trip for one metric, from a C client: one INSERT, autocommit (a transaction each).
-- `firehose bench` runs it with pgbench -M prepared (the statement is prepared once per connection, each row's
-- values are bound as text and parsed by the server, as psycopg does), -D first_id=... -D n=0, and one
-- generated row's values as -D metrics_<column>=...
-- Each client numbers its rows itself (pgbench keeps a client's variables between transactions), so every
-- event_id is new: first_id + client_id * 2^24 + n.
\set n :n + 1
\set event_id :first_id + :client_id * 16777216 + :n
INSERT INTO metrics (event_id, name, service_name, time, value, unit, metric_type, trace_id, span_id, attributes)
VALUES (:event_id, :metrics_name, :metrics_service_name, :metrics_time, :metrics_value, :metrics_unit, :metrics_metric_type, :metrics_trace_id, :metrics_span_id, :metrics_attributes);
