-- One subscriber's last 24 hours, minute by minute. For single flows of
-- that subscriber use the flows table: it is sorted by subscriber_ip, then
-- time_end, so the same WHERE reads only that subscriber's rows.
SELECT
    minute,
    sum(flows) AS flows,
    sum(bytes) AS bytes,
    sum(packets) AS packets,
    sum(smtp_flows) AS smtp_flows,
    uniqMerge(dsts) AS destinations,
    uniqMerge(smtp_dsts) AS smtp_destinations
FROM wormsign.flows_1m
WHERE subscriber_ip = '203.0.113.10' AND minute >= now() - INTERVAL 1 DAY
GROUP BY minute
ORDER BY minute
