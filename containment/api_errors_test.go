package containment

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/internal/testenv"
)

// The block list's GET routes refuse unknown and repeated parameters
// (400, JSON), as the console's do.
func TestAPIUnknownParameters(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	h := c.Handler()
	for _, path := range []string{
		"/api/v1/blocklist?fromat=plain",
		"/api/v1/blocklist?format=json&format=plain",
		"/api/v1/blocklist/actions?limit=1&limit=2",
		"/api/v1/blocklist/actions?lmit=5",
	} {
		code, body := call(t, h, "GET", path, "")
		var e struct{ Error string }
		if err := json.Unmarshal([]byte(body), &e); code != 400 || err != nil || e.Error == "" {
			t.Errorf("GET %s: %d %s, want 400 with a JSON error", path, code, body)
		}
	}
	for _, path := range []string{"/api/v1/blocklist?format=plain", "/api/v1/blocklist/actions?limit=5"} {
		if code, body := call(t, h, "GET", path, ""); code != 200 {
			t.Errorf("GET %s: %d %s, want 200", path, code, body)
		}
	}
	// Requests are counted by their numeric status (httpserver.CodeLabel).
	if n := testutil.ToFloat64(c.metrics.apiRequests.WithLabelValues("400")); n != 4 {
		t.Errorf("api_requests_total{code=\"400\"} = %v, want 4", n)
	}
}

// Cookie-authenticated POSTs refused by the CSRF rule are counted, as the
// console counts its own.
func TestAPICrossOriginCounted(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	c.deps.Authorize = func(w http.ResponseWriter, r *http.Request, need httpserver.Role) (httpserver.Principal, bool) {
		return httpserver.Principal{Name: "ann", Role: httpserver.RoleAdmin}, true // a session cookie
	}
	h := c.Handler()
	for _, site := range []string{"cross-site", "same-site"} {
		req := httptest.NewRequest("POST", "/api/v1/blocklist", strings.NewReader(`{"ip":"203.0.113.9"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Sec-Fetch-Site", site)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 403 {
			t.Fatalf("%s POST: %d %s, want 403", site, rec.Code, rec.Body.String())
		}
	}
	if n := testutil.ToFloat64(c.metrics.crossOrigin); n != 2 {
		t.Errorf("cross_origin_refused_total = %v, want 2", n)
	}
}

// The audit trail answers 503 with Retry-After when ClickHouse does not
// answer, as every API does.
func TestAPIActionsClickHouseDown(t *testing.T) {
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = testenv.ClickHouseAddr(t)
	db, err := clickhousedb.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	db.Close() // gone: every query fails
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	c.deps.ClickHouse = db
	req := httptest.NewRequest("GET", "/api/v1/blocklist/actions", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	c.Handler().ServeHTTP(rec, req)
	var e struct{ Error string }
	if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != 503 || err != nil || e.Error == "" || rec.Header().Get("Retry-After") == "" {
		t.Errorf("actions with ClickHouse down: %d (Retry-After %q) %s, want 503 with Retry-After and a JSON error",
			rec.Code, rec.Header().Get("Retry-After"), rec.Body.String())
	}
}
