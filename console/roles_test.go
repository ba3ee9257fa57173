package console

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
)

// roleCredentials are http.tokens of every role but admin, which is
// http.token (testToken, the name "admin").
var roleCredentials = []httpserver.Credential{
	{Name: "router", Role: httpserver.RoleExport, Token: "export-token-1"},
	{Name: "vera", Role: httpserver.RoleViewer, Token: "viewer-token-1"},
	{Name: "olga", Role: httpserver.RoleOperator, Token: "operator-token-1"},
}

// roleTokens: no token, then one of each role, weakest first.
var roleTokens = []string{"", "export-token-1", "viewer-token-1", "operator-token-1", testToken}

// testClock is a clock the tests move.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newRolesConsole serves a console with deps (http.token testToken plus
// creds), an in-memory store with one incident (r1) and a holder.
func newRolesConsole(t *testing.T, creds []httpserver.Credential, clock *testClock) (*Component, *httptest.Server, *fakeHolder) {
	t.Helper()
	b := bus.NewMemory(64)
	cfg := DefaultConfiguration()
	cfg.Heartbeat = 50 * time.Millisecond
	holder := &fakeHolder{}
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: b,
		AlertsTopic: "alerts", FlowsTopic: "flows", Subscribers: network.NewSubscribers(nil),
		Token: testToken, Credentials: creds, Holder: holder, Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.guard.limiter.FreeFailures = 1000
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() {
		c.Stop()
		srv.Close()
		b.Close()
	})
	p, _ := b.Producer("alerts")
	a := testAlert("r1", alert.StateOpen, 5, -1)
	v, _ := a.Marshal()
	if err := p.Publish(context.Background(), bus.Message{Value: v}); err != nil {
		t.Fatal(err)
	}
	waitIncidents(t, c, 1)
	return c, srv, holder
}

// loginAs logs in with the form and returns the session cookie.
func loginAs(t *testing.T, srv *httptest.Server, token string) *http.Cookie {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.URL+"/login", strings.NewReader(url.Values{"token": {token}, "next": {"/top"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, _ := do(t, req)
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie && ck.Value != "" {
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/top" {
				t.Errorf("login: %d to %q, want 303 to /top", resp.StatusCode, resp.Header.Get("Location"))
			}
			return ck
		}
	}
	t.Fatalf("login with a token: %d %s, no session cookie", resp.StatusCode, resp.Header.Get("Location"))
	return nil
}

// request sends method path with a token (Bearer) or a cookie, as the
// console's own script would (same origin, JSON).
func request(t *testing.T, srv *httptest.Server, method, path, body, token string, cookie *http.Cookie) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if cookie != nil {
		req.AddCookie(cookie)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/json")
	}
	if strings.HasSuffix(path, "/stream") {
		// The stream's headers are enough.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req = req.WithContext(ctx)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return resp, string(b)
		}
		return resp, ""
	}
	return do(t, req)
}

