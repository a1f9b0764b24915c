-- AI spend by model and team over the last hour, from the model spans' attributes.
SELECT attributes->>'gen_ai.request.model'                      AS model,
       attributes->>'team'                                      AS team,
       count(*)                                                 AS calls,
       sum((attributes->>'gen_ai.usage.input_tokens')::bigint)  AS input_tokens,
       sum((attributes->>'gen_ai.usage.output_tokens')::bigint) AS output_tokens,
       round(sum((attributes->>'ai.cost_usd')::numeric), 2)     AS cost_usd
FROM spans
WHERE start_time > now() - interval '1 hour'
  AND attributes ? 'ai.cost_usd'
GROUP BY 1, 2
ORDER BY cost_usd DESC;
