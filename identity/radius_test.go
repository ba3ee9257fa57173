package identity

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2866"
	"layeh.com/radius/rfc2869"
	"layeh.com/radius/rfc3162"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/network"
)

const radiusSecret = "s3cret-nas"

// radiusT0 is the tests' wall clock at the start: whole seconds, as RADIUS
// times are.
var radiusT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixMilli()

type radiusClock struct{ ms atomic.Int64 }

func (c *radiusClock) set(ms int64)            { c.ms.Store(ms) }
func (c *radiusClock) now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func radiusSeconds(ms int64) string            { return fmt.Sprint(ms / 1000) }
func radiusAttr(name string, value any) string { return fmt.Sprintf("%s = %v", name, value) }

// radiusEnv is a listener on a free loopback port recording into a real
// store.
type radiusEnv struct {
	srv   *radiusServer
	store *Store
	m     *metrics
	clock *radiusClock
	addr  string
}

// radiusLogger writes to the test's log, so that a failing test shows why a
// packet was dropped.
func radiusLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(radiusLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type radiusLogWriter struct{ t testing.TB }

func (w radiusLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func radiusConfig() Configuration {
	cfg := DefaultConfiguration()
	cfg.RADIUS.Listen = "127.0.0.1:0"
	cfg.RADIUS.Secret = radiusSecret
	cfg.RADIUS.Clients = []network.Prefix{network.MustParsePrefix("127.0.0.0/8")}
	cfg.RADIUS.DefaultInterim = time.Minute
	// The tests hold holdings to their exact start; the slack that
	// forgives exporters' clocks is the table's own test's business.
	cfg.ClockSlack = 0
	return cfg
}

func startRADIUS(t *testing.T, edit func(*RADIUSConfiguration), wrap func(Recorder) Recorder) *radiusEnv {
	t.Helper()
	cfg := radiusConfig()
	if edit != nil {
		edit(&cfg.RADIUS)
	}
	store := NewStore(cfg, bus.NewMemory(16), radiusLogger(t))
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	m := newMetrics(prometheus.NewRegistry(), store)
	var rec Recorder = store
	if wrap != nil {
		rec = wrap(store)
	}
	clock := &radiusClock{}
	clock.set(radiusT0)
	srv := newRADIUSServer(cfg.RADIUS, rec, store.Table(), m, radiusLogger(t), clock.now)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return &radiusEnv{srv: srv, store: store, m: m, clock: clock, addr: srv.Addr().String()}
}

// acct sends one Accounting-Request with radclient and tells whether it
// was answered.
func (e *radiusEnv) acct(t *testing.T, secret string, attrs ...string) bool {
	t.Helper()
	_, ok := testenv.Radclient(t, e.addr, "acct", secret, 1, time.Second, attrs...)
	return ok
}

// mustAcct sends a request that must be answered.
func (e *radiusEnv) mustAcct(t *testing.T, attrs ...string) {
	t.Helper()
	if out, ok := testenv.Radclient(t, e.addr, "acct", radiusSecret, 1, 2*time.Second, attrs...); !ok {
		t.Fatalf("no Accounting-Response:\n%s", out)
	}
}

func (e *radiusEnv) dropped(reason string) float64 {
	return testutil.ToFloat64(e.m.radiusDropped.WithLabelValues(reason))
}

func (e *radiusEnv) requests(status string) float64 {
	return testutil.ToFloat64(e.m.radiusRequests.WithLabelValues(status))
}

// radiusResolves checks who holds addr at each time (Unix ms): the customer,
// "" for no one.
func radiusResolves(t *testing.T, table *Table, addr string, want map[int64]string) {
	t.Helper()
	a := netip.MustParseAddr(addr)
	for at, customer := range want {
		r, _ := table.Resolve(a, 0, at)
		if r.Customer != customer {
			t.Errorf("%s at t0%+ds: held by %q, want %q", addr, (at-radiusT0)/1000, r.Customer, customer)
		}
	}
}

func radiusHistory(t *testing.T, table *Table, customer string, want []Binding) {
	t.Helper()
	if diff := cmp.Diff(want, table.History(customer), cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("history of %s (-want +got):\n%s", customer, diff)
	}
}

func TestRADIUSSessionLifecycle(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	table := e.store.Table()
	min5 := (5 * time.Minute).Milliseconds()
	common := []string{
		radiusAttr("User-Name", "alice"), radiusAttr("Acct-Session-Id", "s-alice"), radiusAttr("Framed-IP-Address", "203.0.113.10"),
		radiusAttr("NAS-IP-Address", "192.0.2.1"), radiusAttr("NAS-Identifier", "bras-1"), radiusAttr("Acct-Interim-Interval", 300),
	}
	want := Binding{
		Customer: "alice", Prefix: netip.MustParsePrefix("203.0.113.10/32"), Source: SourceRADIUS, Session: "s-alice",
		NAS: netip.MustParseAddr("192.0.2.1"), NASIdentifier: "bras-1",
		StartMs: radiusT0, UpdatedMs: radiusT0, ExpiresMs: radiusT0 + 3*min5,
	}

	// Start: held from the receive time (no Event-Timestamp, no delay)
	// until three interim intervals pass without word.
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Start"))...)
	radiusHistory(t, table, "alice", []Binding{want})
	radiusResolves(t, table, "203.0.113.10", map[int64]string{radiusT0 - 1: "", radiusT0: "alice", radiusT0 + 3*min5 - 1: "alice", radiusT0 + 3*min5: ""})

	// Interim-Update sent 2 s late, its session time a second off the
	// Start: the same holding, renewed from the event time.
	e.clock.set(radiusT0 + min5 + 2000)
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Interim-Update"), radiusAttr("Acct-Session-Time", 301), radiusAttr("Acct-Delay-Time", 2))...)
	want.UpdatedMs, want.ExpiresMs = radiusT0+min5, radiusT0+min5+3*min5
	radiusHistory(t, table, "alice", []Binding{want})
	radiusResolves(t, table, "203.0.113.10", map[int64]string{radiusT0 + 3*min5: "alice", radiusT0 + 4*min5 - 1: "alice", radiusT0 + 4*min5: ""})

	// Stop, 5 s late: ended at the event time.
	e.clock.set(radiusT0 + 2*min5 + 5000)
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Stop"), radiusAttr("Acct-Session-Time", 600), radiusAttr("Acct-Delay-Time", 5))...)
	want.UpdatedMs, want.EndMs, want.EndReason, want.ExpiresMs = radiusT0+2*min5, radiusT0+2*min5, EndStop, 0
	radiusHistory(t, table, "alice", []Binding{want})
	radiusResolves(t, table, "203.0.113.10", map[int64]string{radiusT0: "alice", radiusT0 + 2*min5 - 1: "alice", radiusT0 + 2*min5: ""})

	// The NAS sends the Stop again (a new identifier, a longer delay):
	// answered, and the session stays ended where it ended.
	e.clock.set(radiusT0 + 2*min5 + 9000)
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Stop"), radiusAttr("Acct-Session-Time", 600), radiusAttr("Acct-Delay-Time", 9))...)
	radiusHistory(t, table, "alice", []Binding{want})

	// An hour later the NAS's session ids came round: a Start with the
	// same id is a new holding.
	e.clock.set(radiusT0 + 3600_000)
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Start"))...)
	again := want
	again.StartMs, again.UpdatedMs, again.EndMs, again.EndReason, again.ExpiresMs = radiusT0+3600_000, radiusT0+3600_000, 0, "", radiusT0+3600_000+3*min5
	radiusHistory(t, table, "alice", []Binding{want, again})

	for status, n := range map[string]float64{"start": 2, "interim": 1, "stop": 2} {
		if got := e.requests(status); got != n {
			t.Errorf("requests{status_type=%q} = %v, want %v", status, got, n)
		}
	}
}

func TestRADIUSReassigned(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	table := e.store.Table()
	session := func(user, status string, at int64, extra ...string) {
		e.clock.set(at)
		e.mustAcct(t, append(extra, radiusAttr("Acct-Status-Type", status), radiusAttr("User-Name", user),
			radiusAttr("Acct-Session-Id", "s-"+user), radiusAttr("Framed-IP-Address", "203.0.113.12"), radiusAttr("Acct-Interim-Interval", 600))...)
	}
	session("lena", "Start", radiusT0)
	// The address goes to mia (lena's Stop was lost): lena's holding
	// ends where mia's begins.
	session("mia", "Start", radiusT0+60_000)
	// lena's late Interim-Update cannot take the address back.
	session("lena", "Interim-Update", radiusT0+120_000, radiusAttr("Acct-Session-Time", 120))
	h := table.History("lena")
	if len(h) != 1 || h[0].EndMs != radiusT0+60_000 || h[0].EndReason != EndReassigned {
		t.Errorf("lena: %+v, want one holding ended at t0+60s, reassigned", h)
	}
	radiusResolves(t, table, "203.0.113.12", map[int64]string{radiusT0: "lena", radiusT0 + 59_999: "lena", radiusT0 + 60_000: "mia", radiusT0 + 120_000: "mia"})
}

func TestRADIUSInterimWithoutStart(t *testing.T) {
	// wormsign started while the session ran: the first word is an
	// Interim-Update, the start is its session time back. No interval
	// sent and none configured: the holding never expires.
	e := startRADIUS(t, func(c *RADIUSConfiguration) { c.DefaultInterim = 0 }, nil)
	e.clock.set(radiusT0 + 3600_000)
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Interim-Update"), radiusAttr("User-Name", "late"), radiusAttr("Acct-Session-Id", "s-late"),
		radiusAttr("Framed-IP-Address", "203.0.113.11"), radiusAttr("Acct-Session-Time", 1800))
	radiusHistory(t, e.store.Table(), "late", []Binding{{
		Customer: "late", Prefix: netip.MustParsePrefix("203.0.113.11/32"), Source: SourceRADIUS, Session: "s-late",
		NAS: netip.MustParseAddr("127.0.0.1"), StartMs: radiusT0 + 1800_000, UpdatedMs: radiusT0 + 3600_000,
	}})
	radiusResolves(t, e.store.Table(), "203.0.113.11", map[int64]string{radiusT0: "", radiusT0 + 1800_000: "late", radiusT0 + 1000*3600_000: "late"})
}

func TestRADIUSIPv6AndEventTimestamp(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	table := e.store.Table()
	// The receive time is an hour after the event: Event-Timestamp wins
	// over the clock and over Acct-Delay-Time.
	ev := radiusT0 + 600_000
	e.clock.set(ev + 3600_000)
	common := []string{
		radiusAttr("User-Name", "bob"), radiusAttr("Acct-Session-Id", "s-bob"), radiusAttr("NAS-IPv6-Address", "2001:db8::1"),
		radiusAttr("Framed-IP-Address", "203.0.113.20"), radiusAttr("Framed-IPv6-Prefix", "2001:db8:1:2::/64"),
		radiusAttr("Delegated-IPv6-Prefix", "2001:db8:100::/56"), radiusAttr("Framed-IPv6-Address", "2001:db8:1:2::99"),
		radiusAttr("Acct-Delay-Time", 30),
	}
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("Event-Timestamp", radiusSeconds(ev)))...)
	var want []Binding
	for _, p := range []string{"203.0.113.20/32", "2001:db8:1:2::/64", "2001:db8:100::/56", "2001:db8:1:2::99/128"} {
		want = append(want, Binding{
			Customer: "bob", Prefix: netip.MustParsePrefix(p), Source: SourceRADIUS, Session: "s-bob",
			NAS: netip.MustParseAddr("2001:db8::1"), StartMs: ev, UpdatedMs: ev, ExpiresMs: ev + 180_000, // default_interim 1m
		})
	}
	sortBindings(want)
	radiusHistory(t, table, "bob", want)
	for _, a := range []string{"2001:db8:100:ff::1", "2001:db8:1:2:abcd::1", "2001:db8:1:2::99", "203.0.113.20"} {
		radiusResolves(t, table, a, map[int64]string{ev - 1: "", ev: "bob", ev + 179_999: "bob", ev + 180_000: ""})
	}
	radiusResolves(t, table, "2001:db8:1:3::1", map[int64]string{ev: ""})

	// Stop at Event-Timestamp ev+100 s: every address ends there.
	e.mustAcct(t, append(common, radiusAttr("Acct-Status-Type", "Stop"), radiusAttr("Event-Timestamp", radiusSeconds(ev+100_000)), radiusAttr("Acct-Session-Time", 100))...)
	for i := range want {
		want[i].EndMs, want[i].EndReason, want[i].UpdatedMs, want[i].ExpiresMs = ev+100_000, EndStop, ev+100_000, 0
	}
	radiusHistory(t, table, "bob", want)
	radiusResolves(t, table, "2001:db8:100::1", map[int64]string{ev + 99_999: "bob", ev + 100_000: ""})
}

