-- Per-minute rollups of each metric and service over the last hour.
SELECT date_trunc('minute', time) AS minute,
       name, service_name,
       count(*)   AS points,
       avg(value) AS avg_value,
       max(value) AS max_value
FROM metrics
WHERE time > now() - interval '1 hour'
GROUP BY 1, 2, 3
ORDER BY minute DESC, name, service_name;
