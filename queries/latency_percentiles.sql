-- Latency percentiles per service over the spans of a time window.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/latency_percentiles.sql
SELECT service_name,
       count(*)                                                   AS spans,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms)  AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)  AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)  AS p99_ms
FROM spans
WHERE start_time > :'window_start' AND start_time <= :'window_end'
GROUP BY service_name
ORDER BY p95_ms DESC;