func TestRADIUSAcctDelayTime(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "carol"), radiusAttr("Acct-Session-Id", "s-carol"),
		radiusAttr("Framed-IP-Address", "203.0.113.30"), radiusAttr("Acct-Delay-Time", 30))
	got := e.store.Table().History("carol")
	if len(got) != 1 || got[0].StartMs != radiusT0-30_000 || got[0].ExpiresMs != radiusT0-30_000+180_000 {
		t.Fatalf("carol's holding %+v, want it to start 30 s before the receive time", got)
	}
	radiusResolves(t, e.store.Table(), "203.0.113.30", map[int64]string{radiusT0 - 30_001: "", radiusT0 - 30_000: "carol"})
}

func TestRADIUSAccountingOnOff(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	table := e.store.Table()
	start := func(user, addr, nas string) {
		e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", user), radiusAttr("Acct-Session-Id", "s-"+user),
			radiusAttr("Framed-IP-Address", addr), radiusAttr("NAS-IP-Address", nas), radiusAttr("Acct-Interim-Interval", 3600))
	}
	start("dave", "203.0.113.40", "192.0.2.2")
	start("erin", "203.0.113.41", "192.0.2.2")
	start("frank", "203.0.113.42", "192.0.2.3")

	// 192.0.2.2 restarts: its sessions end at the Accounting-On's event
	// time; the other NAS's stay.
	on := radiusT0 + 600_000
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Accounting-On"), radiusAttr("NAS-IP-Address", "192.0.2.2"), radiusAttr("Event-Timestamp", radiusSeconds(on)))
	for _, who := range []string{"dave", "erin"} {
		h := table.History(who)
		if len(h) != 1 || h[0].EndMs != on || h[0].EndReason != EndNASRestart {
			t.Errorf("%s after Accounting-On: %+v, want ended at t0+600s as %s", who, h, EndNASRestart)
		}
	}
	radiusResolves(t, table, "203.0.113.40", map[int64]string{on - 1: "dave", on: ""})
	radiusResolves(t, table, "203.0.113.42", map[int64]string{on: "frank"})

	// After the restart dave logs in again on the same address; an
	// Accounting-Off of the other NAS ends frank and nothing of dave's.
	e.clock.set(on + 60_000)
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "dave"), radiusAttr("Acct-Session-Id", "s-dave-2"),
		radiusAttr("Framed-IP-Address", "203.0.113.40"), radiusAttr("NAS-IP-Address", "192.0.2.2"), radiusAttr("Acct-Interim-Interval", 3600))
	off := on + 120_000
	e.clock.set(off)
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Accounting-Off"), radiusAttr("NAS-IP-Address", "192.0.2.3"))
	if h := table.History("frank"); len(h) != 1 || h[0].EndMs != off || h[0].EndReason != EndNASRestart {
		t.Errorf("frank after Accounting-Off: %+v", h)
	}
	radiusResolves(t, table, "203.0.113.40", map[int64]string{on - 1: "dave", on: "", on + 60_000: "dave", off + 1: "dave"})
	if e.requests("accounting_on") != 1 || e.requests("accounting_off") != 1 {
		t.Errorf("accounting_on %v, accounting_off %v requests, want 1 each", e.requests("accounting_on"), e.requests("accounting_off"))
	}
}

