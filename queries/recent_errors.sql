-- The 50 most recent error spans of a time window; equal start times are ordered by event_id, so the result is
-- deterministic.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/recent_errors.sql
SELECT start_time, service_name, name, trace_id, span_id, status_message, duration_ms
FROM spans
WHERE status_code = 2
  AND start_time > :'window_start' AND start_time <= :'window_end'
ORDER BY start_time DESC, event_id DESC
LIMIT 50;
