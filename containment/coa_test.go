package containment

import (
	"bytes"
	"context"
	"crypto/md5"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"layeh.com/radius"
	"layeh.com/radius/rfc2865"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/network"
)

// coaEnv is a containment component with CoA on, its identity store, and
// a FreeRADIUS in the NAS's place at 127.0.0.1.
type coaEnv struct {
	c      *Component
	store  *identity.Store
	alerts bus.Producer
	nas    *testenv.FreeRADIUSCoA
	logs   *lockedBuffer
}

// startCoA starts the component against nas with the shared secret
// secret; edit changes the configuration.
func startCoA(t *testing.T, nas *testenv.FreeRADIUSCoA, secret string, edit func(*CoAConfiguration)) *coaEnv {
	t.Helper()
	cfg := testConfig()
	cfg.Grace = 0
	cfg.CoA.Enabled, cfg.CoA.Port, cfg.CoA.Secret = true, nas.Port, secret
	cfg.CoA.Timeout = time.Second
	if edit != nil {
		edit(&cfg.CoA)
	}
	b := bus.NewMemory(64)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := identity.NewStore(identity.DefaultConfiguration(), b, logger)
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	alertsTopic := cfg.Topic + "-alerts"
	c, err := New(cfg, Dependencies{Logger: logger, Bus: b, AlertsTopic: alertsTopic})
	if err != nil {
		t.Fatal(err)
	}
	c.FollowIdentity(store)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	prod, err := b.Producer(alertsTopic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("wormsign log:\n%s", logs.String())
		}
	})
	return &coaEnv{c: c, store: store, alerts: prod, nas: nas, logs: logs}
}

// session records a RADIUS holding of customer on prefix begun at start
// (its Stop, now, when stopped).
func (e *coaEnv) session(t *testing.T, customer, prefix, session string, start time.Time, stopped bool) identity.Binding {
	t.Helper()
	b := identity.Binding{Customer: customer, Prefix: netip.MustParsePrefix(prefix), Source: identity.SourceRADIUS,
		Session: session, NAS: netip.MustParseAddr("127.0.0.1"), NASIdentifier: "bng-1",
		StartMs: start.UnixMilli(), UpdatedMs: start.UnixMilli()}
	if stopped {
		now := time.Now().UnixMilli()
		b.EndMs, b.EndReason, b.UpdatedMs = now, identity.EndStop, now
	}
	if _, err := e.store.Record(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return b
}

// alert publishes an smtp_fanout incident of ip, naming customer when set.
func (e *coaEnv) alert(t *testing.T, id, customer, ip string) {
	t.Helper()
	a := mkAlert(id, alert.KindSMTPFanout, alert.StateOpen, ip, time.Now().UTC())
	if customer != "" {
		a.Evidence.Identity = &alert.Identity{Customer: customer, Source: identity.SourceRADIUS}
	}
	v, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.alerts.Publish(context.Background(), bus.Message{Key: []byte(ip), Value: v}); err != nil {
		t.Fatal(err)
	}
}

// wait returns the requests FreeRADIUS received once there are n.
func (e *coaEnv) wait(t *testing.T, n int) []testenv.RADIUSRequest {
	t.Helper()
	var got []testenv.RADIUSRequest
	waitFor(t, "freeradius receives the requests", func() bool {
		got = e.nas.Requests(t)
		return len(got) >= n
	})
	if len(got) != n {
		t.Fatalf("freeradius received %d requests, want %d: %+v", len(got), n, got)
	}
	return got
}

// count is wormsign_containment_coa_requests_total{type, result}.
func (e *coaEnv) count(typ, result string) float64 {
	return testutil.ToFloat64(e.c.metrics.coaRequests.WithLabelValues(typ, result))
}

// waitCount waits until the counter reaches want.
func (e *coaEnv) waitCount(t *testing.T, typ, result string, want float64) {
	t.Helper()
	waitFor(t, "coa requests "+typ+" "+result+" counted", func() bool { return e.count(typ, result) >= want })
	if got := e.count(typ, result); got != want {
		t.Errorf("coa %s %s counted %v, want %v", typ, result, got, want)
	}
}

// request is what a test expects of one request: its type and the
// attributes named (others may be present; "" asserts absence).
type request struct {
	Type  string
	Attrs map[string]string
}

func checkRequests(t *testing.T, got []testenv.RADIUSRequest, want []request) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d requests, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		have := request{Type: got[i].Type, Attrs: map[string]string{}}
		for name := range w.Attrs {
			have.Attrs[name] = strings.Join(got[i].Attributes[name], ",")
		}
		if diff := cmp.Diff(w, have); diff != "" {
			t.Errorf("request %d (-want +got):\n%s\nall attributes: %v", i, diff, got[i].Attributes)
		}
		if got[i].Get("Event-Timestamp") == "" {
			t.Errorf("request %d has no Event-Timestamp: %v", i, got[i].Attributes)
		}
	}
}

