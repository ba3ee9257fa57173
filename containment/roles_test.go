package containment

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
)

// Every route of the block list API × every role: the route's role and
// up get through to the handler, a weaker one is refused 403 (counted by
// route), no token 401.
func TestAPIRoles(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	h := c.Handler()
	tokens := []string{"", "export-t", "viewer-t", "operator-t", "admin-t"} // none, then weakest first
	for _, tc := range []struct {
		method, path, body string
		want               [5]int // none, export, viewer, operator, admin
	}{
		{"GET", "/api/v1/blocklist?format=plain", "", [5]int{401, 200, 200, 200, 200}},
		{"GET", "/api/v1/blocklist?format=nftables", "", [5]int{401, 200, 200, 200, 200}},
		{"GET", "/api/v1/blocklist", "", [5]int{401, 200, 200, 200, 200}},
		{"GET", "/api/v1/blocklist/actions", "", [5]int{401, 403, 200, 200, 200}},
		// No such incident: past the role check, the policy's 4xx.
		{"POST", "/api/v1/blocklist/hold", `{"incident_id":"nope"}`, [5]int{401, 403, 403, 404, 404}},
		{"POST", "/api/v1/blocklist", `{"ip":"203.0.113.77","duration":"1h"}`, [5]int{401, 403, 403, 403, 201}},
		{"POST", "/api/v1/blocklist/203.0.113.77/release", `{"note":"done"}`, [5]int{401, 403, 403, 403, 200}},
		{"GET", "/api/v1/blocklist/nope", "", [5]int{401, 404, 404, 404, 404}},
		{"DELETE", "/api/v1/blocklist", "", [5]int{401, 404, 404, 404, 404}},
	} {
		for i, tok := range tokens {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want[i] {
				t.Errorf("%s %s as %q: %d %s, want %d", tc.method, tc.path, tok, rec.Code, rec.Body.String(), tc.want[i])
			}
			if rec.Code == http.StatusForbidden && !strings.Contains(rec.Body.String(), `"error"`) {
				t.Errorf("%s %s as %q: 403 without a JSON error: %s", tc.method, tc.path, tok, rec.Body.String())
			}
		}
	}
	for route, want := range map[string]float64{"list": 0, "actions": 1, "hold": 2, "add": 3, "release": 3, "unknown": 0} {
		if got := testutil.ToFloat64(c.metrics.apiForbidden.WithLabelValues(route)); got != want {
			t.Errorf("forbidden{route=%q} = %g, want %g", route, got, want)
		}
	}
}

// The actor of an add, a hold and a release is the name the request
// authenticated as; a body naming someone else ("by") is refused and
// changes nothing.
func TestAPIActorIsTheName(t *testing.T) {
	b := bus.NewMemory(64)
	cfg := testConfig()
	c := startComponent(t, cfg, b, Dependencies{})
	h := c.Handler()
	post := func(tok, path, body string) (int, string) {
		t.Helper()
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	for _, tc := range []struct{ path, body string }{
		{"/api/v1/blocklist", `{"ip":"203.0.113.5","by":"mallory"}`},
		{"/api/v1/blocklist/203.0.113.5/release", `{"by":"mallory"}`},
		{"/api/v1/blocklist/hold", `{"incident_id":"i1","by":"mallory"}`},
	} {
		if code, body := post("admin-t", tc.path, tc.body); code != 400 || !strings.Contains(body, `\"by\" is not accepted`) {
			t.Errorf("%s with by: %d %s, want 400 explaining by", tc.path, code, body)
		}
	}
	if n := len(c.Recent()); n != 0 {
		t.Fatalf("%d changes after refused requests, want none", n)
	}

	if code, body := post("admin-t", "/api/v1/blocklist", `{"ip":"203.0.113.5","reason":"complaint"}`); code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	if code, body := post("admin-t", "/api/v1/blocklist/203.0.113.5/release", `{"note":"fixed"}`); code != 200 {
		t.Fatalf("release: %d %s", code, body)
	}
	// An incident in its grace, held by an operator.
	prod, err := b.Producer(cfg.Topic + "-alerts")
	if err != nil {
		t.Fatal(err)
	}
	a := mkAlert("i1", alert.KindSMTPFanout, alert.StateOpen, "203.0.113.6", time.Now().UTC())
	v, _ := a.Marshal()
	if err := prod.Publish(context.Background(), bus.Message{Key: []byte("203.0.113.6"), Value: v}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the incident waits in its grace", func() bool { return len(c.List().Waiting) == 1 })
	if code, body := post("operator-t", "/api/v1/blocklist/hold", `{"incident_id":"i1","note":"customer called"}`); code != 200 {
		t.Fatalf("hold: %d %s", code, body)
	}
	got := map[string]string{}
	for _, ch := range c.Recent() {
		if ch.Actor != PolicyActor {
			got[ch.Type] = ch.Actor
		}
	}
	want := map[string]string{"add": "ada", "release": "ada", "hold": "olga"}
	for typ, actor := range want {
		if got[typ] != actor {
			t.Errorf("%s by %q, want %q (all: %v)", typ, got[typ], actor, got)
		}
	}
	_, body := call(t, h, "GET", "/api/v1/blocklist/actions", "")
	var actions struct{ Actions []Change }
	if err := json.Unmarshal([]byte(body), &actions); err != nil || len(actions.Actions) < 3 {
		t.Errorf("actions: %v %s", err, body)
	}
}
