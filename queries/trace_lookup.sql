-- Every span of one trace (here the most recent error's trace), in start order, with its logs counted.
SELECT s.start_time, s.service_name, s.name, s.span_id, s.parent_span_id, s.duration_ms, s.status_code,
       (SELECT count(*) FROM logs AS l WHERE l.trace_id = s.trace_id AND l.span_id = s.span_id) AS logs
FROM spans AS s
WHERE s.trace_id = (SELECT trace_id FROM spans WHERE status_code = 2 ORDER BY start_time DESC LIMIT 1)
ORDER BY s.start_time;
