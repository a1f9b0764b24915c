-- AI spend by model and team in a time window, from the model spans' attributes.
-- Parameters: window_start, window_end (timestamptz; the window is (window_start, window_end]).
--   psql -v window_start='2025-06-01 11:00+00' -v window_end='2025-06-01 12:00+00' -f queries/ai_cost_by_model_team.sql
SELECT attributes->>'gen_ai.request.model'                      AS model,
       attributes->>'team'                                      AS team,
       count(*)                                                 AS calls,
       sum((attributes->>'gen_ai.usage.input_tokens')::bigint)  AS input_tokens,
       sum((attributes->>'gen_ai.usage.output_tokens')::bigint) AS output_tokens,
       round(sum((attributes->>'ai.cost_usd')::numeric), 2)     AS cost_usd
FROM spans
WHERE start_time > :'window_start' AND start_time <= :'window_end'
  AND attributes ? 'ai.cost_usd'
GROUP BY 1, 2
ORDER BY cost_usd DESC;
