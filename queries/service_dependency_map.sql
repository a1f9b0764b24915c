-- Which service calls which: a self-join of spans on the parent link, over the last hour.
SELECT parent.service_name      AS caller,
       child.service_name       AS callee,
       count(*)                 AS calls,
       avg(child.duration_ms)   AS avg_ms,
       count(*) FILTER (WHERE child.status_code = 2) AS errors
FROM spans AS child
JOIN spans AS parent
  ON parent.trace_id = child.trace_id
 AND parent.span_id  = child.parent_span_id
WHERE child.start_time > now() - interval '1 hour'
  AND parent.service_name <> child.service_name
GROUP BY parent.service_name, child.service_name
ORDER BY calls DESC;