// An incident of a customer with a RADIUS session (IPv4 address and an
// IPv6 prefix) blocks both; the NAS gets one CoA-Request per holding,
// naming the session the RFC 5176 way, with block_smtp's Filter-Id, and
// ACKs. A release by hand sends the release attributes.
func TestCoABlockAndRelease(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret"})
	e := startCoA(t, nas, "coa-secret", nil)
	start := time.Now().Add(-time.Minute)
	e.session(t, "A", "203.0.113.7/32", "sess-A-1", start, false)
	e.session(t, "A", "2001:db8:1::/56", "sess-A-1", start, false)
	e.alert(t, "inc-A", "A", "203.0.113.7")
	block := func(ipAttr, value, filter string) request {
		return request{Type: "CoA-Request", Attrs: map[string]string{
			"Acct-Session-Id": "sess-A-1", "NAS-IP-Address": "127.0.0.1", "NAS-Identifier": "bng-1",
			ipAttr: value, "Filter-Id": filter, "User-Name": ""}}
	}
	got := e.wait(t, 2)
	// The two entries are added in prefix order, each by its own change;
	// both go to the same session, so to the same worker, in order.
	checkRequests(t, got, []request{
		block("Framed-IP-Address", "203.0.113.7", "wormsign-block-smtp"),
		block("Framed-IPv6-Prefix", "2001:db8:1::/56", "wormsign-block-smtp"),
	})
	e.waitCount(t, "coa", coaACK, 2)

	if _, err := e.c.Release(context.Background(), network.Prefix{Prefix: netip.MustParsePrefix("203.0.113.7/32")}, "carol", "called the customer"); err != nil {
		t.Fatal(err)
	}
	got = e.wait(t, 3)
	checkRequests(t, got[2:], []request{block("Framed-IP-Address", "203.0.113.7", "wormsign-release")})
	e.waitCount(t, "coa", coaACK, 3)
	for _, r := range []string{coaNAK, coaTimeout, coaError, coaDropped} {
		if n := e.count("coa", r); n != 0 {
			t.Errorf("coa %s counted %v, want 0", r, n)
		}
	}
}

// With disconnect set an add sends a Disconnect-Request carrying only the
// session's identification; the release is a CoA-Request all the same.
func TestCoADisconnect(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret"})
	e := startCoA(t, nas, "coa-secret", func(c *CoAConfiguration) { c.Disconnect = true })
	e.session(t, "A", "203.0.113.7/32", "sess-A-1", time.Now().Add(-time.Minute), false)
	e.alert(t, "inc-A", "A", "203.0.113.7")
	got := e.wait(t, 1)
	checkRequests(t, got, []request{{Type: "Disconnect-Request", Attrs: map[string]string{
		"Acct-Session-Id": "sess-A-1", "NAS-IP-Address": "127.0.0.1", "Framed-IP-Address": "203.0.113.7", "Filter-Id": ""}}})
	e.waitCount(t, "disconnect", coaACK, 1)
	if _, err := e.c.Release(context.Background(), network.Prefix{Prefix: netip.MustParsePrefix("203.0.113.7/32")}, "carol", ""); err != nil {
		t.Fatal(err)
	}
	got = e.wait(t, 2)
	checkRequests(t, got[1:], []request{{Type: "CoA-Request", Attrs: map[string]string{
		"Acct-Session-Id": "sess-A-1", "Filter-Id": "wormsign-release"}}})
	e.waitCount(t, "coa", coaACK, 1)
}

