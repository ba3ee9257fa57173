package identity

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/internal/testenv"
)

const leaseToken = "lease-t0ken_for.tests"

// leaseT0 is the unit tests' clock: whole seconds, as lease times are.
var leaseT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// leaseEnv is a lease endpoint recording into a real store.
type leaseEnv struct {
	c     *Component
	h     http.Handler
	table *Table
	now   atomic.Int64 // Unix ms; 0: the wall clock
}

func newLeaseEnv(t *testing.T, customer string, staticID func(string) string) *leaseEnv {
	t.Helper()
	cfg := DefaultConfiguration()
	cfg.DHCP.Token, cfg.DHCP.Customer = leaseToken, customer
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := &leaseEnv{}
	e.now.Store(leaseT0.UnixMilli())
	now := func() time.Time {
		if ms := e.now.Load(); ms != 0 {
			return time.UnixMilli(ms)
		}
		return time.Now()
	}
	store := NewStore(cfg, nil, logger)
	c, err := New(cfg, Dependencies{Logger: logger, Store: store, StaticID: staticID, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	e.c, e.h, e.table = c, c.LeaseHandler(), store.Table()
	if e.h == nil {
		t.Fatal("no lease handler with identity.dhcp.token set")
	}
	return e
}

func (e *leaseEnv) at(d time.Duration) { e.now.Store(leaseT0.Add(d).UnixMilli()) }

// post sends body with the token and returns the status and answer.
func (e *leaseEnv) post(t *testing.T, contentType, body string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, LeasePath, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+leaseToken)
	r.Header.Set("Content-Type", contentType)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func (e *leaseEnv) report(t *testing.T, want int, fields string) {
	t.Helper()
	if code, answer := e.post(t, "application/json", fields); code != want {
		t.Fatalf("POST %s: %d %q, want %d", fields, code, answer, want)
	}
}

func (e *leaseEnv) history(t *testing.T, customer string, want []Binding) {
	t.Helper()
	if diff := cmp.Diff(want, e.table.History(customer), cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("history of %s (-want +got):\n%s", customer, diff)
	}
}

func (e *leaseEnv) counted(vec string, label string) float64 {
	if vec == "refused" {
		return testutil.ToFloat64(e.c.metrics.leasesRefused.WithLabelValues(label))
	}
	return testutil.ToFloat64(e.c.metrics.leases.WithLabelValues(label))
}

func TestLeaseHandlerRefuses(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t, "client_id", nil)
	good := `{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01"}`
	cases := []struct {
		name, method, auth, contentType, body string
		status                                int
		reason                                string
	}{
		{"no token", "POST", "", "application/json", good, 401, "token"},
		{"wrong token", "POST", "Bearer " + leaseToken + "x", "application/json", good, 401, "token"},
		{"not bearer", "POST", "Basic " + leaseToken, "application/json", good, 401, "token"},
		{"GET", "GET", "Bearer " + leaseToken, "", "", 405, "method"},
		{"text body", "POST", "Bearer " + leaseToken, "text/plain", good, 415, "media_type"},
		{"no content type", "POST", "Bearer " + leaseToken, "", good, 415, "media_type"},
		{"unknown field", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01","vlan":7}`, 400, "malformed"},
		{"two objects", "POST", "Bearer " + leaseToken, "application/json", good + good, 400, "malformed"},
		{"string time", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01","time":"now"}`, 400, "malformed"},
		{"oversize", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","hostname":"` + strings.Repeat("h", leaseBodyLimit) + `"}`, 413, "too_large"},
		{"bad address", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.300","mac":"02:00:5e:00:53:01"}`, 400, "invalid"},
		{"no address", "POST", "Bearer " + leaseToken, "application/json", `{"event":"bound","mac":"02:00:5e:00:53:01"}`, 400, "invalid"},
		{"unspecified address", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"0.0.0.0","mac":"02:00:5e:00:53:01"}`, 400, "invalid"},
		{"broadcast address", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"255.255.255.255","mac":"02:00:5e:00:53:01"}`, 400, "invalid"},
		{"unknown event", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"offer","address":"203.0.113.7","mac":"02:00:5e:00:53:01"}`, 400, "invalid"},
		{"bad mac", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:zz"}`, 400, "invalid"},
		{"bad client id", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","client_id":"alice"}`, 400, "invalid"},
		{"no client", "POST", "Bearer " + leaseToken, "application/json", `{"event":"bound","address":"203.0.113.7"}`, 400, "invalid"},
		{"time ahead", "POST", "Bearer " + leaseToken, "application/json", fmt.Sprintf(
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01","time":%d}`, leaseT0.Add(time.Hour).Unix()), 400, "invalid"},
		{"lease ended", "POST", "Bearer " + leaseToken, "application/json", fmt.Sprintf(
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01","lease_end":%d}`, leaseT0.Unix()), 400, "invalid"},
		{"negative lease end", "POST", "Bearer " + leaseToken, "application/json",
			`{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01","lease_end":-1}`, 400, "invalid"},
		{"form field twice", "POST", "Bearer " + leaseToken, "application/x-www-form-urlencoded",
			"event=bound&address=203.0.113.7&mac=02:00:5e:00:53:01&address=203.0.113.8", 400, "malformed"},
		{"form unknown field", "POST", "Bearer " + leaseToken, "application/x-www-form-urlencoded",
			"event=bound&address=203.0.113.7&mac=02:00:5e:00:53:01&vlan=7", 400, "malformed"},
		{"form bad number", "POST", "Bearer " + leaseToken, "application/x-www-form-urlencoded",
			"event=bound&address=203.0.113.7&mac=02:00:5e:00:53:01&lease_end=soon", 400, "malformed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.counted("refused", c.reason)
			r := httptest.NewRequest(c.method, LeasePath, strings.NewReader(c.body))
			if c.auth != "" {
				r.Header.Set("Authorization", c.auth)
			}
			if c.contentType != "" {
				r.Header.Set("Content-Type", c.contentType)
			}
			w := httptest.NewRecorder()
			e.h.ServeHTTP(w, r)
			if w.Code != c.status {
				t.Errorf("status %d (%q), want %d", w.Code, w.Body.String(), c.status)
			}
			if got := e.counted("refused", c.reason) - before; got != 1 {
				t.Errorf("refused{reason=%q} rose by %v, want 1", c.reason, got)
			}
		})
	}
	if n := e.table.Len(); n != 0 {
		t.Errorf("refused reports left %d bindings", n)
	}
	// Both encodings of a good report are taken.
	e.report(t, 204, good)
	if code, answer := e.post(t, "application/x-www-form-urlencoded; charset=utf-8",
		"event=bound&address=203.0.113.8&mac=02%3A00%3A5e%3A00%3A53%3A02&client_id=&hostname=a%26b&time=&lease_end="); code != 204 {
		t.Errorf("form report: %d %q", code, answer)
	}
	if n := e.table.Len(); n != 2 {
		t.Errorf("%d bindings after two good reports", n)
	}
}

// TestLeaseLifecycle follows one address through a lease, its renewal,
// someone else's release of it, its release, a second lease and its
// expiry.
func TestLeaseLifecycle(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t, "client_id", nil)
	const client = "01:02:00:5e:00:53:01" // as normalised
	report := func(event string, d time.Duration, extra string) string {
		return fmt.Sprintf(`{"event":%q,"address":"203.0.113.7","mac":"02-00-5E-00-53-01","client_id":"01:2:0:5E:0:53:1",`+
			`"server":"203.0.113.1","time":%d%s}`, event, leaseT0.Add(d).Unix(), extra)
	}
	end := func(d time.Duration) string { return fmt.Sprintf(`,"lease_end":%d`, leaseT0.Add(d).Unix()) }
	ms := func(d time.Duration) int64 { return leaseT0.Add(d).UnixMilli() }
	first := Binding{
		Customer: client, Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: SourceDHCP, Session: client,
		NAS: netip.MustParseAddr("203.0.113.1"), StartMs: ms(0), ExpiresMs: ms(time.Hour), UpdatedMs: ms(0),
	}

	e.report(t, 204, report("bound", 0, end(time.Hour)))
	e.history(t, client, []Binding{first})

	// A renewal continues the holding: same start, a later end.
	e.at(30 * time.Minute)
	e.report(t, 204, report("renew", 30*time.Minute, end(90*time.Minute)))
	first.ExpiresMs, first.UpdatedMs = ms(90*time.Minute), ms(30*time.Minute)
	e.history(t, client, []Binding{first})

	// Another client's release of the address ends nothing.
	e.at(40 * time.Minute)
	code, answer := e.post(t, "application/json", fmt.Sprintf(
		`{"event":"release","address":"203.0.113.7","mac":"02:00:5e:00:53:99","time":%d}`, leaseT0.Add(40*time.Minute).Unix()))
	if code != 200 || e.counted("refused", "not_held") != 1 {
		t.Errorf("release by another client: %d %q, not_held %v", code, answer, e.counted("refused", "not_held"))
	}
	e.history(t, client, []Binding{first})

	// The client's own release ends it.
	e.at(45 * time.Minute)
	e.report(t, 204, report("release", 45*time.Minute, ""))
	first.EndMs, first.EndReason, first.UpdatedMs = ms(45*time.Minute), EndRelease, ms(45*time.Minute)
	e.history(t, client, []Binding{first})
	// Said again (Kea's two hooks, a retry), it finds nothing to end.
	e.report(t, 200, report("release", 45*time.Minute, ""))

	// A new lease is a new holding. Its server reclaims it a little
	// after its end: it ended at the lease's end.
	e.at(50 * time.Minute)
	e.report(t, 204, report("bound", 50*time.Minute, end(60*time.Minute)))
	e.at(61 * time.Minute)
	e.report(t, 204, report("expire", 61*time.Minute, end(60*time.Minute)))
	second := Binding{
		Customer: client, Prefix: first.Prefix, Source: SourceDHCP, Session: client, NAS: first.NAS,
		StartMs: ms(50 * time.Minute), ExpiresMs: ms(60 * time.Minute), UpdatedMs: ms(61 * time.Minute),
		EndMs: ms(60 * time.Minute), EndReason: EndExpired,
	}
	e.history(t, client, []Binding{first, second})
	for event, want := range map[string]float64{"bound": 2, "renew": 1, "release": 1, "expire": 1} {
		if got := e.counted("leases", event); got != want {
			t.Errorf("leases{event=%q} = %v, want %v", event, got, want)
		}
	}
}

func TestLeaseCustomer(t *testing.T) {
	t.Parallel()
	const mac, cid = "02:00:5e:00:53:01", "ff:00:00:00:2a:00:01"
	static := map[string]string{"02:00:5e:00:53:02": "customer-mac", "ff:00:00:00:2a:00:03": "customer-cid"}
	cases := []struct {
		name, customer, mac, clientID string
		static                        bool
		want, session                 string
	}{
		{"client id", "client_id", mac, "FF-00-00-00-2A-00-01", false, cid, cid},
		{"no client id: the MAC", "client_id", "0200.5E00.5301", "", false, mac, mac},
		{"mac mode ignores the client id", "mac", "02005e005301", cid, false, mac, mac},
		{"unmapped", "client_id", mac, cid, true, cid, cid},
		{"static map names the MAC", "client_id", "02:00:5e:00:53:02", cid, true, "customer-mac", cid},
		{"static map names the client id", "client_id", "02:00:5e:00:53:02", "ff:00:00:00:2a:00:03", true, "customer-cid", "ff:00:00:00:2a:00:03"},
		{"mac mode, static map", "mac", "02:00:5e:00:53:02", "ff:00:00:00:2a:00:03", true, "customer-mac", "02:00:5e:00:53:02"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var lookup func(string) string
			if c.static {
				lookup = func(k string) string { return static[k] }
			}
			e := newLeaseEnv(t, c.customer, lookup)
			e.report(t, 204, fmt.Sprintf(`{"event":"bound","address":"203.0.113.7","mac":%q,"client_id":%q}`, c.mac, c.clientID))
			b, ok := e.table.Holding(netip.MustParsePrefix("203.0.113.7/32"), leaseT0.UnixMilli())
			if !ok || b.Customer != c.want || b.Session != c.session {
				t.Errorf("holding %+v (%v), want customer %q session %q", b, ok, c.want, c.session)
			}
		})
	}
}

// leaseFlakyRecorder fails its first fails calls, as a store whose Kafka
// is down.
type leaseFlakyRecorder struct {
	Recorder
	fails atomic.Int32
}

func (f *leaseFlakyRecorder) Record(ctx context.Context, bs ...Binding) ([]Applied, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, errors.New("kafka is down")
	}
	return f.Recorder.Record(ctx, bs...)
}

func TestLeaseRecordFailure(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t, "client_id", nil)
	flaky := &leaseFlakyRecorder{Recorder: e.c.deps.Store}
	flaky.fails.Store(1)
	e.h = newLeaseHandler(e.c.config.DHCP, flaky, e.table, nil, e.c.metrics, e.c.deps.Logger, e.c.deps.Now)
	body := `{"event":"bound","address":"203.0.113.7","mac":"02:00:5e:00:53:01"}`
	e.report(t, 503, body)
	if got := testutil.ToFloat64(e.c.metrics.recordErrors); got != 1 || e.table.Len() != 0 {
		t.Errorf("after a failed record: record errors %v, %d bindings", got, e.table.Len())
	}
	e.report(t, 204, body)
	if e.table.Len() != 1 {
		t.Errorf("the retry left %d bindings", e.table.Len())
	}
}

func TestLeaseHandlerOff(t *testing.T) {
	cfg := DefaultConfiguration()
	c, err := New(cfg, Dependencies{Store: NewStore(cfg, nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if h := c.LeaseHandler(); h != nil {
		t.Errorf("lease handler %v without identity.dhcp.token", h)
	}
}

// leaseScript is deploy/identity/wormsign-lease, checked executable (Kea
// refuses a script it cannot run).
func leaseScript(t *testing.T) string {
	t.Helper()
	path := filepath.Join(testenv.RepoRoot(t), "deploy", "identity", "wormsign-lease")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Fatalf("%s is not executable", path)
	}
	return path
}

// leaseScriptConfig writes the script's token and configuration files
// for an endpoint at base (http://host:port).
func leaseScriptConfig(t *testing.T, base string) (tokenFile, configFile string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile, configFile = filepath.Join(dir, "token"), filepath.Join(dir, "lease.conf")
	if err := os.WriteFile(tokenFile, []byte(leaseToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("WORMSIGN_LEASE_URL=%s%s\nWORMSIGN_LEASE_TOKEN_FILE=%s\nWORMSIGN_LEASE_SERVER=203.0.113.1\n", base, LeasePath, tokenFile)
	if err := os.WriteFile(configFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return tokenFile, configFile
}

// TestLeaseScript runs the lease script as each server calls it, without
// the servers: Kea's environment holds nothing but the hook's variables
// (no PATH), dnsmasq's is its own plus its variables.
func TestLeaseScript(t *testing.T) {
	t.Parallel()
	testenv.Tool(t, "curl")
	script := leaseScript(t)
	e := newLeaseEnv(t, "client_id", nil)
	e.now.Store(0) // the script stamps reports with the wall clock
	flaky := &leaseFlakyRecorder{Recorder: e.c.deps.Store}
	e.h = newLeaseHandler(e.c.config.DHCP, flaky, e.table, nil, e.c.metrics, e.c.deps.Logger, e.c.deps.Now)
	mux := http.NewServeMux()
	mux.Handle(LeasePath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.h.ServeHTTP(w, r) }))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	tokenFile, configFile := leaseScriptConfig(t, srv.URL)
	now := time.Now().Unix()
	run := func(t *testing.T, env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(script, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v (it must always exit 0)\n%s", script, args, err, out)
		}
		return string(out)
	}
	holding := func(t *testing.T, addr string) Binding {
		t.Helper()
		b, ok := e.table.Holding(netip.MustParsePrefix(addr+"/32"), time.Now().UnixMilli())
		if !ok {
			t.Fatalf("no holding of %s; table: %+v", addr, e.table.Address(netip.MustParseAddr(addr)))
		}
		return b
	}
	kea := func(vars ...string) []string { return append([]string{"WORMSIGN_LEASE_CONFIG=" + configFile}, vars...) }

	t.Run("kea committed", func(t *testing.T) {
		// The first record fails: the script retries.
		flaky.fails.Store(1)
		out := run(t, kea("QUERY4_TYPE=DHCPREQUEST", "QUERY4_CIADDR=0.0.0.0", "LEASES4_SIZE=1", "DELETED_LEASES4_SIZE=0",
			"LEASES4_AT0_ADDRESS=203.0.113.20", "LEASES4_AT0_HWADDR=02:00:5e:00:53:20", "LEASES4_AT0_CLIENT_ID=01:02:00:5e:00:53:20",
			`LEASES4_AT0_HOSTNAME=it's "odd" & =wild`, fmt.Sprintf("LEASES4_AT0_CLTT=%d", now), "LEASES4_AT0_VALID_LIFETIME=3600"),
			"leases4_committed")
		b := holding(t, "203.0.113.20")
		want := Binding{Customer: "01:02:00:5e:00:53:20", Session: "01:02:00:5e:00:53:20", Source: SourceDHCP,
			NAS: netip.MustParseAddr("203.0.113.1"), ExpiresMs: (now + 3600) * 1000}
		if diff := cmp.Diff(want, b, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}),
			cmpopts.IgnoreFields(Binding{}, "Prefix", "StartMs", "UpdatedMs")); diff != "" {
			t.Errorf("binding (-want +got):\n%s\nscript said: %s", diff, out)
		}
	})
	t.Run("kea release", func(t *testing.T) {
		run(t, kea("LEASE4_ADDRESS=203.0.113.20", "LEASE4_HWADDR=02:00:5e:00:53:20", "LEASE4_CLIENT_ID=01:02:00:5e:00:53:20"), "lease4_release")
		if h := e.table.Address(netip.MustParseAddr("203.0.113.20")); len(h) != 1 || h[0].EndReason != EndRelease {
			t.Errorf("after lease4_release: %+v", h)
		}
	})
	dnsmasq := func(vars ...string) []string {
		return append([]string{"PATH=" + os.Getenv("PATH"), "WORMSIGN_LEASE_URL=" + srv.URL + LeasePath,
			"WORMSIGN_LEASE_TOKEN_FILE=" + tokenFile, "WORMSIGN_LEASE_CONFIG=/nonexistent"}, vars...)
	}
	t.Run("dnsmasq add and expiry", func(t *testing.T) {
		run(t, dnsmasq("DNSMASQ_CLIENT_ID=01:02:00:5e:00:53:21", fmt.Sprintf("DNSMASQ_LEASE_EXPIRES=%d", now+120)),
			"add", "02:00:5e:00:53:21", "203.0.113.21", "host21")
		if b := holding(t, "203.0.113.21"); b.Customer != "01:02:00:5e:00:53:21" || b.ExpiresMs != (now+120)*1000 || b.NAS.IsValid() {
			t.Errorf("after add: %+v", b)
		}
		// A del once the lease's end has passed is its expiry.
		run(t, dnsmasq("DNSMASQ_CLIENT_ID=01:02:00:5e:00:53:21", fmt.Sprintf("DNSMASQ_LEASE_EXPIRES=%d", now-1)),
			"del", "02:00:5e:00:53:21", "203.0.113.21", "host21")
		if h := e.table.Address(netip.MustParseAddr("203.0.113.21")); len(h) != 1 || h[0].EndReason != EndExpired {
			t.Errorf("after del: %+v", h)
		}
	})
	t.Run("https", func(t *testing.T) {
		tlsSrv := httptest.NewTLSServer(mux)
		t.Cleanup(tlsSrv.Close)
		ca := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		env := append(dnsmasq(), "WORMSIGN_LEASE_URL="+tlsSrv.URL+LeasePath, "WORMSIGN_LEASE_CA_FILE="+ca)
		out := run(t, env, "add", "02:00:5e:00:53:24", "203.0.113.24")
		if b := holding(t, "203.0.113.24"); b.Customer != "02:00:5e:00:53:24" {
			t.Errorf("over https: %+v; script said %q", b, out)
		}
	})
	t.Run("refused", func(t *testing.T) {
		// A bad report is logged and the script still exits 0 at once.
		start := time.Now()
		out := run(t, dnsmasq(), "add", "02:00:5e:00:53:22", "203.0.113.300")
		if !strings.Contains(out, "refused (400)") || time.Since(start) > 3*time.Second {
			t.Errorf("script said %q after %s", out, time.Since(start))
		}
	})
	t.Run("no config", func(t *testing.T) {
		out := run(t, []string{"WORMSIGN_LEASE_CONFIG=/nonexistent"}, "lease4_release")
		if !strings.Contains(out, "must be set") {
			t.Errorf("script said %q", out)
		}
	})
	t.Run("endpoint down", func(t *testing.T) {
		// Nothing listens: three tries, then it gives up, exit 0.
		env := append(dnsmasq(), "WORMSIGN_LEASE_URL=http://127.0.0.1:1"+LeasePath)
		out := run(t, env, "add", "02:00:5e:00:53:23", "203.0.113.23")
		if !strings.Contains(out, "after 3 attempts") {
			t.Errorf("script said %q", out)
		}
	})
}

// dhcpEndpoint serves the lease endpoint inside n's server namespace,
// where the DHCP server runs its script, and writes the script's
// configuration for it.
func dhcpEndpoint(t *testing.T, n *testenv.DHCPNet, customer string, staticID func(string) string) (e *leaseEnv, endpoint, tokenFile, configFile string) {
	t.Helper()
	e = newLeaseEnv(t, customer, staticID)
	e.now.Store(0) // real servers, real time
	ln := n.Listen(t, "127.0.0.1:0")
	mux := http.NewServeMux()
	mux.Handle(LeasePath, e.h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()
	tokenFile, configFile = leaseScriptConfig(t, base)
	return e, base + LeasePath, tokenFile, configFile
}

// waitHolding waits until the latest holding of addr satisfies ok.
func waitHolding(t *testing.T, e *leaseEnv, addr netip.Addr, what string, ok func(Binding) bool) Binding {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var last Binding
		for _, b := range e.table.Address(addr) {
			if b.StartMs >= last.StartMs {
				last = b
			}
		}
		if last.Prefix.IsValid() && ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no such holding of %s within 30s; holdings: %+v", what, addr, e.table.Address(addr))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDHCPKea runs Kea with its run_script hook calling the lease script,
// and ISC dhclient as its client: the lease, its renewal, its release,
// a second lease and its expiry become the client id's bindings.
func TestDHCPKea(t *testing.T) {
	t.Parallel()
	testenv.Tool(t, "curl")
	script := leaseScript(t)
	n := testenv.NewDHCPNet(t)
	e, _, _, configFile := dhcpEndpoint(t, n, "client_id", nil)
	// Kea starts its script with an empty environment: a wrapper names
	// the configuration file, as an operator may instead of
	// /etc/wormsign/lease.conf.
	wrapper := filepath.Join(t.TempDir(), "wormsign-lease-kea")
	content := fmt.Sprintf("#!/bin/sh\nWORMSIGN_LEASE_CONFIG=%s\nexport WORMSIGN_LEASE_CONFIG\nexec %s \"$@\"\n", configFile, script)
	if err := os.WriteFile(wrapper, []byte(content), 0o700); err != nil {
		t.Fatal(err)
	}
	const lifetime = 8
	n.StartKea(t, testenv.KeaConfig{Script: wrapper, Pool: "203.0.113.100 - 203.0.113.110",
		ValidLifetime: lifetime, RenewTimer: 3, RebindTimer: 6})
	const clientID = "01:02:00:00:00:71:01"

	before := time.Now().Unix()
	d := n.StartDhclient(t, clientID)
	_, addr := d.Bound()
	first := waitHolding(t, e, addr, "lease", func(b Binding) bool { return b.EndMs == 0 })
	after := time.Now().Unix()
	want := Binding{Customer: clientID, Prefix: netip.PrefixFrom(addr, 32), Source: SourceDHCP, Session: clientID,
		NAS: n.ServerAddr}
	opts := []cmp.Option{cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}), cmpopts.IgnoreFields(Binding{}, "StartMs", "ExpiresMs", "UpdatedMs")}
	if diff := cmp.Diff(want, first, opts...); diff != "" {
		t.Errorf("lease's binding (-want +got):\n%s", diff)
	}
	// The lease ends lifetime after Kea's CLTT, which falls between.
	if first.ExpiresMs < (before+lifetime)*1000 || first.ExpiresMs > (after+lifetime)*1000 {
		t.Errorf("lease ends at %d, want within [%d, %d] s", first.ExpiresMs/1000, before+lifetime, after+lifetime)
	}

	// dhclient renews at the renew timer: the same holding, a later end.
	d.WaitBound(t, 2)
	renewed := waitHolding(t, e, addr, "renewal", func(b Binding) bool { return b.ExpiresMs > first.ExpiresMs })
	if renewed.StartMs != first.StartMs || renewed.EndMs != 0 || len(e.table.History(clientID)) != 1 {
		t.Errorf("renewal: %+v, history %+v", renewed, e.table.History(clientID))
	}

	d.Release(t)
	released := waitHolding(t, e, addr, "release", func(b Binding) bool { return b.EndReason == EndRelease })
	if released.StartMs != first.StartMs {
		t.Errorf("release ended another holding: %+v", released)
	}

	// A second lease, then the client vanishes: Kea reclaims the lease
	// after its end and the holding ends at that end.
	d = n.StartDhclient(t, clientID)
	_, addr = d.Bound()
	second := waitHolding(t, e, addr, "second lease", func(b Binding) bool { return b.EndMs == 0 && b.StartMs > first.StartMs })
	d.Kill(t)
	expired := waitHolding(t, e, addr, "expiry", func(b Binding) bool { return b.EndReason == EndExpired })
	if expired.StartMs != second.StartMs || expired.EndMs != expired.ExpiresMs {
		t.Errorf("expiry: %+v, want the second lease ended at its end", expired)
	}
	if got := len(e.table.History(clientID)); got != 2 {
		t.Errorf("%d holdings of %s, want 2: %+v", got, clientID, e.table.History(clientID))
	}
}

// TestDHCPDnsmasq runs dnsmasq with the lease script as its
// --dhcp-script and ISC dhclient, sending no client id, as its client:
// with identity.dhcp.customer mac, the static map names the MAC's
// customer.
func TestDHCPDnsmasq(t *testing.T) {
	t.Parallel()
	testenv.Tool(t, "curl")
	script := leaseScript(t)
	n := testenv.NewDHCPNet(t)
	const customer = "customer-17"
	e, endpoint, tokenFile, _ := dhcpEndpoint(t, n, "mac", func(k string) string {
		if k == n.ClientMAC {
			return customer
		}
		return ""
	})
	// The settings come in the environment here: dnsmasq passes its own
	// on to its script.
	n.StartDnsmasq(t, testenv.DnsmasqConfig{Script: script, Range: "203.0.113.50,203.0.113.60,2m", Env: []string{
		"WORMSIGN_LEASE_URL=" + endpoint, "WORMSIGN_LEASE_TOKEN_FILE=" + tokenFile,
		"WORMSIGN_LEASE_SERVER=" + n.ServerAddr.String(), "WORMSIGN_LEASE_CONFIG=/nonexistent",
	}})

	start := time.Now().Unix()
	d := n.StartDhclient(t, "")
	_, addr := d.Bound()
	first := waitHolding(t, e, addr, "lease", func(b Binding) bool { return b.EndMs == 0 })
	want := Binding{Customer: customer, Prefix: netip.PrefixFrom(addr, 32), Source: SourceDHCP, Session: n.ClientMAC, NAS: n.ServerAddr}
	opts := []cmp.Option{cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}), cmpopts.IgnoreFields(Binding{}, "StartMs", "ExpiresMs", "UpdatedMs")}
	if diff := cmp.Diff(want, first, opts...); diff != "" {
		t.Errorf("lease's binding (-want +got):\n%s", diff)
	}
	if end := first.ExpiresMs / 1000; end < start+120 || end > time.Now().Unix()+120 {
		t.Errorf("lease ends at %d, want 2 minutes after %d", end, start)
	}

	// A rebooted client asks for its address again: dnsmasq says old
	// (--script-on-renewal), the holding goes on.
	renewals := e.counted("leases", LeaseRenew)
	d.Restart(t)
	deadline := time.Now().Add(30 * time.Second)
	for e.counted("leases", LeaseRenew) == renewals {
		if time.Now().After(deadline) {
			t.Fatal("no renewal reported within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h := e.table.History(customer); len(h) != 1 || h[0].StartMs != first.StartMs || h[0].ExpiresMs < first.ExpiresMs {
		t.Errorf("after the renewal: %+v", h)
	}

	d.Release(t)
	released := waitHolding(t, e, addr, "release", func(b Binding) bool { return b.EndReason == EndRelease })
	if released.StartMs != first.StartMs {
		t.Errorf("release ended another holding: %+v", released)
	}
}