func TestRADIUSIDAttribute(t *testing.T) {
	for _, c := range []struct {
		id    string
		attrs []string
		want  string
	}{
		{"chargeable-user-identity", []string{radiusAttr("Chargeable-User-Identity", `"cui-7"`)}, "cui-7"},
		{"CLASS", []string{radiusAttr("Class", "0x637573742d39")}, "cust-9"},
		// Not UTF-8: kept in hex, which survives JSON.
		{"Class", []string{radiusAttr("Class", "0x8001ff")}, "0x8001ff"},
	} {
		t.Run(c.id+"="+c.want, func(t *testing.T) {
			e := startRADIUS(t, func(r *RADIUSConfiguration) { r.IDAttribute = c.id }, nil)
			e.mustAcct(t, append(c.attrs, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "not-the-id"),
				radiusAttr("Framed-IP-Address", "203.0.113.50"))...)
			radiusResolves(t, e.store.Table(), "203.0.113.50", map[int64]string{radiusT0: c.want})
			// Without the attribute: answered, nothing recorded.
			e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "someone"), radiusAttr("Framed-IP-Address", "203.0.113.51"))
			radiusResolves(t, e.store.Table(), "203.0.113.51", map[int64]string{radiusT0: ""})
			if got := e.dropped(radiusDropNoCustomer); got != 1 {
				t.Errorf("no_customer = %v, want 1", got)
			}
		})
	}
}