// A customer who reconnects elsewhere takes the block along: the entry on
// the old address is released without a request (that session is over,
// the address someone else's), the new session gets the restriction as a
// CoA-Request even with disconnect set (a Disconnect would end every
// reconnection), and so does a session that begins on the same address,
// which changes nothing on the list.
func TestCoAFollowsCustomer(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret"})
	e := startCoA(t, nas, "coa-secret", func(c *CoAConfiguration) {
		c.Disconnect = true
		c.BlockSMTP = []string{"Filter-Id=smtp-off", `Reply-Message = "port 25 closed"`, "Session-Timeout=3600"}
	})
	t0 := time.Now().Add(-time.Minute)
	s1 := e.session(t, "A", "203.0.113.7/32", "sess-1", t0, false)
	e.alert(t, "inc-A", "A", "203.0.113.7")
	e.wait(t, 1)
	e.waitCount(t, "disconnect", coaACK, 1)

	// The session ends (the Disconnect did it) and A comes back on .9.
	e.session(t, "A", s1.Prefix.String(), s1.Session, t0, true)
	s2 := e.session(t, "A", "203.0.113.9/32", "sess-2", time.Now(), false)
	got := e.wait(t, 2)
	checkRequests(t, got[1:], []request{{Type: "CoA-Request", Attrs: map[string]string{
		"Acct-Session-Id": "sess-2", "Framed-IP-Address": "203.0.113.9", "Filter-Id": "smtp-off",
		"Reply-Message": "port 25 closed", "Session-Timeout": "3600"}}})
	var released bool
	for _, ch := range e.c.Recent() {
		released = released || (ch.Type == ChangeRelease && ch.Note == noteReassigned && ch.Entry.Prefix == s1.Prefix)
	}
	if !released {
		t.Fatalf("changes %+v: want .7 released as %q (the sender skips its release by that note)", e.c.Recent(), noteReassigned)
	}

	// A reconnects on .9 again: a new session, the same address.
	e.session(t, "A", s2.Prefix.String(), s2.Session, time.UnixMilli(s2.StartMs), true)
	e.session(t, "A", "203.0.113.9/32", "sess-3", time.Now(), false)
	got = e.wait(t, 3)
	checkRequests(t, got[2:], []request{{Type: "CoA-Request", Attrs: map[string]string{
		"Acct-Session-Id": "sess-3", "Framed-IP-Address": "203.0.113.9", "Filter-Id": "smtp-off"}}})
	e.waitCount(t, "coa", coaACK, 2)
	if n := e.count("disconnect", coaACK); n != 1 {
		t.Errorf("disconnects %v, want the first one only", n)
	}
}

// A NAK is counted with its Error-Cause, which the log names.
func TestCoANAK(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret", NAKCause: "Session-Context-Not-Found"})
	e := startCoA(t, nas, "coa-secret", nil)
	e.session(t, "A", "203.0.113.7/32", "sess-A-1", time.Now().Add(-time.Minute), false)
	e.alert(t, "inc-A", "A", "203.0.113.7")
	e.wait(t, 1)
	e.waitCount(t, "coa", coaNAK, 1)
	if n := testutil.ToFloat64(e.c.metrics.coaNAKs.WithLabelValues("coa", "Session-Context-Not-Found")); n != 1 {
		t.Errorf("naks with Session-Context-Not-Found: %v, want 1", n)
	}
	waitFor(t, "the NAK is logged with its cause", func() bool {
		return strings.Contains(e.logs.String(), "error_cause=Session-Context-Not-Found")
	})
	if n := e.count("coa", coaACK); n != 0 {
		t.Errorf("acks %v, want 0", n)
	}
}

// A request signed with another secret is dropped by the NAS unanswered:
// it is sent 1+retries times, then counted as a timeout.
func TestCoAWrongSecretTimesOut(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret"})
	e := startCoA(t, nas, "not-the-secret", func(c *CoAConfiguration) { c.Timeout, c.Retries = 300*time.Millisecond, 2 })
	e.session(t, "A", "203.0.113.7/32", "sess-A-1", time.Now().Add(-time.Minute), false)
	e.alert(t, "inc-A", "A", "203.0.113.7")
	e.waitCount(t, "coa", coaTimeout, 1)
	// FreeRADIUS logs a retransmission that arrives while it still holds
	// the first as a duplicate, and drops it with the first.
	log := nas.Log()
	dropped := strings.Count(log, "invalid Request Authenticator")
	tries := strings.Count(log, "Received CoA-Request Id") + strings.Count(log, "Ignoring duplicate packet from client wormsign")
	if dropped == 0 || tries != 3 {
		t.Errorf("freeradius received %d tries and dropped %d as not authentic, want 3 tries (the first and 2 retries), all dropped", tries, dropped)
	}
	if got := nas.Requests(t); len(got) != 0 {
		t.Errorf("freeradius processed %+v, want nothing", got)
	}
}

