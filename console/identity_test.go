package console

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/network"
)

// testBindings: 203.0.113.7 went from cust-42 (RADIUS, stopped) to cust-7
// (a DHCP lease, held now) inside cust-biz's static /24; cust-42 moved to
// 203.0.113.9; a CGNAT port block of 198.51.100.1. Whole seconds, as
// 18.16 keeps them.
func testBindings() []identity.Binding { return bindingsAround(testNow) }

func bindingsAround(now time.Time) []identity.Binding {
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	nas := netip.MustParseAddr("192.0.2.10")
	return []identity.Binding{
		{Customer: "cust-biz", Prefix: netip.MustParsePrefix("203.0.113.0/24"), Source: identity.SourceStatic,
			StartMs: ms(-30 * 24 * time.Hour), UpdatedMs: ms(-30 * 24 * time.Hour)},
		{Customer: "cust-42", Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: identity.SourceRADIUS, Session: "acct-1",
			NAS: nas, NASIdentifier: "bras-1", StartMs: ms(-3 * time.Hour), EndMs: ms(-2 * time.Hour), EndReason: identity.EndStop, UpdatedMs: ms(-2 * time.Hour)},
		{Customer: "cust-7", Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: identity.SourceDHCP, Session: "01:00:11:22:33:44:55",
			NAS: netip.MustParseAddr("192.0.2.20"), StartMs: ms(-2 * time.Hour), ExpiresMs: ms(time.Hour), UpdatedMs: ms(-2 * time.Hour)},
		{Customer: "cust-42", Prefix: netip.MustParsePrefix("203.0.113.9/32"), Source: identity.SourceRADIUS, Session: "acct-2",
			NAS: nas, NASIdentifier: "bras-1", StartMs: ms(-2 * time.Hour), ExpiresMs: ms(10 * time.Minute), UpdatedMs: ms(-5 * time.Minute)},
		{Prefix: netip.MustParsePrefix("198.51.100.1/32"), PortLo: 1024, PortHi: 2047, Inside: netip.MustParseAddr("100.64.0.9"),
			Source: identity.SourceCGNAT, Session: "nat-1", StartMs: ms(-time.Hour), UpdatedMs: ms(-time.Hour)},
	}
}

// newIdentityConsole serves a console on deps (the in-process bus, the
// test clock and token filled in).
func newIdentityConsole(t *testing.T, deps Dependencies) (*httptest.Server, func(...alert.Alert)) {
	t.Helper()
	b := bus.NewMemory(64)
	deps.Logger, deps.Registry, deps.Bus = slog.New(slog.DiscardHandler), prometheus.NewRegistry(), b
	deps.AlertsTopic, deps.FlowsTopic, deps.Subscribers, deps.Token = "alerts", "flows", network.NewSubscribers(nil), testToken
	if deps.Now == nil {
		deps.Now = func() time.Time { return testNow }
	}
	c, err := New(DefaultConfiguration(), deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() { c.Stop(); srv.Close(); b.Close() })
	p, _ := b.Producer("alerts")
	return srv, func(as ...alert.Alert) {
		t.Helper()
		for _, a := range as {
			v, _ := a.Marshal()
			if err := p.Publish(context.Background(), bus.Message{Value: v}); err != nil {
				t.Fatal(err)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); c.memory != nil && c.memory.incidentCount() < len(as); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("alerts not read")
			}
		}
	}
}

func customerAlerts() []alert.Alert {
	a := testAlert("inc-42", alert.StateOpen, 3, -10)
	a.SubscriberIP, a.SubscriberID = "203.0.113.9", "cust-42"
	b := testAlert("inc-7", alert.StateOpen, 2, -5)
	b.SubscriberID = "cust-7"
	return []alert.Alert{a, b}
}

// moved shifts an alert's times by d.
func moved(a alert.Alert, d time.Duration) alert.Alert {
	for _, t := range []*time.Time{&a.WindowStart, &a.WindowEnd, &a.FirstSeen, &a.LastSeen} {
		*t = t.Add(d)
	}
	return a
}

func getJSON[T any](t *testing.T, srv *httptest.Server, path string) T {
	t.Helper()
	code, body := get(t, srv, path, true)
	var v T
	if err := json.Unmarshal(body, &v); err != nil || code != 200 {
		t.Fatalf("GET %s: %d %s (%v)", path, code, body, err)
	}
	return v
}

