-- Which service calls which: a self-join of spans on the parent link, for the child spans of a time window.
-- A parent starts at or before its child and at most a trace's length earlier (telemetry/generator.py's
-- TRACE_SECONDS, 8 s), so the parents are bounded by the child window widened by 8 s: on the partitioned layout
-- both sides of the join scan only the partitions of their window (docs/queries.md), and no parent is lost.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/service_dependency_map.sql
SELECT parent.service_name      AS caller,
       child.service_name       AS callee,
       count(*)                 AS calls,
       avg(child.duration_ms)   AS avg_ms,
       count(*) FILTER (WHERE child.status_code = 2) AS errors
FROM spans AS child
JOIN spans AS parent
  ON parent.trace_id = child.trace_id
 AND parent.span_id  = child.parent_span_id
WHERE child.start_time > :'window_start' AND child.start_time <= :'window_end'
  AND parent.start_time > :'window_start'::timestamptz - interval '8 seconds'
  AND parent.start_time <= :'window_end'
  AND parent.service_name <> child.service_name
GROUP BY parent.service_name, child.service_name
ORDER BY calls DESC;
