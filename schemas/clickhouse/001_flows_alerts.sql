-- Flows and alerts. Written for ClickHouse 18.16 (Debian's package) and
-- current releases alike; what depends on the server's version is a
-- placeholder filled in at migrate time (see README.md here):
-- {ip} is IPv6 where the server has it and String on 18.16, {lc} is
-- LowCardinality(String) where the server has it and String on 18.16.
-- subscriber_ip stays String everywhere: it is the sort key the analysts
-- filter on with a literal, and the alert JSON carries it as text. Times
-- are UTC.

-- One row per flow, ordered for the analysts' first question: "what did
-- this subscriber do, and when". sink_partition and sink_offset are the bus
-- coordinates of the message the flow came in; the sink's ledger (migration
-- 003) is built from them so that a retried or re-delivered batch is not
-- written twice. The columns are flow.Columns (flow/columns.go), which
-- the sink's INSERT and the wire format follow; its tests compare it with
-- this statement as rendered for both server generations.
CREATE TABLE IF NOT EXISTS {db}.flows (
    date Date,
    time_received DateTime,
    time_start DateTime,
    time_end DateTime,
    subscriber_ip String,
    exporter {ip},
    observation_domain UInt32,
    sampling_rate UInt32,
    src_addr {ip},
    dst_addr {ip},
    src_port UInt16,
    dst_port UInt16,
    proto UInt8,
    tcp_flags UInt8,
    bytes UInt64,
    packets UInt64,
    in_if UInt32,
    out_if UInt32,
    flow_type UInt8,
    customer String,
    inside_addr {ip},
    sink_partition UInt32,
    sink_offset UInt64
) ENGINE = MergeTree()
PARTITION BY date
ORDER BY (subscriber_ip, time_end)
;
-- One row per alert event (open, update, resolved), columns as the alert
-- JSON; evidence is kept as its JSON text. The ledger already keeps a
-- re-delivered event out; should one slip through (a server crash between
-- the table and its ledger view), it has the same sorting key and
-- collapses on merge, and SELECT ... FINAL never shows it.
CREATE TABLE IF NOT EXISTS {db}.alerts (
    date Date,
    id String,
    kind {lc},
    state {lc},
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
    evidence String,
    sink_partition UInt32,
    sink_offset UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (subscriber_ip, id, state, window_end, distinct_dsts)
