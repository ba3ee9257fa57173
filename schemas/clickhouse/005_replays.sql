-- Captures replayed into this database (wormsign replay), by a hash of
-- their content: a second replay of the same captures writes nothing.
-- Not partitioned by date, so that retention never drops the record of
-- what it keeps or dropped already.
CREATE TABLE IF NOT EXISTS {db}.replays (
    id String,
    flows UInt64,
    alerts UInt64,
    replayed_at DateTime
) ENGINE = MergeTree()
ORDER BY id
;
