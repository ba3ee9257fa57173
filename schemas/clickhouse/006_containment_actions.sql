-- Containment's audit trail: every change to the port-25 block list
-- (schedule, add, extend, hold, release, refuse), by the policy or a
-- person, with its reason (incident, kind), actor and note. `id` is
-- derived from the change itself, so two instances that record the same
-- change, or a re-delivered one, collapse into one row: query with FINAL.
CREATE TABLE IF NOT EXISTS {db}.containment_actions (
    date Date,
    at DateTime,
    id String,
    type String,
    prefix String,
    action String,
    subscriber_id String,
    incident_id String,
    kind String,
    actor String,
    note String,
    since DateTime,
    expires DateTime,
    dry_run UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (prefix, at, id)
;
