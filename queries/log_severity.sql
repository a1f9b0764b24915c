-- Log volume by severity and service in a time window.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/log_severity.sql
SELECT severity_text, service_name, count(*) AS records
FROM logs
WHERE time > :'window_start' AND time <= :'window_end'
GROUP BY severity_text, service_name
ORDER BY records DESC;