func TestRADIUSAnsweredWithoutRecord(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	// No User-Name, no address, an Acct-Status-Type wormsign has no use
	// for: each answered so that the NAS stops retransmitting, none
	// recorded.
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("Framed-IP-Address", "203.0.113.60"))
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "noaddr"), radiusAttr("Framed-IP-Address", "255.255.255.254"))
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Failed"), radiusAttr("User-Name", "failed"), radiusAttr("Framed-IP-Address", "203.0.113.61"))
	if n := e.store.Table().Len(); n != 0 {
		t.Errorf("table holds %d bindings, want none: %+v", n, e.store.Table().All())
	}
	for reason, n := range map[string]float64{radiusDropNoCustomer: 1, radiusDropNoAddress: 1} {
		if got := e.dropped(reason); got != n {
			t.Errorf("dropped{reason=%q} = %v, want %v", reason, got, n)
		}
	}
	if got := e.requests("other"); got != 1 {
		t.Errorf("requests{other} = %v, want 1", got)
	}
}

func TestRADIUSDualStackListener(t *testing.T) {
	// On ":port" IPv4 NASes arrive as ::ffff:a.b.c.d: still the IPv4
	// client 127.0.0.0/8, still answered, still NAS 127.0.0.1.
	e := startRADIUS(t, func(c *RADIUSConfiguration) { c.Listen = ":0" }, nil)
	e.addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.srv.Addr().Port()).String()
	e.mustAcct(t, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "kim"), radiusAttr("Framed-IP-Address", "203.0.113.110"))
	r, _ := e.store.Table().Resolve(netip.MustParseAddr("203.0.113.110"), 0, radiusT0)
	if r.Customer != "kim" || r.Binding.NAS != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("resolved %+v, want kim from NAS 127.0.0.1", r)
	}
}

