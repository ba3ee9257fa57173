-- Who was behind the carrier-grade NAT's 198.51.100.1 port 40001 on
-- 2026-12-02 at 10:04 (UTC): the port block that held the port then
-- names the inside address (the latest block to start, should two
-- overlap), and the holder of that address then is the customer, found
-- as in who_held_address_at.sql. No row when no block, or no holder of
-- its inside address, is known.
SELECT customer, IPv6NumToString(inside_addr) AS inside_address, prefix, source, session, start, end, end_reason
FROM (
    WITH (
        SELECT argMax(inside, start)
        FROM (
            SELECT *
            FROM wormsign.subscriber_bindings FINAL
            WHERE first_addr = IPv6StringToNum('::ffff:198.51.100.1')
              AND start <= toDateTime('2026-12-02 10:04:00', 'UTC')
        )
        WHERE source = 'cgnat' AND port_lo <= 40001 AND port_hi >= 40001
          AND (end > toDateTime('2026-12-02 10:04:00', 'UTC')
               OR (end = 0 AND (expires = 0 OR expires > toDateTime('2026-12-02 10:04:00', 'UTC'))))
    ) AS inside_addr
    SELECT *, inside_addr
    FROM wormsign.subscriber_bindings FINAL
    WHERE first_addr <= inside_addr AND last_addr >= inside_addr
      AND start <= toDateTime('2026-12-02 10:04:00', 'UTC')
)
WHERE source != 'cgnat'
  AND (end > toDateTime('2026-12-02 10:04:00', 'UTC')
       OR (end = 0 AND (expires = 0 OR expires > toDateTime('2026-12-02 10:04:00', 'UTC'))))
ORDER BY first_addr DESC, last_addr, start DESC
LIMIT 1
