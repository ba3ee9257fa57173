package containment

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/webhook"
)

// token is the tests' admin token, of the name "tester"; testTokens has
// one of every role.
const token = "s3cret"

var testTokens = map[string]httpserver.Principal{
	token:        {Name: "tester", Role: httpserver.RoleAdmin},
	"export-t":   {Name: "router", Role: httpserver.RoleExport},
	"viewer-t":   {Name: "vera", Role: httpserver.RoleViewer},
	"operator-t": {Name: "olga", Role: httpserver.RoleOperator},
	"admin-t":    {Name: "ada", Role: httpserver.RoleAdmin},
}

// authorize is the console guard's part the block list relies on: 401
// for no or a wrong token, 403 for a role short of the route's.
func authorize(w http.ResponseWriter, r *http.Request, need httpserver.Role) (httpserver.Principal, bool) {
	t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	p, known := testTokens[t]
	if !ok || !known {
		w.WriteHeader(http.StatusUnauthorized)
		return p, false
	}
	if !p.Can(need) {
		httpserver.Forbid(w, p, need)
		return p, false
	}
	return p, true
}

func startComponent(t *testing.T, cfg Configuration, b bus.Bus, deps Dependencies) *Component {
	t.Helper()
	return startOnAlerts(t, cfg, b, deps, cfg.Topic+"-alerts")
}

func call(t *testing.T, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestAPIBadInputChangesNothing(t *testing.T) {
	cfg := testConfig()
	c := startComponent(t, cfg, bus.NewMemory(64), Dependencies{})
	h := c.Handler()
	if code, body := call(t, h, "POST", "/api/v1/blocklist", `{"ip":"203.0.113.5","reason":"complaint","duration":"2h"}`); code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	_, before := call(t, h, "GET", "/api/v1/blocklist?format=plain", "")
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/api/v1/blocklist", `{"ip":"not-an-address"}`},
		{"POST", "/api/v1/blocklist", `{"ip":""}`},
		{"POST", "/api/v1/blocklist", `{"ip":"203.0.113.0/24"}`}, // wider than widest_prefix_v4 32
		{"POST", "/api/v1/blocklist", `{"ip":"2001:db8::/48"}`},  // wider than widest_prefix_v6 64
		{"POST", "/api/v1/blocklist", `{"ip":"203.0.113.6","duration":"forever"}`},
		{"POST", "/api/v1/blocklist", `{"ip":"203.0.113.6","action":"nuke"}`},
		{"POST", "/api/v1/blocklist", `{"ip":"203.0.113.6","colour":"red"}`},
		{"POST", "/api/v1/blocklist", `not json`},
		{"GET", "/api/v1/blocklist?format=pf", ""},
		{"POST", "/api/v1/blocklist/bogus/release", `{}`},
		{"POST", "/api/v1/blocklist/hold", `{}`},
	} {
		code, body := call(t, h, tc.method, tc.path, tc.body)
		var msg struct{ Error string }
		if code != 400 || json.Unmarshal([]byte(body), &msg) != nil || msg.Error == "" {
			t.Errorf("%s %s %s: %d %s, want 400 with a JSON error", tc.method, tc.path, tc.body, code, body)
		}
	}
	if _, after := call(t, h, "GET", "/api/v1/blocklist?format=plain", ""); after != before || before != "203.0.113.5\n" {
		t.Errorf("list after bad requests %q, before %q, want 203.0.113.5 alone", after, before)
	}
	req := httptest.NewRequest("GET", "/api/v1/blocklist", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Errorf("without token: %d, want 401", rec.Code)
	}
	if code, body := call(t, h, "POST", "/api/v1/blocklist/203.0.113.5/release", `{"note":"fixed"}`); code != 200 {
		t.Errorf("release: %d %s", code, body)
	}
	if _, after := call(t, h, "GET", "/api/v1/blocklist?format=plain", ""); after != "" {
		t.Errorf("list after release %q, want empty", after)
	}
	if code, body := call(t, h, "GET", "/api/v1/blocklist/actions", ""); code != 200 || !strings.Contains(body, `"type":"release"`) {
		t.Errorf("actions: %d %s", code, body)
	}
}

