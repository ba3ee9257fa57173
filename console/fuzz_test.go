package console

import (
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// FuzzIncidentQuery feeds GET /api/v1/incidents's parameter parser raw
// query strings: it must not panic, and what it accepts is in range.
func FuzzIncidentQuery(f *testing.F) {
	seed := testAlert("377bd4c9e42adf37ff83755f", "open", 42.5, 3)
	for _, s := range []string{
		"", "state=open", "state=any&kind=smtp_fanout&limit=50", "subscriber=203.0.113.2", "subscriber=::ffff:203.0.113.2",
		"since=24h", "since=2026-11-27T05:00:00Z", "since=-1h", "limit=0", "limit=1001", "limit=99999999999999999999",
		"cursor=" + encodeCursor(&seed), "cursor=e30", "cursor=%%%", "state=open&state=open", "colour=red",
		"kind=A", "since=1e308h", "subscriber=fe80::1%25eth0",
	} {
		f.Add(s)
	}
	c := &Component{config: DefaultConfiguration(), deps: Dependencies{Now: func() time.Time { return testNow }}}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest("GET", "/api/v1/incidents", nil)
		r.URL.RawQuery = raw
		q, err := c.parseIncidentQuery(r)
		if err != nil {
			if _, ok := err.(badRequest); !ok {
				t.Fatalf("%q: %v is not a 400", raw, err)
			}
			return
		}
		if q.limit < 1 || q.limit > 1000 {
			t.Fatalf("%q: limit %d", raw, q.limit)
		}
		switch q.state {
		case "open", "resolved", "any":
		default:
			t.Fatalf("%q: state %q", raw, q.state)
		}
		if q.kind != "" && !kindPattern.MatchString(q.kind) {
			t.Fatalf("%q: kind %q", raw, q.kind)
		}
		if q.after != nil {
			// A cursor that parsed names the same place once re-encoded.
			again, err := decodeCursor(encodeCursor(q.after))
			if err != nil || again.ID != q.after.ID || again.State != q.after.State {
				t.Fatalf("%q: cursor %+v does not round-trip: %+v %v", raw, q.after, again, err)
			}
		}
		if v, _ := url.ParseQuery(raw); len(v) > 6 {
			t.Fatalf("%q: accepted %d parameters", raw, len(v))
		}
	})
}
