-- Who held 203.0.113.7 on 2026-12-02 at 10:04 (UTC): the customer of the
-- most specific address or prefix holding it (a /32 before the /24 of a
-- static range) that had started by then and had neither ended nor
-- expired, the latest start first: a start on an address ends whoever
-- held it before, even when no record of theirs says so. FINAL keeps
-- the latest record of each holding; the conditions on end and expires
-- stay outside it, so that they judge that record and not an older one.
-- An IPv6 subscriber: IPv6StringToNum('2001:db8:1:2::7'). Port blocks
-- of a carrier-grade NAT are left out: see who_held_port_at.sql.
SELECT customer, prefix, source, session, nas, nas_identifier, start, end, end_reason
FROM (
    SELECT *
    FROM wormsign.subscriber_bindings FINAL
    WHERE first_addr <= IPv6StringToNum('::ffff:203.0.113.7')
      AND last_addr >= IPv6StringToNum('::ffff:203.0.113.7')
      AND start <= toDateTime('2026-12-02 10:04:00', 'UTC')
)
WHERE source != 'cgnat'
  AND (end > toDateTime('2026-12-02 10:04:00', 'UTC')
       OR (end = 0 AND (expires = 0 OR expires > toDateTime('2026-12-02 10:04:00', 'UTC'))))
ORDER BY first_addr DESC, last_addr, start DESC
LIMIT 1
