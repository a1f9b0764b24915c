-- Every span of one trace, in start order (ties by event_id, so the result is deterministic), with its logs
-- counted. The analyst picks the trace (e.g. the most recent error's: users/queries.py, LATEST_ERROR_TRACE).
-- Parameters: trace_id (text, 32 hex digits).
--   psql -v trace_id=4bf92f3577b34da6a3ce929d0e0e4736 -f queries/trace_lookup.sql
-- The logs are counted by one grouped scan of the trace's logs rather than a subquery per span.
SELECT s.start_time, s.service_name, s.name, s.span_id, s.parent_span_id, s.duration_ms, s.status_code,
       coalesce(l.logs, 0) AS logs
FROM spans AS s
LEFT JOIN (SELECT span_id, count(*) AS logs
           FROM logs
           WHERE trace_id = :'trace_id'
           GROUP BY span_id) AS l
       ON l.span_id = s.span_id
WHERE s.trace_id = :'trace_id'
ORDER BY s.start_time, s.event_id;