// Every route of the console and its API × every role, with a token and
// with a login's cookie: the route's role and up get through, a weaker
// one gets 403 in JSON (counted by route), no credentials 401 (a page: the
// login form).
func TestRoutesByRole(t *testing.T) {
	c, srv, _ := newRolesConsole(t, roleCredentials, &testClock{now: testNow})
	cookies := []*http.Cookie{nil}
	for _, tok := range roleTokens[1:] {
		cookies = append(cookies, loginAs(t, srv, tok))
	}
	routes := []struct {
		method, path, body string
		want               [5]int // none, export, viewer, operator, admin
	}{
		{"GET", "/api/v1/session", "", [5]int{401, 200, 200, 200, 200}},
		{"GET", "/api/v1/incidents", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/incidents/r1", "", [5]int{401, 403, 200, 200, 200}},
		{"POST", "/api/v1/incidents/r1/ack", `{"note":"seen"}`, [5]int{401, 403, 403, 201, 201}},
		{"POST", "/api/v1/incidents/r1/ack", `{"note":"held","hold":true}`, [5]int{401, 403, 403, 201, 201}},
		{"GET", "/api/v1/subscribers/203.0.113.7", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/subscribers/203.0.113.7/chart.svg", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/customers/cust-1", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/top/smtp", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/top?kind=bytes", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/alerts/stream", "", [5]int{401, 403, 200, 200, 200}},
		{"GET", "/api/v1/nope", "", [5]int{401, 404, 404, 404, 404}},
		{"GET", "/", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/incidents/r1", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/subscribers/203.0.113.7", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/customers/cust-1", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/search?q=cust-1", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/top", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/cases", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/cases/c1", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/desk", "", [5]int{303, 403, 200, 200, 200}},
		{"GET", "/login", "", [5]int{200, 200, 200, 200, 200}},
		{"GET", "/static/app.js", "", [5]int{200, 200, 200, 200, 200}},
	}
	for _, via := range []string{"bearer", "cookie"} {
		for _, tc := range routes {
			for i := range roleTokens {
				var resp *http.Response
				var body string
				if via == "bearer" {
					resp, body = request(t, srv, tc.method, tc.path, tc.body, roleTokens[i], nil)
				} else {
					resp, body = request(t, srv, tc.method, tc.path, tc.body, "", cookies[i])
				}
				if resp.StatusCode != tc.want[i] {
					t.Errorf("%s %s by %s as role %d: %d %s, want %d", tc.method, tc.path, via, i, resp.StatusCode, body, tc.want[i])
				}
				var e apiError
				if resp.StatusCode == http.StatusForbidden && (json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, "role")) {
					t.Errorf("%s %s by %s as role %d: 403 %q, want a JSON error naming the role", tc.method, tc.path, via, i, body)
				}
			}
		}
	}
	// Twice (token, cookie): export on the 11 viewer routes, export and
	// viewer on the two acks.
	for route, want := range map[string]float64{"incidents": 2, "ack": 8, "stream": 2, "page": 18, "session": 0, "unknown": 0} {
		if got := testutil.ToFloat64(c.metrics.forbidden.WithLabelValues(route)); got != want {
			t.Errorf("wormsign_console_forbidden_total{route=%q} = %g, want %g", route, got, want)
		}
	}
}

// A login with a named token: the session knows the name and role (GET
// /api/v1/session), and its acks and holds are that name's, as a token's
// are.
func TestLoginWithNamedToken(t *testing.T) {
	c, srv, holder := newRolesConsole(t, roleCredentials, &testClock{now: testNow})
	for _, tc := range []struct {
		token string
		want  string
	}{
		{"operator-token-1", `{"name":"olga","role":"operator"}`},
		{"export-token-1", `{"name":"router","role":"export"}`},
		{testToken, `{"name":"admin","role":"admin"}`},
	} {
		ck := loginAs(t, srv, tc.token)
		if _, body := request(t, srv, "GET", "/api/v1/session", "", "", ck); strings.TrimSpace(body) != tc.want {
			t.Errorf("session of a login: %s, want %s", body, tc.want)
		}
		if _, body := request(t, srv, "GET", "/api/v1/session", "", tc.token, nil); strings.TrimSpace(body) != tc.want {
			t.Errorf("session of a token: %s, want %s", body, tc.want)
		}
	}
	ck := loginAs(t, srv, "operator-token-1")
	if resp, body := request(t, srv, "POST", "/api/v1/incidents/r1/ack", `{"note":"called","hold":true}`, "", ck); resp.StatusCode != 201 {
		t.Fatalf("ack with the cookie: %d %s", resp.StatusCode, body)
	}
	if resp, body := request(t, srv, "POST", "/api/v1/incidents/r1/ack", `{"note":"again"}`, testToken, nil); resp.StatusCode != 201 {
		t.Fatalf("ack with the token: %d %s", resp.StatusCode, body)
	}
	// A body that names someone is refused: nobody acks as another.
	resp, body := request(t, srv, "POST", "/api/v1/incidents/r1/ack", `{"by":"mallory","note":"x"}`, "", ck)
	if resp.StatusCode != 400 || !strings.Contains(body, `\"by\" is not accepted`) {
		t.Errorf("ack with by: %d %s, want 400 explaining by", resp.StatusCode, body)
	}
	_, body = request(t, srv, "GET", "/api/v1/incidents/r1", "", "viewer-token-1", nil)
	var d incidentDetail
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	var by []string
	for _, a := range d.Acks {
		by = append(by, a.By+": "+a.Note)
	}
	if diff := cmp.Diff([]string{"olga: called", "admin: again"}, by); diff != "" {
		t.Errorf("acks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"r1 olga called"}, holder.holds); diff != "" {
		t.Errorf("holds (-want +got):\n%s", diff)
	}
	if got := testutil.ToFloat64(c.metrics.acks); got != 2 {
		t.Errorf("acks counted %g, want 2", got)
	}
}

// Logging out ends the session on the server: the old cookie, replayed
// by whoever holds it, is refused afterwards, and its alert stream ends;
// another session of the same name lives on.
func TestLogoutRevokesSession(t *testing.T) {
	_, srv, _ := newRolesConsole(t, roleCredentials, &testClock{now: testNow})
	stolen := loginAs(t, srv, "viewer-token-1")
	other := loginAs(t, srv, "viewer-token-1")
	if resp, _ := request(t, srv, "GET", "/api/v1/incidents", "", "", stolen); resp.StatusCode != 200 {
		t.Fatalf("before the logout: %d", resp.StatusCode)
	}
	// A stream opened with the cookie before the logout.
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/alerts/stream", nil)
	req.AddCookie(stolen)
	stream, err := http.DefaultClient.Do(req)
	if err != nil || stream.StatusCode != 200 {
		t.Fatalf("stream: %v %v", err, stream)
	}
	defer stream.Body.Close()

	req, _ = http.NewRequest("POST", srv.URL+"/logout", nil)
	req.AddCookie(stolen)
	req.Header.Set("Origin", srv.URL)
	resp, _ := do(t, req)
	cleared := false
	for _, ck := range resp.Cookies() {
		cleared = cleared || (ck.Name == sessionCookie && ck.MaxAge < 0)
	}
	if resp.StatusCode != http.StatusSeeOther || !cleared {
		t.Fatalf("logout: %d, cookie cleared %v", resp.StatusCode, cleared)
	}
	for _, path := range []string{"/api/v1/incidents", "/api/v1/session", "/api/v1/nope"} {
		if resp, body := request(t, srv, "GET", path, "", "", stolen); resp.StatusCode != 401 {
			t.Errorf("GET %s with the logged-out cookie: %d %s, want 401", path, resp.StatusCode, body)
		}
	}
	if resp, _ := request(t, srv, "GET", "/", "", "", stolen); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		t.Errorf("the board with the logged-out cookie: %d %s, want the login form", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := request(t, srv, "GET", "/api/v1/incidents", "", "", other); resp.StatusCode != 200 {
		t.Errorf("the same name's other session: %d, want 200", resp.StatusCode)
	}
	// The stream ends at its next heartbeat.
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, bufio.NewReader(stream.Body))
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the logged-out session's stream still runs after 5 s")
	}
	// Logging in again works.
	if resp, _ := request(t, srv, "GET", "/api/v1/incidents", "", "", loginAs(t, srv, "viewer-token-1")); resp.StatusCode != 200 {
		t.Errorf("after a new login: %d", resp.StatusCode)
	}
}

// A session is bound to the token it logged in with: after a restart with
// another token for the name (or another role, or without the name) the
// old cookie is refused; with the same credentials it still works, as on
// every instance that has them.
func TestTokenChangeEndsSessions(t *testing.T) {
	clock := &testClock{now: testNow}
	_, srv, _ := newRolesConsole(t, roleCredentials, clock)
	ck := loginAs(t, srv, "operator-token-1")
	with := func(change func([]httpserver.Credential) []httpserver.Credential) []httpserver.Credential {
		creds := append([]httpserver.Credential(nil), roleCredentials...)
		return change(creds)
	}
	for _, tc := range []struct {
		name  string
		creds []httpserver.Credential
		want  int
	}{
		{"same credentials", roleCredentials, 200},
		{"another token", with(func(c []httpserver.Credential) []httpserver.Credential {
			c[2].Token = "operator-token-2"
			return c
		}), 401},
		{"another role", with(func(c []httpserver.Credential) []httpserver.Credential {
			c[2].Role = httpserver.RoleViewer
			return c
		}), 401},
		{"name gone", with(func(c []httpserver.Credential) []httpserver.Credential { return c[:2] }), 401},
		{"token under another name", with(func(c []httpserver.Credential) []httpserver.Credential {
			c[2].Name = "olga2"
			return c
		}), 401},
	} {
		_, restarted, _ := newRolesConsole(t, tc.creds, clock)
		if resp, body := request(t, restarted, "GET", "/api/v1/incidents", "", "", ck); resp.StatusCode != tc.want {
			t.Errorf("%s: the old cookie gets %d %s, want %d", tc.name, resp.StatusCode, body, tc.want)
		}
	}
	// It expires after console.session_lifetime.
	clock.Add(DefaultConfiguration().SessionLifetime - time.Second)
	if resp, _ := request(t, srv, "GET", "/api/v1/incidents", "", "", ck); resp.StatusCode != 200 {
		t.Errorf("just before the session's end: %d, want 200", resp.StatusCode)
	}
	clock.Add(time.Second)
	if resp, _ := request(t, srv, "GET", "/api/v1/incidents", "", "", ck); resp.StatusCode != 401 {
		t.Errorf("at the session's end: %d, want 401", resp.StatusCode)
	}
}

// A cookie is signed: edited to name another credential, or signed with
// another key, it is refused.
func TestSessionCookieTampered(t *testing.T) {
	_, srv, _ := newRolesConsole(t, roleCredentials, &testClock{now: testNow})
	ck := loginAs(t, srv, "viewer-token-1")
	enc, sig, _ := strings.Cut(ck.Value, ".")
	b, err := base64.RawURLEncoding.DecodeString(enc)
	raw := string(b)
	if err != nil || !strings.Contains(raw, "|vera|viewer|") {
		t.Fatalf("cookie payload %q (%v), want the name and role", raw, err)
	}
	for name, value := range map[string]string{
		"renamed":  base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(raw, "|vera|viewer|", "|admin|admin|", 1))) + "." + sig,
		"promoted": base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(raw, "|viewer|", "|admin|", 1))) + "." + sig,
		"no mac":   enc,
		"v1":       strings.Repeat("ab", 32),
	} {
		if resp, _ := request(t, srv, "GET", "/api/v1/session", "", "", &http.Cookie{Name: sessionCookie, Value: value}); resp.StatusCode != 401 {
			t.Errorf("%s cookie: %d, want 401", name, resp.StatusCode)
		}
	}
	if strings.Contains(ck.Value, "viewer-token-1") || strings.Contains(raw, "viewer-token-1") {
		t.Error("the cookie carries the token")
	}
}

