package containment

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/webhook"
)

// The console's cookie authenticates only same-origin JSON POSTs; a Bearer
// token is unaffected. Oversized bodies are answered 413. Nothing refused
// changes the list.
func TestAPICrossOriginAndLimits(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	c.deps.Authorize = func(w http.ResponseWriter, r *http.Request, need httpserver.Role) (httpserver.Principal, bool) {
		if ck, err := r.Cookie("session"); err == nil && ck.Value == "ok" {
			return httpserver.Principal{Name: "ann", Role: httpserver.RoleAdmin}, true
		}
		return authorize(w, r, need)
	}
	h := c.Handler()
	add := `{"ip":"203.0.113.9"}`
	for _, tc := range []struct {
		name, path, contentType, body string
		bearer                        bool
		headers                       map[string]string
		want                          int
	}{
		{"cookie cross-site", "/api/v1/blocklist", "application/json", add, false, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"cookie other Origin", "/api/v1/blocklist", "application/json", add, false, map[string]string{"Origin": "https://evil.example"}, 403},
		{"cookie form", "/api/v1/blocklist", "application/x-www-form-urlencoded", add, false, nil, 403},
		{"cookie text/plain", "/api/v1/blocklist", "text/plain", add, false, map[string]string{"Sec-Fetch-Site": "same-origin"}, 403},
		{"cookie release cross-site", "/api/v1/blocklist/203.0.113.5/release", "application/json", `{}`, false, map[string]string{"Sec-Fetch-Site": "same-site"}, 403},
		{"cookie hold cross-site", "/api/v1/blocklist/hold", "application/json", `{}`, false, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"oversized", "/api/v1/blocklist", "application/json", `{"ip":"203.0.113.9","reason":"` + strings.Repeat("x", BodyLimit) + `"}`, true, nil, 413},
		{"two objects", "/api/v1/blocklist", "application/json", add + add, true, nil, 400},
	} {
		req := httptest.NewRequest("POST", tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.contentType)
		if tc.bearer {
			req.Header.Set("Authorization", "Bearer "+token)
		} else {
			req.AddCookie(&http.Cookie{Name: "session", Value: "ok"})
		}
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want || !strings.Contains(rec.Body.String(), `"error"`) {
			t.Errorf("%s: %d %s, want %d with a JSON error", tc.name, rec.Code, rec.Body.String(), tc.want)
		}
	}
	if _, list := call(t, h, "GET", "/api/v1/blocklist?format=plain", ""); list != "" {
		t.Fatalf("list after refused requests: %q, want empty", list)
	}
	// Accepted: a same-origin JSON POST with the cookie, and a Bearer
	// POST whatever its origin.
	for i, tc := range []struct {
		bearer  bool
		headers map[string]string
	}{{false, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://example.com"}}, {true, map[string]string{"Sec-Fetch-Site": "cross-site"}}} {
		req := httptest.NewRequest("POST", "/api/v1/blocklist", strings.NewReader(`{"ip":"203.0.113.`+string(rune('1'+i))+`"}`))
		req.Header.Set("Content-Type", "application/json")
		if tc.bearer {
			req.Header.Set("Authorization", "Bearer "+token)
		} else {
			req.AddCookie(&http.Cookie{Name: "session", Value: "ok"})
		}
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 201 {
			t.Errorf("accepted POST %d: %d %s", i, rec.Code, rec.Body.String())
		}
	}
	// The list carries the console's headers and is not cached.
	req := httptest.NewRequest("GET", "/api/v1/blocklist?format=nftables", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	for k, v := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"} {
		if got := rec.Header().Get(k); got != v {
			t.Errorf("block list: %s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(rec.Header().Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("block list: Content-Security-Policy %q", rec.Header().Get("Content-Security-Policy"))
	}
}

// A webhook target answering with a redirect is not followed: the
// redirect's target never gets the change, and the attempts are failures,
// counted, until the audit gives the change up.
func TestAuditWebhookRedirectNotFollowed(t *testing.T) {
	fastAuditWebhooks(t, 3)
	var mu sync.Mutex
	var stolen []string
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		stolen = append(stolen, r.Method+" "+string(b))
		mu.Unlock()
	}))
	defer second.Close()
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, second.URL, http.StatusTemporaryRedirect)
	}))
	defer first.Close()
	reg := prometheus.NewRegistry()
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{Registry: reg,
		Webhooks: []webhook.Configuration{{Name: "r", URL: first.URL, Secret: "k"}}})
	if code, body := call(t, c.Handler(), "POST", "/api/v1/blocklist", `{"ip":"203.0.113.5"}`); code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	waitFor(t, "the change given up", func() bool {
		return webhookMetric(t, reg, "dropped_total", "r", "gave_up") == 1
	})
	if got := webhookMetric(t, reg, "attempts_total", "r", "http_3xx"); got != 3 {
		t.Errorf("%g attempts answered 3xx, want 3", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stolen) != 0 {
		t.Errorf("the redirect's target got %q, want nothing", stolen)
	}
}
