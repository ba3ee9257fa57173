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

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/sink"
)

const token = "s3cret"

func authorize(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get("Authorization") != "Bearer "+token {
		w.WriteHeader(http.StatusUnauthorized)
		return false
	}
	return true
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
	if code, body := call(t, h, "POST", "/api/v1/blocklist", `{"ip":"203.0.113.5","reason":"complaint","duration":"2h","by":"carol"}`); code != 201 {
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
		{"POST", "/api/v1/blocklist/bogus/release", `{"by":"x"}`},
		{"POST", "/api/v1/blocklist/hold", `{"by":"x"}`},
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
	if code, body := call(t, h, "POST", "/api/v1/blocklist/203.0.113.5/release", `{"by":"bob","note":"fixed"}`); code != 200 {
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
	if code, body := call(t, c.Handler(), "POST", "/api/v1/blocklist", `{"ip":"203.0.113.5","by":"carol"}`); code != 201 {
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
		if !sink.VerifySignature([]byte("k"), body, r.Header.Get(sink.SignatureHeader)) {
			t.Errorf("webhook signature does not verify")
		}
		var ch Change
		json.Unmarshal(body, &ch)
		mu.Lock()
		hooks = append(hooks, ch)
		mu.Unlock()
	}))
	defer srv.Close()
	deps := Dependencies{ClickHouse: db, Webhooks: []sink.WebhookConfiguration{{Name: "t", URL: srv.URL, Secret: "k"}}}
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
	if code, body := call(t, b.Handler(), "POST", "/api/v1/blocklist/203.0.113.3/release", `{"by":"bob","note":"called"}`); code != 200 {
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
	if code != 200 || !strings.Contains(body, `"actor":"bob"`) || strings.Count(body, `"type":"add"`) != 4 {
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
