-- Per subscriber per minute, kept by a materialized view on every INSERT
-- into flows. Counts are scaled by the sampling rate (a flow exported at
-- 1:N stands for N flows, unknown rate counts as 1), so they estimate the
-- real traffic. SummingMergeTree adds the counters of rows with the same
-- key on merge and merges the AggregateFunction columns by their function;
-- query with sum() and uniqMerge() and GROUP BY, never the raw rows.
CREATE TABLE IF NOT EXISTS {db}.flows_1m (
    minute DateTime,
    subscriber_ip String,
    flows UInt64,
    bytes UInt64,
    packets UInt64,
    smtp_flows UInt64,
    dsts AggregateFunction(uniq, {ip}),
    smtp_dsts AggregateFunction(uniq, {ip})
) ENGINE = SummingMergeTree()
PARTITION BY toDate(minute)
ORDER BY (subscriber_ip, minute)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.flows_1m_mv TO {db}.flows_1m AS
SELECT
    toStartOfMinute(time_end) AS minute,
    subscriber_ip,
    sum(greatest(sampling_rate, 1)) AS flows,
    sum(bytes * greatest(sampling_rate, 1)) AS bytes,
    sum(packets * greatest(sampling_rate, 1)) AS packets,
    sumIf(greatest(sampling_rate, 1), proto = 6 AND dst_port = 25) AS smtp_flows,
    uniqState(dst_addr) AS dsts,
    uniqStateIf(dst_addr, proto = 6 AND dst_port = 25) AS smtp_dsts
FROM {db}.flows
GROUP BY subscriber_ip, minute
