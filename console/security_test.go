package console

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/internal/httpserver"
)

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// Every console response carries the policy and the frame, sniffing and
// referrer headers; the API and the authenticated pages are not cached.
func TestSecurityHeaders(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	for _, tc := range []struct {
		path    string
		auth    bool
		noStore bool
	}{
		{"/login", false, true}, {"/login?failed=1", false, true}, {"/", true, true}, {"/top", true, true},
		{"/no-such-page", false, false}, {"/static/app.js", false, false}, {"/static/nope.js", false, false},
		{"/api/v1/incidents", true, true}, {"/api/v1/incidents", false, true}, {"/api/v1/nope", true, true},
		{"/api/v1/incidents?limit=0", true, true},
		{"/customers/cust-1", true, true}, {"/search?q=203.0.113.7", true, true},
		{"/api/v1/customers/cust-1", true, true}, {"/api/v1/customers/cust-1?x=1", true, true},
	} {
		req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
		if tc.auth {
			req.Header.Set("Authorization", "Bearer "+testToken)
		}
		resp, _ := do(t, req)
		h := resp.Header
		if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") ||
			!strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("%s: Content-Security-Policy %q", tc.path, csp)
		}
		for k, v := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"} {
			if h.Get(k) != v {
				t.Errorf("%s (%d): %s = %q, want %q", tc.path, resp.StatusCode, k, h.Get(k), v)
			}
		}
		if tc.noStore && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s (%d): Cache-Control = %q, want no-store", tc.path, resp.StatusCode, h.Get("Cache-Control"))
		}
	}
}

func login(t *testing.T, srv *httptest.Server) *http.Cookie {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/login?token="+testToken, nil)
	resp, _ := do(t, req)
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			return ck
		}
	}
	t.Fatalf("no session cookie: %d", resp.StatusCode)
	return nil
}

// A POST a cookie authenticates (or that logs in or out) must come from
// this origin, and the API's must be JSON; a Bearer token is unaffected.
func TestCrossOriginPosts(t *testing.T) {
	c, srv, _ := newTestConsole(t)
	cookie := login(t, srv)
	type post struct {
		name, path, contentType, body string
		cookie, bearer                bool
		headers                       map[string]string
		want                          int
	}
	crossSite := map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
	sameOrigin := map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": srv.URL}
	oldBrowser := map[string]string{"Origin": "https://evil.example"}
	form := "application/x-www-form-urlencoded"
	ack := `{"note":"x"}`
	for _, tc := range []post{
		{"ack cross-site", "/api/v1/incidents/abc/ack", "application/json", ack, true, false, crossSite, 403},
		{"ack Origin only", "/api/v1/incidents/abc/ack", "application/json", ack, true, false, oldBrowser, 403},
		{"ack as a form", "/api/v1/incidents/abc/ack", form, "note=x", true, false, nil, 403},
		{"ack as text/plain", "/api/v1/incidents/abc/ack", "text/plain", ack, true, false, sameOrigin, 403},
		{"ack same-origin", "/api/v1/incidents/abc/ack", "application/json", ack, true, false, sameOrigin, 404},
		{"ack Bearer cross-site", "/api/v1/incidents/abc/ack", "application/json", ack, false, true, crossSite, 404},
		{"login cross-site", "/login", form, "token=" + testToken, false, false, crossSite, 403},
		{"login same-origin", "/login", form, "token=" + testToken, false, false, sameOrigin, 303},
		{"login no browser headers", "/login", form, "token=" + testToken, false, false, nil, 303},
		{"logout cross-site", "/logout", form, "", true, false, crossSite, 403},
		{"logout same-origin", "/logout", form, "", true, false, map[string]string{"Origin": srv.URL}, 303},
	} {
		req, _ := http.NewRequest("POST", srv.URL+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.contentType)
		if tc.cookie {
			req.AddCookie(cookie)
		}
		if tc.bearer {
			req.Header.Set("Authorization", "Bearer "+testToken)
		}
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		resp, body := do(t, req)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.want)
		}
		if tc.want == 403 && (len(resp.Cookies()) != 0 || !strings.Contains(body, `"error"`)) {
			t.Errorf("%s: refused with cookies %v and body %s", tc.name, resp.Cookies(), body)
		}
	}
	if got := testutil.ToFloat64(c.metrics.crossOrigin); got != 6 {
		t.Errorf("cross-origin refusals counted %g, want 6", got)
	}
}

