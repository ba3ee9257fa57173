-- Remediation's cases (remediation/case.go): one row per change of a
-- case, the case as it is after it; ReplacingMergeTree(version) keeps the
-- latest, so query with FINAL. `data` is the case's JSON (the API's),
-- from which remediation restores its cases at start; the other columns
-- are for the desk's queries. Not partitioned by date: a case lives as
-- long as its customer needs it, and the table holds one row per case
-- after merges.
CREATE TABLE IF NOT EXISTS {db}.cases (
    id String,
    customer String,
    subscriber_id String,
    subscriber_ip String,
    state String,
    kinds Array(String),
    opened DateTime,
    updated DateTime,
    version UInt64,
    data String
) ENGINE = ReplacingMergeTree(version)
ORDER BY id
;
-- A case's history: every event (open, join, notify, notify_failed,
-- walled, blocked, released, self_release, release_denied, reopen,
-- closed, false_positive, hold, skip, contain_failed), who made it
-- (policy, customer, or a person's name) and why. `seq` is the case's
-- version after the event: the history's order. `id` is derived from the
-- case, its version and the type, so a write repeated after a failure
-- collapses: query with FINAL.
CREATE TABLE IF NOT EXISTS {db}.case_events (
    date Date,
    at DateTime,
    id String,
    case_id String,
    seq UInt64,
    customer String,
    type String,
    actor String,
    note String,
    state String
) ENGINE = ReplacingMergeTree()
PARTITION BY date
ORDER BY (case_id, seq, id)
;