func TestRADIUSWrongSecret(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	if e.acct(t, "not-the-secret", radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "mallory"), radiusAttr("Framed-IP-Address", "203.0.113.70")) {
		t.Fatal("a request signed with the wrong secret was answered")
	}
	if got := e.dropped(radiusDropBadAuthenticator); got != 1 {
		t.Errorf("bad_authenticator = %v, want 1", got)
	}
	radiusResolves(t, e.store.Table(), "203.0.113.70", map[int64]string{radiusT0: ""})
}

func TestRADIUSUnknownClient(t *testing.T) {
	e := startRADIUS(t, func(c *RADIUSConfiguration) {
		c.Clients = []network.Prefix{network.MustParsePrefix("192.0.2.0/24")}
	}, nil)
	// NAS-IP-Address names an allowed NAS, but the packet comes from
	// 127.0.0.1: the source decides.
	if e.acct(t, radiusSecret, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "mallory"),
		radiusAttr("Framed-IP-Address", "203.0.113.71"), radiusAttr("NAS-IP-Address", "192.0.2.1")) {
		t.Fatal("a request from outside identity.radius.clients was answered")
	}
	if got := e.dropped(radiusDropUnknownClient); got != 1 {
		t.Errorf("unknown_client = %v, want 1", got)
	}
	if e.store.Table().Len() != 0 {
		t.Error("a request from an unknown client was recorded")
	}
}

// radiusFlakyRecorder fails its first fails records, and counts the calls.
type radiusFlakyRecorder struct {
	Recorder
	mu           sync.Mutex
	fails, calls int
}

func (f *radiusFlakyRecorder) Record(ctx context.Context, bs ...Binding) ([]Applied, error) {
	f.mu.Lock()
	f.calls++
	fail := f.calls <= f.fails
	f.mu.Unlock()
	if fail {
		return nil, errors.New("kafka is down")
	}
	return f.Recorder.Record(ctx, bs...)
}

