-- The sink's ledger: which bus messages (partition, offset range) each
-- INSERT wrote, one row per INSERT block and partition. The views below
-- write it as part of the same INSERT as the table they watch, right after
-- that table's part is committed, so a ledger row means "these messages are
-- in the table". Before writing a batch the sink drops the messages the
-- ledger already covers: a batch retried after an error whose outcome is
-- unknown, or re-delivered by Kafka after a crash between INSERT and offset
-- commit, is not written twice. 18.16 has no insert deduplication for
-- non-replicated tables; this works on every version.
CREATE TABLE IF NOT EXISTS {db}.sink_ledger (
    source String,
    sink_partition UInt32,
    first_offset UInt64,
    last_offset UInt64,
    rows UInt64,
    written_at DateTime
) ENGINE = MergeTree()
PARTITION BY toDate(written_at)
ORDER BY (source, sink_partition, last_offset)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.flows_ledger_mv TO {db}.sink_ledger AS
SELECT 'flows' AS source, sink_partition, min(sink_offset) AS first_offset,
    max(sink_offset) AS last_offset, count() AS rows, now() AS written_at
FROM {db}.flows
GROUP BY sink_partition
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.alerts_ledger_mv TO {db}.sink_ledger AS
SELECT 'alerts' AS source, sink_partition, min(sink_offset) AS first_offset,
    max(sink_offset) AS last_offset, count() AS rows, now() AS written_at
FROM {db}.alerts
GROUP BY sink_partition
