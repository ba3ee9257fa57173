-- What NOC engineers did with incidents, written by the console
-- (the ack of the incident API) and read by every console instance:
-- one row per action, never updated. action is 'ack' for now. at is the
-- second of the action, at_ns its Unix time in nanoseconds (18.16 has no
-- DateTime64), which orders the actions of one incident. instance names
-- the console process that recorded it. Kept forever: the sink's
-- retention does not touch this table.
CREATE TABLE IF NOT EXISTS {db}.incident_actions (
    date Date,
    incident_id String,
    action String,
    actor String,
    note String,
    at DateTime,
    at_ns UInt64,
    instance String
) ENGINE = MergeTree()
PARTITION BY date
ORDER BY (incident_id, at_ns)