func (f *radiusFlakyRecorder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func TestRADIUSRecordFailureIsRetransmitted(t *testing.T) {
	var rec *radiusFlakyRecorder
	e := startRADIUS(t, nil, func(r Recorder) Recorder { rec = &radiusFlakyRecorder{Recorder: r, fails: 1}; return rec })
	// radclient tries twice: the first try is not answered (the record
	// failed), the retransmission is.
	out, ok := testenv.Radclient(t, e.addr, "acct", radiusSecret, 2, time.Second,
		radiusAttr("Acct-Status-Type", "Start"), radiusAttr("User-Name", "gina"), radiusAttr("Framed-IP-Address", "203.0.113.80"))
	if !ok {
		t.Fatalf("retransmission not answered:\n%s", out)
	}
	if got := testutil.ToFloat64(e.m.recordErrors); got != 1 {
		t.Errorf("record errors = %v, want 1", got)
	}
	if rec.count() != 2 {
		t.Errorf("%d records, want 2 (one failed, one kept)", rec.count())
	}
	radiusResolves(t, e.store.Table(), "203.0.113.80", map[int64]string{radiusT0: "gina"})
}

// radiusExchange sends b from a fresh socket and returns the reply, if one
// comes within wait.
func radiusExchange(t *testing.T, conn *net.UDPConn, addr string, b []byte, wait time.Duration) ([]byte, bool) {
	t.Helper()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(b, to); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, radius.MaxPacketLength)
	n, _, err := conn.ReadFromUDP(buf)
	if err != nil {
		return nil, false
	}
	return buf[:n], true
}

