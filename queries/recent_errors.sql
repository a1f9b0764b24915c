-- The 50 most recent error spans.
SELECT start_time, service_name, name, trace_id, span_id, status_message, duration_ms
FROM spans
WHERE status_code = 2
ORDER BY start_time DESC
LIMIT 50;