// TestStateFileSurvivesRestart: without Kafka, the list is in the state
// file; a new component starts with it, and `wormsign blocklist` reads it.
func TestStateFileSurvivesRestart(t *testing.T) {
	cfg := testConfig()
	cfg.StateFile = filepath.Join(t.TempDir(), "containment.json")
	c := startComponent(t, cfg, bus.NewMemory(64), Dependencies{})
	if code, body := call(t, c.Handler(), "POST", "/api/v1/blocklist", `{"ip":"203.0.113.5"}`); code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	c.Stop()
	c2 := startComponent(t, cfg, bus.NewMemory(64), Dependencies{})
	if _, body := call(t, c2.Handler(), "GET", "/api/v1/blocklist?format=plain", ""); body != "203.0.113.5\n" {
		t.Errorf("after restart: %q, want 203.0.113.5", body)
	}
	p, err := ReadState(context.Background(), cfg, nil)
	if err != nil || len(p.Entries()) != 1 {
		t.Errorf("ReadState: %v, %d entries, want 1", err, len(p.Entries()))
	}
}

// TestKafkaInstancesAgree: two instances on one Kafka deployment decide on
// alerts from the shared alerts topic, hold the same list, write the audit
// trail once to ClickHouse and to a webhook, and a third one started later
// (a restart) holds the same list too.
func TestKafkaInstancesAgree(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	chAddr := testenv.ClickHouseAddr(t)
	ctx := context.Background()
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = brokers
	kcfg.FlowsTopic, kcfg.AlertsTopic = testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	kcfg.Partitions = 2
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Grace = 0
	cfg.Topic, cfg.Group = testenv.Name(t, "containment"), testenv.Name(t, "containment")
	t.Cleanup(func() { k.DeleteTopics(context.Background(), kcfg.FlowsTopic, kcfg.AlertsTopic, cfg.Topic) })

	chCfg := clickhousedb.DefaultConfiguration()
	chCfg.Addr, chCfg.Database = chAddr, testenv.Name(t, "wscontain")
	db := chtest.Database(t, chCfg)
	var mu sync.Mutex
	var hooks []Change
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !webhook.VerifySignature([]byte("k"), body, r.Header.Get(webhook.SignatureHeader)) {
			t.Errorf("webhook signature does not verify")
		}
		var ch Change
		json.Unmarshal(body, &ch)
		mu.Lock()
		hooks = append(hooks, ch)
		mu.Unlock()
	}))
	defer srv.Close()
	deps := Dependencies{ClickHouse: db, Webhooks: []webhook.Configuration{{Name: "t", URL: srv.URL, Secret: "k"}}}
	a := startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic)
	b := startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic)

	prod, err := k.Producer(kcfg.AlertsTopic)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	now := time.Now().UTC()
	var msgs []bus.Message
	for i, ip := range []string{"203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5"} {
		al := mkAlert("inc-"+ip, alert.KindSMTPFanout, alert.StateOpen, ip, now.Add(time.Duration(i)*time.Second))
		v, _ := al.Marshal()
		msgs = append(msgs, bus.Message{Key: []byte(ip), Value: v})
	}
	if err := prod.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	want := "203.0.113.2\n203.0.113.3\n203.0.113.4\n203.0.113.5\n"
	waitFor(t, "both instances list the four", func() bool {
		_, la := call(t, a.Handler(), "GET", "/api/v1/blocklist?format=plain", "")
		_, lb := call(t, b.Handler(), "GET", "/api/v1/blocklist?format=plain", "")
		return la == want && lb == want
	})
	if code, body := call(t, b.Handler(), "POST", "/api/v1/blocklist/203.0.113.3/release", `{"note":"called"}`); code != 200 {
		t.Fatalf("release on b: %d %s", code, body)
	}
	want = "203.0.113.2\n203.0.113.4\n203.0.113.5\n"
	waitFor(t, "a sees b's release", func() bool {
		_, la := call(t, a.Handler(), "GET", "/api/v1/blocklist?format=plain", "")
		return la == want
	})
	c := startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic) // a restart: reads the topic
	if _, lc := call(t, c.Handler(), "GET", "/api/v1/blocklist?format=plain", ""); lc != want {
		t.Errorf("a new instance lists %q, want %q", lc, want)
	}
	p, err := ReadState(ctx, cfg, k) // wormsign blocklist
	if err != nil {
		t.Fatal(err)
	}
	if n := len(MakeList(p.Entries(), time.Now(), false).Active); n != 3 {
		t.Errorf("ReadState: %d entries, want 3", n)
	}
	waitFor(t, "five actions in ClickHouse and at the webhook", func() bool {
		var n uint64
		db.QueryRow(ctx, "SELECT count() FROM "+chCfg.Database+".containment_actions FINAL").Scan(&n)
		mu.Lock()
		defer mu.Unlock()
		return n == 5 && len(hooks) == 5
	})
	code, body := call(t, a.Handler(), "GET", "/api/v1/blocklist/actions", "")
	if code != 200 || !strings.Contains(body, `"actor":"tester"`) || strings.Count(body, `"type":"add"`) != 4 {
		t.Errorf("actions from ClickHouse: %d %s", code, body)
	}
}

