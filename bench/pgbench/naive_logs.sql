-- NaiveEngineer's round trip for one log, from a C client: one INSERT, autocommit (a transaction each).
-- `firehose bench` runs it with pgbench -M prepared (the statement is prepared once per connection, each row's
-- values are bound as text and parsed by the server, as psycopg does), -D first_id=... -D n=0, and one
-- generated row's values as -D logs_<column>=...
-- Each client numbers its rows itself (pgbench keeps a client's variables between transactions), so every
-- event_id is new: first_id + client_id * 2^24 + n.
\set n :n + 1
\set event_id :first_id + :client_id * 16777216 + :n
INSERT INTO logs (event_id, time, severity_number, severity_text, service_name, trace_id, span_id, body, attributes)
VALUES (:event_id, :logs_time, :logs_severity_number, :logs_severity_text, :logs_service_name, :logs_trace_id, :logs_span_id, :logs_body, :logs_attributes);
