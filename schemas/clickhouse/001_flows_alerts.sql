-- Flows and alerts. Written for ClickHouse 18.16 (Debian's package) and
-- current releases alike: no LowCardinality, DateTime64, IPv6 or TTL, which
-- 18.16 lacks. Addresses are stored as text so that analysts can compare
-- them with literals; times are UTC.

-- One row per flow, ordered for the analysts' first question: "what did
-- this subscriber do, and when".
CREATE TABLE IF NOT EXISTS {db}.flows (
    date Date,
    time_received DateTime,
    time_start DateTime,
    time_end DateTime,
    subscriber_ip String,
    exporter String,
    observation_domain UInt32,
    sampling_rate UInt32,
    src_addr String,
    dst_addr String,
    src_port UInt16,
    dst_port UInt16,
    proto UInt8,
    tcp_flags UInt8,
    bytes UInt64,
    packets UInt64,
    in_if UInt32,
    out_if UInt32,
    flow_type UInt8
) ENGINE = MergeTree()
PARTITION BY date
ORDER BY (subscriber_ip, time_end)
;
-- One row per alert event (open, update, resolved), columns as the alert
-- JSON; evidence is kept as its JSON text. A re-delivered event has the same
-- sorting key and collapses on merge (query with FINAL for exact counts).
CREATE TABLE IF NOT EXISTS {db}.alerts (
    date Date,
    id String,
    kind String,
    state String,
    subscriber_ip String,
    subscriber_id String,
    window_start DateTime,
    window_end DateTime,
    first_seen DateTime,
    last_seen DateTime,
    distinct_dsts UInt64,
    flows UInt64,
    score Float64,
    exporter String,
    evidence String
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (subscriber_ip, id, state, window_end, distinct_dsts)