func tp(d time.Duration) *time.Time {
	t := testNow.Add(d).UTC()
	return &t
}

// wantHoldings are the API's answers on testBindings.
var (
	wantCust42 = []Holding{
		{Customer: "cust-42", Prefix: "203.0.113.7/32", Source: "radius", Session: "acct-1", NAS: "192.0.2.10", NASIdentifier: "bras-1",
			Start: testNow.Add(-3 * time.Hour), End: tp(-2 * time.Hour), EndReason: "stop"},
		{Customer: "cust-42", Prefix: "203.0.113.9/32", Source: "radius", Session: "acct-2", NAS: "192.0.2.10", NASIdentifier: "bras-1",
			Start: testNow.Add(-2 * time.Hour), Expires: tp(10 * time.Minute), Open: true},
	}
	wantHolders7 = []Holding{
		wantCust42[0],
		{Customer: "cust-7", Prefix: "203.0.113.7/32", Source: "dhcp", Session: "01:00:11:22:33:44:55", NAS: "192.0.2.20",
			Start: testNow.Add(-2 * time.Hour), Expires: tp(time.Hour), Open: true},
		{Customer: "cust-biz", Prefix: "203.0.113.0/24", Source: "static", Start: testNow.Add(-30 * 24 * time.Hour), Open: true},
	}
	wantNAT = []Holding{{Prefix: "198.51.100.1/32", PortLo: 1024, PortHi: 2047, Inside: "100.64.0.9", Source: "cgnat", Session: "nat-1",
		Start: testNow.Add(-time.Hour), Open: true}}
)

// checkIdentityAPI asks srv about testBindings and customerAlerts.
func checkIdentityAPI(t *testing.T, srv *httptest.Server, from string) {
	t.Helper()
	cv := getJSON[customerView](t, srv, "/api/v1/customers/cust-42")
	if diff := cmp.Diff(wantCust42, cv.Holdings); diff != "" || cv.HoldingsFrom != from || cv.Customer != "cust-42" {
		t.Errorf("customer cust-42 from %q (want %q), holdings (-want +got):\n%s", cv.HoldingsFrom, from, diff)
	}
	if len(cv.Incidents) != 1 || cv.Incidents[0].ID != "inc-42" {
		t.Errorf("incidents of cust-42: %+v, want inc-42", cv.Incidents)
	}
	sv := getJSON[subscriberView](t, srv, "/api/v1/subscribers/203.0.113.7")
	if diff := cmp.Diff(wantHolders7, sv.Holdings); diff != "" || sv.Customer != "cust-7" || sv.HoldingsFrom != from {
		t.Errorf("subscriber 203.0.113.7: customer %q, from %q; holdings (-want +got):\n%s", sv.Customer, sv.HoldingsFrom, diff)
	}
	if len(sv.Incidents) != 1 || sv.Incidents[0].ID != "inc-7" || sv.SubscriberID != "cust-7" {
		t.Errorf("incidents of 203.0.113.7: %+v (subscriber_id %q)", sv.Incidents, sv.SubscriberID)
	}
	nat := getJSON[subscriberView](t, srv, "/api/v1/subscribers/198.51.100.1")
	if diff := cmp.Diff(wantNAT, nat.Holdings); diff != "" || nat.Customer != "" {
		t.Errorf("subscriber 198.51.100.1: customer %q; holdings (-want +got):\n%s", nat.Customer, diff)
	}
	nobody := getJSON[customerView](t, srv, "/api/v1/customers/nobody@example.net")
	if len(nobody.Holdings) != 0 || len(nobody.Incidents) != 0 || nobody.Holdings == nil {
		t.Errorf("unknown customer: %+v, want empty lists", nobody)
	}
}

// Without ClickHouse the console asks the identity table it is given.
func TestCustomerFromTable(t *testing.T) {
	table := identity.NewTable(0, 0)
	for _, b := range testBindings() {
		table.Apply(b)
	}
	srv, publish := newIdentityConsole(t, Dependencies{Identity: table})
	publish(customerAlerts()...)
	checkIdentityAPI(t, srv, "memory")
}