func radiusUDPClient(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func radiusStartPacket(t testing.TB, user, addr string) *radius.Packet {
	t.Helper()
	p := radius.New(radius.CodeAccountingRequest, []byte(radiusSecret))
	rfc2866.AcctStatusType_Set(p, rfc2866.AcctStatusType_Value_Start)
	rfc2865.UserName_SetString(p, user)
	rfc2866.AcctSessionID_SetString(p, "s-"+user)
	rfc2865.FramedIPAddress_Set(p, net.ParseIP(addr))
	return p
}

func radiusEncode(t testing.TB, p *radius.Packet) []byte {
	t.Helper()
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRADIUSRetransmissionAnsweredOnce(t *testing.T) {
	var rec *radiusFlakyRecorder
	e := startRADIUS(t, nil, func(r Recorder) Recorder { rec = &radiusFlakyRecorder{Recorder: r}; return rec })
	conn := radiusUDPClient(t)
	p := radiusStartPacket(t, "hank", "203.0.113.90")
	// Proxy-State, twice, as a chain of proxies adds them: echoed in
	// order.
	p.Add(rfc2865.ProxyState_Type, radius.Attribute("one"))
	p.Add(rfc2865.ProxyState_Type, radius.Attribute("two"))
	req := radiusEncode(t, p)
	var answers [][]byte
	for range 2 {
		resp, ok := radiusExchange(t, conn, e.addr, req, 2*time.Second)
		if !ok {
			t.Fatal("no Accounting-Response")
		}
		answers = append(answers, resp)
	}
	if rec.count() != 1 {
		t.Errorf("recorded %d times, want once", rec.count())
	}
	if diff := cmp.Diff(answers[0], answers[1]); diff != "" {
		t.Errorf("the retransmission got another answer:\n%s", diff)
	}
	if !radius.IsAuthenticResponse(answers[0], req, []byte(radiusSecret)) {
		t.Error("response authenticator does not verify")
	}
	resp, err := radius.Parse(answers[0], []byte(radiusSecret))
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, a := range resp.Attributes {
		if a.Type == rfc2865.ProxyState_Type {
			states = append(states, string(a.Attribute))
		}
	}
	if resp.Code != radius.CodeAccountingResponse || resp.Identifier != p.Identifier || !cmp.Equal(states, []string{"one", "two"}) {
		t.Errorf("response code %v id %d proxy states %q, want Accounting-Response id %d [one two]", resp.Code, resp.Identifier, states, p.Identifier)
	}
}

// radiusSigned sets b's Request Authenticator (RFC 2866 §3) for radiusSecret,
// over its Length octets when that field is sane, so that a hand-made
// packet gets past the authenticator check.
func radiusSigned(b []byte) []byte {
	b = append([]byte(nil), b...)
	if len(b) < 20 {
		return b
	}
	n := int(b[2])<<8 | int(b[3])
	if n < 20 || n > len(b) {
		return b
	}
	clear(b[4:20])
	h := md5.New()
	h.Write(b[:n])
	h.Write([]byte(radiusSecret))
	copy(b[4:20], h.Sum(nil))
	return b
}

func TestRADIUSDroppedPackets(t *testing.T) {
	e := startRADIUS(t, nil, nil)
	conn := radiusUDPClient(t)
	start := radiusEncode(t, radiusStartPacket(t, "ivan", "203.0.113.100"))
	access := radius.New(radius.CodeAccessRequest, []byte(radiusSecret))
	rfc2865.UserName_SetString(access, "ivan")
	prefix0 := radiusStartPacket(t, "ivan", "203.0.113.101")
	// ::/0 would hand ivan every IPv6 address.
	prefix0.Add(rfc3162.FramedIPv6Prefix_Type, radius.Attribute{0, 0})
	noStatus := radiusStartPacket(t, "ivan", "203.0.113.102")
	noStatus.Del(rfc2866.AcctStatusType_Type)
	badTime := radiusStartPacket(t, "ivan", "203.0.113.103")
	badTime.Add(rfc2869.EventTimestamp_Type, radius.Attribute{1, 2})
	shortAddr := radiusStartPacket(t, "ivan", "203.0.113.104")
	shortAddr.Set(rfc2865.FramedIPAddress_Type, radius.Attribute{203, 0, 113})

	// A valid request with padding past Length: answered (octets past
	// Length are not part of the packet).
	padded := append(append([]byte(nil), start...), 0, 0, 0, 0)
	broken := append([]byte(nil), start...)
	broken[21] = 200 // first attribute's length runs past the end

	for _, c := range []struct {
		name   string
		packet []byte
		reason string // "" when answered
	}{
		{"padded", padded, ""},
		{"short", start[:12], radiusDropMalformed},
		{"length beyond datagram", append(append([]byte(nil), start[:2]...), append([]byte{0x10, 0}, start[4:]...)...), radiusDropMalformed},
		{"access-request", radiusEncode(t, access), radiusDropNotAccounting},
		{"tampered", append(append([]byte(nil), start[:len(start)-1]...), start[len(start)-1]^1), radiusDropBadAuthenticator},
		{"attribute framing", radiusSigned(broken), radiusDropMalformed},
		{"ipv6 prefix /0", radiusEncode(t, prefix0), radiusDropMalformed},
		{"no acct-status-type", radiusEncode(t, noStatus), radiusDropMalformed},
		{"framed-ip-address of 3 octets", radiusEncode(t, shortAddr), radiusDropMalformed},
		// An unreadable Event-Timestamp is ignored: the receive time.
		{"bad event-timestamp", radiusEncode(t, badTime), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.dropped(c.reason)
			_, answered := radiusExchange(t, conn, e.addr, c.packet, 300*time.Millisecond)
			switch {
			case c.reason == "" && !answered:
				t.Error("not answered")
			case c.reason != "" && answered:
				t.Error("answered")
			case c.reason != "":
				deadline := time.Now().Add(2 * time.Second)
				for e.dropped(c.reason) != before+1 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if got := e.dropped(c.reason); got != before+1 {
					t.Errorf("dropped{reason=%q} = %v, want %v", c.reason, got, before+1)
				}
			}
		})
	}
	radiusResolves(t, e.store.Table(), "203.0.113.100", map[int64]string{radiusT0: "ivan"})
	radiusResolves(t, e.store.Table(), "203.0.113.101", map[int64]string{radiusT0: ""})
	radiusResolves(t, e.store.Table(), "203.0.113.103", map[int64]string{radiusT0: "ivan"})
}

// TestRADIUSThroughFreeRADIUS puts FreeRADIUS between the NAS and
// wormsign, as an ISP does: FreeRADIUS proxies the NAS's accounting to
// wormsign (with a secret of their own) and answers the NAS only once
// wormsign answered it.
func TestRADIUSThroughFreeRADIUS(t *testing.T) {
	cfg := radiusConfig()
	cfg.RADIUS.Secret = "proxy-to-wormsign"
	store := NewStore(cfg, nil, radiusLogger(t))
	clock := &radiusClock{}
	clock.set(radiusT0)
	c, err := New(cfg, Dependencies{Logger: radiusLogger(t), Store: store, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	proxy := testenv.StartFreeRADIUSProxy(t, testenv.FreeRADIUSProxyConfig{
		HomeServer: c.radius.Addr().String(), HomeSecret: cfg.RADIUS.Secret, NASSecret: "nas-to-proxy",
	})
	send := func(attrs ...string) {
		t.Helper()
		if out, ok := testenv.Radclient(t, proxy.Addr, "acct", proxy.Secret, 1, 8*time.Second, attrs...); !ok {
			t.Fatalf("no Accounting-Response through FreeRADIUS:\n%s", out)
		}
	}
	session := []string{
		radiusAttr("User-Name", "judy"), radiusAttr("Acct-Session-Id", "s-judy"), radiusAttr("NAS-IP-Address", "192.0.2.77"),
		radiusAttr("Framed-IP-Address", "203.0.113.77"), radiusAttr("Delegated-IPv6-Prefix", "2001:db8:77::/48"),
	}
	send(append(session, radiusAttr("Acct-Status-Type", "Start"), radiusAttr("Event-Timestamp", radiusSeconds(radiusT0)))...)
	table := store.Table()
	h := table.History("judy")
	if len(h) != 2 {
		t.Fatalf("judy's holdings through FreeRADIUS: %+v, want the address and the prefix", h)
	}
	for _, b := range h {
		// The NAS is the one FreeRADIUS proxied for, not FreeRADIUS.
		if b.NAS != netip.MustParseAddr("192.0.2.77") || b.StartMs != radiusT0 || b.EndMs != 0 {
			t.Errorf("holding %+v: want NAS 192.0.2.77, started at t0, open", b)
		}
	}
	radiusResolves(t, table, "2001:db8:77:1::1", map[int64]string{radiusT0 - 1: "", radiusT0: "judy"})

	send(append(session, radiusAttr("Acct-Status-Type", "Stop"), radiusAttr("Event-Timestamp", radiusSeconds(radiusT0+60_000)), radiusAttr("Acct-Session-Time", 60))...)
	radiusResolves(t, table, "203.0.113.77", map[int64]string{radiusT0 + 59_999: "judy", radiusT0 + 60_000: ""})
	for _, b := range table.History("judy") {
		if b.EndReason != EndStop {
			t.Errorf("after Stop: %+v", b)
		}
	}

	// The NAS restarts: its Accounting-On, proxied, ends what is left.
	send(radiusAttr("User-Name", "judy"), radiusAttr("Acct-Session-Id", "s-judy-2"), radiusAttr("NAS-IP-Address", "192.0.2.77"),
		radiusAttr("Framed-IP-Address", "203.0.113.77"), radiusAttr("Acct-Status-Type", "Start"), radiusAttr("Event-Timestamp", radiusSeconds(radiusT0+120_000)))
	send(radiusAttr("Acct-Status-Type", "Accounting-On"), radiusAttr("NAS-IP-Address", "192.0.2.77"), radiusAttr("Event-Timestamp", radiusSeconds(radiusT0+180_000)))
	radiusResolves(t, table, "203.0.113.77", map[int64]string{radiusT0 + 120_000: "judy", radiusT0 + 180_000: ""})
	if got := testutil.ToFloat64(c.metrics.radiusRequests.WithLabelValues("accounting_on")); got != 1 {
		t.Errorf("accounting_on requests = %v, want 1", got)
	}
}

func FuzzRADIUSPacket(f *testing.F) {
	start := radiusStartPacket(f, "fuzz", "203.0.113.200")
	rfc3162.FramedIPv6Prefix_Add(start, &net.IPNet{IP: net.ParseIP("2001:db8::"), Mask: net.CIDRMask(64, 128)})
	rfc2866.AcctSessionTime_Set(start, 60)
	on := radius.New(radius.CodeAccountingRequest, []byte(radiusSecret))
	rfc2866.AcctStatusType_Set(on, rfc2866.AcctStatusType_Value_AccountingOn)
	f.Add(radiusEncode(f, start))
	f.Add(radiusEncode(f, on))
	f.Add([]byte{})
	f.Add(make([]byte, 20))

	cfg := radiusConfig()
	cfg.MaxBindings, cfg.MaxHistory = 1000, 2
	store := NewStore(cfg, nil, slog.New(slog.DiscardHandler))
	m := newMetrics(prometheus.NewRegistry(), store)
	s := newRADIUSServer(cfg.RADIUS, store, store.Table(), m, slog.New(slog.DiscardHandler), func() time.Time { return time.UnixMilli(radiusT0) })
	w := &radiusWorker{}
	src := netip.MustParseAddrPort("127.0.0.1:1645")
	f.Fuzz(func(t *testing.T, b []byte) {
		// As sent, then signed with the secret, so that the fuzzer gets
		// past the authenticator to the attributes.
		for _, pkt := range [][]byte{b, radiusSigned(b)} {
			if req, ok := s.admit(pkt, src, s.now()); ok {
				if resp := s.handle(w, req); resp != nil {
					if _, err := radius.Parse(resp, s.secret); err != nil {
						t.Fatalf("unreadable response %x: %v", resp, err)
					}
				}
			}
		}
	})
}