// An entry without a customer (identity named none: an alert without
// identity, a manual add) sends nothing, although a RADIUS session holds
// the address.
func TestCoANoCustomerSendsNothing(t *testing.T) {
	nas := testenv.StartFreeRADIUSCoA(t, testenv.FreeRADIUSCoAConfig{Secret: "coa-secret"})
	e := startCoA(t, nas, "coa-secret", nil)
	e.session(t, "A", "203.0.113.7/32", "sess-A-1", time.Now().Add(-time.Minute), false)
	e.session(t, "B", "203.0.113.8/32", "sess-B-1", time.Now().Add(-time.Minute), false)
	e.session(t, "C", "203.0.113.9/32", "sess-C-1", time.Now().Add(-time.Minute), false)
	e.alert(t, "inc-7", "", "203.0.113.7")
	if _, err := e.c.Add(context.Background(), network.Prefix{Prefix: netip.MustParsePrefix("203.0.113.8/32")}, ActionQuarantine, "carol", "", time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both entries on the list", func() bool { return len(e.c.List().Active) == 2 })
	// C's incident is the barrier: its request comes after anything the
	// two above could have queued.
	e.alert(t, "inc-C", "C", "203.0.113.9")
	e.wait(t, 1)
	time.Sleep(300 * time.Millisecond)
	got := e.nas.Requests(t)
	checkRequests(t, got, []request{{Type: "CoA-Request", Attrs: map[string]string{"Acct-Session-Id": "sess-C-1"}}})
	e.waitCount(t, "coa", coaACK, 1)
}

// The Request Authenticator is RFC 5176 §2.3's: MD5 over the packet with
// a zero authenticator, then the secret (as an Accounting-Request).
func TestCoARequestAuthenticator(t *testing.T) {
	cfg := DefaultCoAConfiguration()
	cfg.Enabled, cfg.Secret = true, "s3cr3t"
	m := newMetrics(prometheus.NewRegistry(), &Component{})
	s, err := newCoASender(cfg, &m, slog.Default(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	h := identity.Binding{Customer: "A", Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: identity.SourceRADIUS,
		Session: "0x" + "ff00", NAS: netip.MustParseAddr("192.0.2.1")}
	for _, code := range []radius.Code{radius.CodeCoARequest, radius.CodeDisconnectRequest} {
		wire, err := s.packet(coaJob{code: code, action: ActionBlockSMTP, holding: h, attrs: s.attrs[ActionBlockSMTP]}).Encode()
		if err != nil {
			t.Fatal(err)
		}
		zeroed := bytes.Clone(wire)
		copy(zeroed[4:20], make([]byte, 16))
		sum := md5.Sum(append(zeroed, "s3cr3t"...))
		if !bytes.Equal(sum[:], wire[4:20]) {
			t.Errorf("%s: authenticator %x, want %x", code, wire[4:20], sum)
		}
		p, err := radius.Parse(wire, []byte("s3cr3t"))
		if err != nil {
			t.Fatal(err)
		}
		// identity keeps a session id that is not UTF-8 as 0x and hex:
		// the NAS gets its octets back.
		if got := p.Get(rfc2865.FilterID_Type); (code == radius.CodeCoARequest) != (string(got) == "wormsign-block-smtp") {
			t.Errorf("%s: Filter-Id %q", code, got)
		}
		if got := p.Get(44); !bytes.Equal(got, []byte{0xff, 0x00}) {
			t.Errorf("%s: Acct-Session-Id %x, want ff00", code, got)
		}
	}
	if got := radiusOctets("0x41"); string(got) != "0x41" {
		t.Errorf("radiusOctets(0x41) = %q: a UTF-8 id that looks like hex is its text", got)
	}
}

func TestCoAConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*CoAConfiguration)
		want string // substring of the error; "" valid
	}{
		{"defaults off", func(c *CoAConfiguration) {}, ""},
		{"on with secret", func(c *CoAConfiguration) { c.Enabled, c.Secret = true, "x" }, ""},
		{"on without secret", func(c *CoAConfiguration) { c.Enabled = true }, "containment.coa.secret (or secret_file): required"},
		{"unknown attribute", func(c *CoAConfiguration) { c.Quarantine = []string{"Filter-Id=q", "Filtre-Id=x"} },
			`containment.coa.quarantine[1]: unknown attribute "Filtre-Id", want one of Filter-Id, Reply-Message, Class`},
		{"identification attribute", func(c *CoAConfiguration) { c.Release = []string{"Acct-Session-Id=1"} },
			"containment.coa.release[0]: Acct-Session-Id identifies the session"},
		{"not name=value", func(c *CoAConfiguration) { c.BlockSMTP = []string{"Filter-Id"} }, "containment.coa.block_smtp[0]"},
		{"bad integer", func(c *CoAConfiguration) { c.BlockSMTP = []string{"Session-Timeout=1h"} }, "block_smtp[0]: Session-Timeout"},
		{"twice", func(c *CoAConfiguration) { c.BlockSMTP = []string{"Idle-Timeout=1", "idle-timeout=2"} }, "given twice"},
		{"all kinds", func(c *CoAConfiguration) {
			c.BlockSMTP = []string{"filter-id = a", `Reply-Message="x = y"`, "Class=0xdead", "Session-Timeout=60",
				"Idle-Timeout=0", "Termination-Action=RADIUS-Request", "Acct-Interim-Interval=300"}
		}, ""},
		{"empty list", func(c *CoAConfiguration) { c.Release = nil }, ""},
		{"walled", func(c *CoAConfiguration) { c.Walled = []string{"Filter-Id"} }, "containment.coa.walled[0]"},
		{"port", func(c *CoAConfiguration) { c.Port = 0 }, "containment.coa.port"},
		{"timeout", func(c *CoAConfiguration) { c.Timeout = 0 }, "containment.coa.timeout"},
		{"retries", func(c *CoAConfiguration) { c.Retries = -1 }, "containment.coa.retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfiguration()
			tc.edit(&cfg.CoA)
			err := cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// The repository's loader fills containment.coa.secret from secret_file
// and sets every key from the environment; action lists are comma
// separated there.
func TestCoAConfigLoads(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "coa-secret")
	if err := os.WriteFile(secret, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Containment Configuration `yaml:"containment"`
	}
	cfg.Containment = DefaultConfiguration()
	env := []string{"WORMSIGN_CONTAINMENT_COA_ENABLED=true", "WORMSIGN_CONTAINMENT_COA_SECRET_FILE=" + secret,
		"WORMSIGN_CONTAINMENT_COA_PORT=1700", "WORMSIGN_CONTAINMENT_COA_DISCONNECT=true",
		"WORMSIGN_CONTAINMENT_COA_QUARANTINE=Filter-Id=walled-garden,Session-Timeout=600"}
	if err := config.Load(&cfg, "", env); err != nil {
		t.Fatal(err)
	}
	if err := config.ReadSecretFiles(&cfg, env); err != nil {
		t.Fatal(err)
	}
	got := cfg.Containment.CoA
	want := DefaultCoAConfiguration()
	want.Enabled, want.Secret, want.SecretFile, want.Port, want.Disconnect = true, "from-file", secret, 1700, true
	want.Quarantine = []string{"Filter-Id=walled-garden", "Session-Timeout=600"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("containment.coa (-want +got):\n%s", diff)
	}
	if err := cfg.Containment.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// lockedBuffer is a log a component writes while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Every action an entry can carry has its CoA attributes: a walled
// entry restricts the session as the others do.
func TestCoAAttributesPerAction(t *testing.T) {
	cfg := DefaultCoAConfiguration()
	m := newMetrics(prometheus.NewRegistry(), nil)
	s, err := newCoASender(cfg, &m, slog.Default(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{ActionBlockSMTP, ActionWalled, ActionQuarantine, "release"} {
		if len(s.attrs[a]) == 0 {
			t.Errorf("no CoA attributes for %s", a)
		}
	}
}
