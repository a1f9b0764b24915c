-- Per-minute rollups of one metric, per service, in a time window (one dashboard panel).
-- Parameters: metric_name (text, e.g. llm.tokens.output), window_start, window_end (timestamptz; the window is
-- (window_start, window_end]).
--   psql -v metric_name=llm.tokens.output -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' \
--        -f queries/metric_rollups.sql
SELECT date_trunc('minute', time) AS minute,
       name, service_name,
       count(*)   AS points,
       avg(value) AS avg_value,
       max(value) AS max_value
FROM metrics
WHERE name = :'metric_name'
  AND time > :'window_start' AND time <= :'window_end'
GROUP BY 1, 2, 3
ORDER BY minute DESC, name, service_name;
