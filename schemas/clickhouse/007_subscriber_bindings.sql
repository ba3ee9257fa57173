-- Who held an address, a prefix or a CGNAT port block, and when: the
-- bindings of identity (identity/binding.go), written by its ClickHouse
-- writer from the bindings topic, one row per record of a holding. The
-- records of one holding (start, renewals, stop) share the sorting key,
-- so ReplacingMergeTree(updated) keeps the latest of them and a replayed
-- record adds nothing: query with FINAL. A holding is the address or
-- prefix (prefix as text; first_addr..last_addr its range, 16 bytes,
-- IPv4 mapped as ::ffff:a.b.c.d), with port_lo..port_hi and the inside
-- address for a CGNAT port block (source 'cgnat', customer empty). The
-- range columns are FixedString(16) on every version, not IPv6 where the
-- server has it: "first_addr <= IPv6StringToNum('::ffff:203.0.113.7')"
-- then works alike on 18.16 and current servers (which refuse to compare
-- an IPv6 column with those bytes), and IPv6NumToString(inside) reads
-- them.
-- Times are UTC ({ms}: DateTime64(3), whole seconds on 18.16); end 0
-- (1970-01-01) while the holding lasts, expires 0 when it never expires
-- unless renewed. A holding still open whose record says nothing of a
-- later holder's start ended at that start (reassigned): the holder at
-- T is the latest start <= T (see schemas/analyst/who_held_address_at.sql).
-- Partitioned by the month of the start, so that every record of a
-- holding lands in one partition (ReplacingMergeTree collapses within
-- a partition only). Retention (identity.retention after the holding
-- ended) is a TTL on servers that have one, set by the writer, and on
-- every version the writer drops a month once every holding in it ended
-- longer ago than that.
CREATE TABLE IF NOT EXISTS {db}.subscriber_bindings (
    prefix String,
    first_addr FixedString(16),
    last_addr FixedString(16),
    port_lo UInt16,
    port_hi UInt16,
    inside FixedString(16),
    customer String,
    source {lc},
    session String,
    nas String,
    nas_identifier String,
    start {ms},
    end {ms},
    expires {ms},
    updated {ms},
    end_reason String
) ENGINE = ReplacingMergeTree(updated)
PARTITION BY toYYYYMM(start)
ORDER BY (first_addr, start, last_addr, port_lo, source, customer, inside, session)
;
-- The same rows ordered for "which addresses did this customer hold",
-- kept by the view below on every INSERT (CGNAT port blocks, which have
-- no customer, are left out). Query it with FINAL too.
CREATE TABLE IF NOT EXISTS {db}.subscriber_bindings_by_customer (
    prefix String,
    first_addr FixedString(16),
    last_addr FixedString(16),
    port_lo UInt16,
    port_hi UInt16,
    inside FixedString(16),
    customer String,
    source {lc},
    session String,
    nas String,
    nas_identifier String,
    start {ms},
    end {ms},
    expires {ms},
    updated {ms},
    end_reason String
) ENGINE = ReplacingMergeTree(updated)
PARTITION BY toYYYYMM(start)
ORDER BY (customer, start, first_addr, last_addr, port_lo, source, inside, session)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.subscriber_bindings_by_customer_mv TO {db}.subscriber_bindings_by_customer AS
SELECT prefix, first_addr, last_addr, port_lo, port_hi, inside, customer, source, session, nas, nas_identifier,
    start, end, expires, updated, end_reason
FROM {db}.subscriber_bindings
WHERE customer != ''