func startOnAlerts(t *testing.T, cfg Configuration, b bus.Bus, deps Dependencies, alertsTopic string) *Component {
	t.Helper()
	deps.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	deps.Bus, deps.AlertsTopic, deps.Authorize = b, alertsTopic, authorize
	c, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A manual prefix that covers an allow-listed address is refused with
// 400 (as one naming the address itself), and changes nothing.
func TestAPIAddAllowListedPrefix(t *testing.T) {
	cfg := testConfig()
	cfg.WidestPrefixV4 = 24
	cfg.AllowList = []network.Prefix{network.MustParsePrefix("203.0.113.25")}
	c := startComponent(t, cfg, bus.NewMemory(64), Dependencies{})
	h := c.Handler()
	for _, ip := range []string{"203.0.113.25", "203.0.113.16/28", "203.0.113.0/24"} {
		code, body := call(t, h, "POST", "/api/v1/blocklist", `{"ip":"`+ip+`"}`)
		if code != 400 || !strings.Contains(body, "allow list") {
			t.Errorf("add %s: %d %s, want 400 naming the allow list", ip, code, body)
		}
	}
	if _, list := call(t, h, "GET", "/api/v1/blocklist?format=plain", ""); list != "" {
		t.Errorf("list after refused adds: %q, want empty", list)
	}
	if code, body := call(t, h, "POST", "/api/v1/blocklist", `{"ip":"203.0.113.32/28"}`); code != 201 {
		t.Errorf("add of a /28 clear of the allow list: %d %s", code, body)
	}
}

// clock is a wall clock a test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// has tells whether c's policy has a record (released ones too) of pfx.
func has(c *Component, pfx string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.policy.Records() {
		if e.Prefix.String() == pfx {
			return true
		}
	}
	return false
}

// TestStateFileDropsReleased: without Kafka, released_retention after its
// release an entry leaves the state file; the tombstone on the in-process
// bus is no decode error for the audit.
func TestStateFileDropsReleased(t *testing.T) {
	cfg := testConfig()
	cfg.StateFile = filepath.Join(t.TempDir(), "containment.json")
	cfg.ReleasedRetention = time.Hour
	cfg.Tick = 20 * time.Millisecond
	clk := &clock{now: time.Now().UTC()}
	c := startComponent(t, cfg, bus.NewMemory(64), Dependencies{Now: clk.Now})
	h := c.Handler()
	for _, req := range [][2]string{{"/api/v1/blocklist", `{"ip":"203.0.113.5"}`}, {"/api/v1/blocklist/203.0.113.5/release", `{}`}} {
		if code, body := call(t, h, "POST", req[0], req[1]); code/100 != 2 {
			t.Fatalf("%s: %d %s", req[0], code, body)
		}
	}
	if entries, err := ReadStateFile(cfg.StateFile); err != nil || len(entries) != 1 || entries[0].State != StateReleased {
		t.Fatalf("state file after the release: %+v %v, want the released entry", entries, err)
	}
	clk.Add(59 * time.Minute)
	time.Sleep(100 * time.Millisecond)
	if !has(c, "203.0.113.5/32") {
		t.Fatalf("removed before released_retention")
	}
	clk.Add(2 * time.Minute)
	waitFor(t, "the released entry leaves the state file", func() bool {
		entries, err := ReadStateFile(cfg.StateFile)
		return err == nil && len(entries) == 0 && !has(c, "203.0.113.5/32")
	})
	time.Sleep(100 * time.Millisecond)
	if n := testutil.ToFloat64(c.metrics.errors.WithLabelValues("decode")); n != 0 {
		t.Errorf("%v decode errors, want none for a tombstone", n)
	}
	c.Stop()
	c2 := startComponent(t, cfg, bus.NewMemory(64), Dependencies{Now: clk.Now})
	if has(c2, "203.0.113.5/32") {
		t.Errorf("a restart brought the removed entry back")
	}
}

// TestKafkaTombstoneRemovesEverywhere: the instance whose clock passes
// released_retention publishes a tombstone (nil value) for the released
// entry; another instance, whose clock never gets there, drops it as it
// follows the topic; a new instance and ReadState (wormsign blocklist)
// never see it.
func TestKafkaTombstoneRemovesEverywhere(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	ctx := context.Background()
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = brokers
	kcfg.FlowsTopic, kcfg.AlertsTopic = testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Topic, cfg.Group = testenv.Name(t, "containment"), testenv.Name(t, "containment")
	cfg.ReleasedRetention = time.Hour
	cfg.Tick = 50 * time.Millisecond
	t.Cleanup(func() { k.DeleteTopics(context.Background(), kcfg.FlowsTopic, kcfg.AlertsTopic, cfg.Topic) })
	start := time.Now().UTC()
	moving, frozen := &clock{now: start}, &clock{now: start}
	a := startOnAlerts(t, cfg, k, Dependencies{Now: moving.Now}, kcfg.AlertsTopic)
	b := startOnAlerts(t, cfg, k, Dependencies{Now: frozen.Now}, kcfg.AlertsTopic)
	for _, req := range [][2]string{{"/api/v1/blocklist", `{"ip":"203.0.113.5"}`}, {"/api/v1/blocklist", `{"ip":"203.0.113.6"}`},
		{"/api/v1/blocklist/203.0.113.5/release", `{}`}} {
		if code, body := call(t, a.Handler(), "POST", req[0], req[1]); code/100 != 2 {
			t.Fatalf("%s: %d %s", req[0], code, body)
		}
	}
	waitFor(t, "b holds both entries", func() bool { return has(b, "203.0.113.5/32") && has(b, "203.0.113.6/32") })
	moving.Add(61 * time.Minute)
	waitFor(t, "a removes the released entry and b follows", func() bool { return !has(a, "203.0.113.5/32") && !has(b, "203.0.113.5/32") })
	if !has(b, "203.0.113.6/32") || !has(a, "203.0.113.6/32") {
		t.Errorf("the active entry went too")
	}
	var last *bus.Message
	if err := k.ReadSince(ctx, cfg.Topic, time.Unix(0, 0), func(m bus.Message) error {
		if string(m.Key) == "203.0.113.5/32" {
			last = &m
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if last == nil || last.Value != nil {
		t.Errorf("last record of the removed entry %+v, want a tombstone (nil value)", last)
	}
	p, err := ReadState(ctx, cfg, k)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Records(); len(got) != 1 || got[0].Prefix.String() != "203.0.113.6/32" {
		t.Errorf("ReadState: %+v, want 203.0.113.6 alone", got)
	}
	c := startOnAlerts(t, cfg, k, Dependencies{Now: frozen.Now}, kcfg.AlertsTopic)
	if has(c, "203.0.113.5/32") || !has(c, "203.0.113.6/32") {
		t.Errorf("a new instance: 203.0.113.5 %v, 203.0.113.6 %v, want 203.0.113.6 alone", has(c, "203.0.113.5/32"), has(c, "203.0.113.6/32"))
	}
}