// Bodies past their limit are answered 413 in JSON and change nothing.
func TestBodyLimits(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	publish(testAlert("aaaaaaaaaaaaaaaaaaaaaaaa", "open", 10, 1))
	waitIncidents(t, c, 1)
	big := `{"note":"` + strings.Repeat("x", ackBodyLimit) + `"}`
	req, _ := http.NewRequest("POST", srv.URL+"/api/v1/incidents/aaaaaaaaaaaaaaaaaaaaaaaa/ack", strings.NewReader(big))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, body := do(t, req)
	var e apiError
	if resp.StatusCode != http.StatusRequestEntityTooLarge || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		t.Errorf("oversized ack: %d %s, want 413 with a JSON message", resp.StatusCode, body)
	}
	if code, body := get(t, srv, "/api/v1/incidents/aaaaaaaaaaaaaaaaaaaaaaaa", true); code != 200 || !strings.Contains(string(body), `"acks":[]`) {
		t.Errorf("after the oversized ack: %d %s, want no ack", code, body)
	}
	form := url.Values{"token": {testToken}, "next": {"/" + strings.Repeat("a", loginBodyLimit)}}
	req, _ = http.NewRequest("POST", srv.URL+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, body = do(t, req)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || len(resp.Cookies()) != 0 || !strings.Contains(body, `"error"`) {
		t.Errorf("oversized login: %d %s cookies %v, want 413 and no cookie", resp.StatusCode, body, resp.Cookies())
	}
}

// Wrong tokens are counted; past the free ones an address waits longer
// after each (429 with Retry-After, even with the right token); then the
// right token works and clears the address.
func TestLoginThrottle(t *testing.T) {
	c, srv, _ := newTestConsole(t)
	reg := prometheus.NewRegistry()
	l := httpserver.NewAuthLimiter(reg)
	var mu sync.Mutex
	now := testNow
	l.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c.guard.limiter = l

	bearer := func(token string) *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/incidents", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, _ := do(t, req)
		return resp
	}
	loginForm := func(token string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, _ := do(t, req)
		return resp
	}
	// The free failures: 3 Bearer, 2 login form.
	for i := 0; i < 3; i++ {
		if r := bearer("wrong"); r.StatusCode != 401 {
			t.Fatalf("wrong token %d: %d, want 401", i+1, r.StatusCode)
		}
	}
	for i := 0; i < 2; i++ {
		if r := loginForm("wrong"); r.StatusCode != 303 || !strings.Contains(r.Header.Get("Location"), "failed") {
			t.Fatalf("wrong login %d: %d %s", i+1, r.StatusCode, r.Header.Get("Location"))
		}
	}
	// Each further failure doubles the wait: 1 s, 2 s, 4 s, 8 s.
	for i, wait := range []int{1, 2, 4, 8} {
		if r := bearer("wrong"); r.StatusCode != 401 {
			t.Fatalf("failure %d: %d, want 401", 6+i, r.StatusCode)
		}
		for _, r := range []*http.Response{bearer(testToken), bearer("wrong"), loginForm(testToken)} {
			if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") != strconv.Itoa(wait) {
				t.Fatalf("after failure %d: %d Retry-After %q, want 429 after %d s", 6+i, r.StatusCode, r.Header.Get("Retry-After"), wait)
			}
		}
		advance(time.Duration(wait) * time.Second)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP wormsign_http_auth_failures_total Failed token checks (a wrong Bearer token or a wrong token in the login form), by where the token came.
# TYPE wormsign_http_auth_failures_total counter
wormsign_http_auth_failures_total{via="bearer"} 7
wormsign_http_auth_failures_total{via="login"} 2
# HELP wormsign_http_auth_throttled_total Requests answered 429 because their address failed too many token checks.
# TYPE wormsign_http_auth_throttled_total counter
wormsign_http_auth_throttled_total 12
`)); err != nil {
		t.Error(err)
	}
	// The wait is over: the right token works, and clears the address.
	if r := bearer(testToken); r.StatusCode != 200 {
		t.Fatalf("right token after the wait: %d, want 200", r.StatusCode)
	}
	if r := loginForm(testToken); r.StatusCode != 303 || len(r.Cookies()) != 1 {
		t.Fatalf("login after the wait: %d %v", r.StatusCode, r.Cookies())
	}
	if r := bearer("wrong"); r.StatusCode != 401 {
		t.Errorf("a failure after a success: %d, want 401 (a fresh start)", r.StatusCode)
	}
}

// The server's read and write timeouts do not end the alert stream, which
// sets its own deadlines.
func TestStreamOutlivesServerTimeouts(t *testing.T) {
	c, _, _ := newTestConsole(t)
	s := httpserver.New(slog.New(slog.DiscardHandler), httpserver.Configuration{Listen: "127.0.0.1:0",
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond},
		prometheus.NewRegistry())
	s.Handle("/", c.Handler())
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	req, _ := http.NewRequest("GET", "http://"+s.Addr()+"/api/v1/alerts/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	start := time.Now()
	beats := 0
	for time.Since(start) < 1500*time.Millisecond {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %s (%d heartbeats): %v", time.Since(start), beats, err)
		}
		if strings.HasPrefix(line, ": heartbeat") {
			beats++
		}
	}
	if beats < 5 {
		t.Errorf("%d heartbeats in 1.5 s, want >= 5", beats)
	}
	// An ordinary request on the same server still has the timeouts.
	if code, _ := get2(t, "http://"+s.Addr()+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
}

func get2(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