// With no identity the lists are empty, and say so.
func TestCustomerWithoutIdentity(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	cv := getJSON[customerView](t, srv, "/api/v1/customers/cust-42")
	sv := getJSON[subscriberView](t, srv, "/api/v1/subscribers/203.0.113.7")
	if cv.Holdings == nil || len(cv.Holdings) != 0 || cv.HoldingsFrom != "" || sv.Holdings == nil || len(sv.Holdings) != 0 || sv.HoldingsFrom != "" {
		t.Errorf("without identity: customer %+v, subscriber holdings %+v from %q", cv, sv.Holdings, sv.HoldingsFrom)
	}
}

func TestCustomerBadRequests(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	for _, path := range []string{
		"/api/v1/customers/cust-42?hours=1",
		"/api/v1/customers/cust-42?x=1&x=2",
		"/api/v1/customers/" + strings.Repeat("a", 254),
		"/api/v1/customers/a%00b",
		"/api/v1/customers/a%0Ab",
		"/api/v1/customers/%FF%FE",
	} {
		code, body := get(t, srv, path, true)
		var e apiError
		if err := json.Unmarshal(body, &e); err != nil || code != 400 || e.Error == "" {
			t.Errorf("GET %s: %d %s, want 400 with a JSON message", path, code, body)
		}
	}
	for path, want := range map[string]int{"/api/v1/customers/cust-42": 401, "/customers/cust-42": 303, "/search?q=cust-42": 303} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if resp, _ := do(t, req); resp.StatusCode != want {
			t.Errorf("GET %s without login: %d, want %d", path, resp.StatusCode, want)
		}
	}
	for _, path := range []string{"/customers/cust-42", "/customers/a%2Fb", "/search?q=203.0.113.7"} {
		if code, body := get(t, srv, path, true); code != 200 || !strings.Contains(string(body), `src="/static/app.js"`) {
			t.Errorf("page %s: %d", path, code)
		}
	}
}

// With ClickHouse the console reads subscriber_bindings, written by
// identity's writer from the bindings topic, and answers as the table.
func TestClickHouseCustomer(t *testing.T) {
	testenv.ForEachClickHouse(t, testClickHouseCustomer)
}

func testClickHouseCustomer(t *testing.T, addr string) {
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = addr
	cfg.Database = testenv.Name(t, "wscust")
	db := chtest.Database(t, cfg)
	ctx := context.Background()
	b := bus.NewMemory(64)
	icfg := identity.DefaultConfiguration()
	w := identity.NewBindingsWriter(icfg, b, db, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	store := identity.NewStore(icfg, b, slog.New(slog.DiscardHandler))
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Record(ctx, testBindings()...); err != nil {
		t.Fatal(err)
	}
	store.Stop()
	w.Stop() // writes what it holds

	batch, err := db.PrepareBatch(ctx, "INSERT INTO "+cfg.Database+".alerts (date, id, kind, state, subscriber_ip, subscriber_id, "+
		"window_start, window_end, first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence, sink_partition, sink_offset)")
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range customerAlerts() {
		if err := batch.Append(a.WindowEnd.Truncate(24*time.Hour), a.ID, a.Kind, a.State, a.SubscriberIP, a.SubscriberID, a.WindowStart,
			a.WindowEnd, a.FirstSeen, a.LastSeen, a.DistinctDsts, a.Flows, a.Score, a.Exporter, "{}", uint32(0), uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	srv, _ := newIdentityConsole(t, Dependencies{ClickHouse: db, Identity: identity.NewTable(0, 0)})
	checkIdentityAPI(t, srv, "clickhouse")

	// A database without the bindings (migrated by an older release):
	// the views still answer, saying why the holdings are missing.
	for _, tbl := range []string{"subscriber_bindings_by_customer_mv", "subscriber_bindings", "subscriber_bindings_by_customer"} {
		if err := db.Exec(ctx, "DROP TABLE "+cfg.Database+"."+tbl); err != nil {
			t.Fatal(err)
		}
	}
	cv := getJSON[customerView](t, srv, "/api/v1/customers/cust-42")
	sv := getJSON[subscriberView](t, srv, "/api/v1/subscribers/203.0.113.7")
	if cv.HoldingsError == "" || len(cv.Holdings) != 0 || cv.Holdings == nil || len(cv.Incidents) != 1 {
		t.Errorf("customer without the bindings table: %+v", cv)
	}
	if sv.HoldingsError == "" || len(sv.Holdings) != 0 || sv.Holdings == nil || len(sv.Incidents) != 1 {
		t.Errorf("subscriber without the bindings table: %+v", sv)
	}
}
