-- Alerts per day and kind: incidents opened, all events, subscribers hit.
-- FINAL collapses an event written twice (see the alerts table).
SELECT
    date,
    kind,
    countIf(state = 'open') AS incidents,
    count() AS events,
    uniqExact(subscriber_ip) AS subscribers
FROM wormsign.alerts FINAL
WHERE date >= today() - 30
GROUP BY date, kind
ORDER BY date, kind
