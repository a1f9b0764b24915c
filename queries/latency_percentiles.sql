-- Latency percentiles per service over the last hour of spans.
SELECT service_name,
       count(*)                                                   AS spans,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms)  AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)  AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)  AS p99_ms
FROM spans
WHERE start_time > now() - interval '1 hour'
GROUP BY service_name
ORDER BY p95_ms DESC;
