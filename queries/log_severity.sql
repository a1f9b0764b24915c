-- Log volume by severity and service over the last hour.
SELECT severity_text, service_name, count(*) AS records
FROM logs
WHERE time > now() - interval '1 hour'
GROUP BY severity_text, service_name
ORDER BY records DESC;
