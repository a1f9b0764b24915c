-- Share of spans in error (status_code 2) per service over the last hour.
SELECT service_name,
       count(*)                                          AS spans,
       count(*) FILTER (WHERE status_code = 2)           AS errors,
       round(avg((status_code = 2)::int)::numeric, 4)    AS error_rate
FROM spans
WHERE start_time > now() - interval '1 hour'
GROUP BY service_name
ORDER BY error_rate DESC;
