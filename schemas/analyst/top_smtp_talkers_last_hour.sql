-- Top port-25 talkers of the last hour: subscribers by distinct TCP/25
-- destinations, from the per-minute rollup (cheap even over days).
SELECT
    subscriber_ip,
    uniqMerge(smtp_dsts) AS smtp_destinations,
    sum(smtp_flows) AS smtp_flows,
    sum(flows) AS flows
FROM wormsign.flows_1m
WHERE minute >= now() - INTERVAL 1 HOUR
GROUP BY subscriber_ip
HAVING smtp_flows > 0
ORDER BY smtp_destinations DESC, smtp_flows DESC
LIMIT 20
