-- Share of spans in error (status_code 2) per service in a time window.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/error_rates.sql
SELECT service_name,
       count(*)                                          AS spans,
       count(*) FILTER (WHERE status_code = 2)           AS errors,
       round(avg((status_code = 2)::int)::numeric, 4)    AS error_rate
FROM spans
WHERE start_time > :'window_start' AND start_time <= :'window_end'
GROUP BY service_name
ORDER BY error_rate DESC;