// The guard remembers at most maxRevoked logged-out sessions (until they
// would expire); past it every session issued so far is refused instead,
// and new logins work.
func TestRevocationsBounded(t *testing.T) {
	clock := &testClock{now: testNow}
	g, err := NewGuard(roleCredentials, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.now, g.maxRevoked = clock.Now, 3
	cr := g.byName["vera"]
	var sessions []session
	for range 6 {
		s, _ := g.issue(cr, time.Hour)
		sessions = append(sessions, s)
		clock.Add(time.Millisecond)
	}
	for _, s := range sessions[:3] {
		g.revoke(&s)
	}
	if !g.valid(&sessions[3]) || g.valid(&sessions[0]) || len(g.revoked) != 3 {
		t.Fatalf("after 3 logouts: %d remembered", len(g.revoked))
	}
	// Expired revocations make room.
	clock.Add(time.Hour)
	s, _ := g.issue(cr, time.Hour)
	clock.Add(time.Millisecond)
	g.revoke(&s)
	if len(g.revoked) != 1 {
		t.Errorf("expired revocations kept: %d, want 1", len(g.revoked))
	}
	// Full of live ones: everything issued so far ends.
	var live []session
	for range 4 {
		s, _ := g.issue(cr, time.Hour)
		live = append(live, s)
		clock.Add(time.Millisecond)
	}
	for _, s := range live[:3] {
		g.revoke(&s)
	}
	if len(g.revoked) != 0 || g.valid(&live[3]) {
		t.Errorf("full: %d remembered, the unrevoked session valid %v; want none and false", len(g.revoked), g.valid(&live[3]))
	}
	clock.Add(time.Millisecond)
	if s, _ := g.issue(cr, time.Hour); !g.valid(&s) {
		t.Error("a new session after the overflow is refused")
	}
}
