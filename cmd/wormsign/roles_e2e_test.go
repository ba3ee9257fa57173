package main

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestRunRolesFromEnvironment runs `wormsign run` with containment and
// named credentials from WORMSIGN_HTTP_TOKENS (tokens from files under
// $CREDENTIALS_DIRECTORY, and one inline): each name gets what its role
// allows on the console's API and the block list API of the same process,
// 403 beyond it; the manual add is recorded as its name; a logout ends the
// session for both APIs; a restart with another token for a name ends
// that name's sessions. No token appears in the log.
func TestRunRolesFromEnvironment(t *testing.T) {
	creds := t.TempDir()
	tokens := map[string]string{"router": "routerToken-5b1e", "ann": "annToken-77c2", "root": "rootToken-0d9a"}
	write := func(name, token string) {
		if err := os.WriteFile(filepath.Join(creds, name), []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("router", tokens["router"])
	write("ann", tokens["ann"])
	api := freeAPIAddr(t)
	base := "http://" + api
	env := append(labEnv(testenv.FreeUDPPort(t)),
		"WORMSIGN_HTTP_LISTEN="+api,
		"CREDENTIALS_DIRECTORY="+creds,
		"WORMSIGN_HTTP_TOKENS=noc-router=export;token_file=${CREDENTIALS_DIRECTORY}/router,ann=operator;token_file="+filepath.Join(creds, "ann")+",root=admin;token="+tokens["root"],
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_STATE_FILE="+filepath.Join(t.TempDir(), "containment.json"),
	)
	p := startWormsign(t, env, "run")
	waitLog(t, p, "wormsign started")

	call := func(method, path, body, token string, cookie *http.Cookie) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if cookie != nil {
			req.AddCookie(cookie)
			req.Header.Set("Origin", base)
		}
		if method == "POST" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		who, method, path, body string
		want                    int
	}{
		{"router", "GET", "/api/v1/blocklist?format=plain", "", 200},
		{"router", "GET", "/api/v1/blocklist/actions", "", 403},
		{"router", "GET", "/api/v1/incidents", "", 403},
		{"ann", "GET", "/api/v1/incidents", "", 200},
		{"ann", "GET", "/api/v1/blocklist/actions", "", 200},
		{"ann", "POST", "/api/v1/blocklist", `{"ip":"203.0.113.99"}`, 403},
		{"router", "POST", "/api/v1/blocklist", `{"ip":"203.0.113.99"}`, 403},
		{"root", "POST", "/api/v1/blocklist", `{"ip":"203.0.113.99","by":"someone-else"}`, 400},
		{"root", "POST", "/api/v1/blocklist", `{"ip":"203.0.113.99","reason":"abuse desk"}`, 201},
		{"", "GET", "/api/v1/blocklist?format=plain", "", 401},
	} {
		if code, body := call(tc.method, tc.path, tc.body, tokens[tc.who], nil); code != tc.want {
			t.Errorf("%s %s as %q: %d %s, want %d", tc.method, tc.path, tc.who, code, body, tc.want)
		}
	}
	if code, body := call("GET", "/api/v1/session", "", tokens["ann"], nil); code != 200 || strings.TrimSpace(body) != `{"name":"ann","role":"operator"}` {
		t.Errorf("ann's session: %d %s", code, body)
	}
	if _, body := call("GET", "/api/v1/blocklist/actions", "", tokens["ann"], nil); !strings.Contains(body, `"actor":"root"`) {
		t.Errorf("the add is not root's: %s", body)
	}
	if _, body := call("GET", "/api/v1/blocklist?format=plain", "", tokens["router"], nil); body != "203.0.113.99\n" {
		t.Errorf("the router's export: %q", body)
	}
	_, metrics := call("GET", "/metrics", "", "", nil)
	for _, want := range []string{`wormsign_console_forbidden_total{route="incidents"} 1`, `wormsign_containment_api_forbidden_total{route="add"} 2`,
		`wormsign_containment_api_forbidden_total{route="actions"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	login := func(token string) *http.Cookie {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/login?token="+url.QueryEscape(token), nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for _, ck := range resp.Cookies() {
			if ck.Name == "wormsign_session" {
				return ck
			}
		}
		t.Fatalf("login: %s, no cookie", resp.Status)
		return nil
	}
	// A logout ends the session for the console and the block list.
	ck := login(tokens["ann"])
	if code, _ := call("GET", "/api/v1/blocklist/actions", "", "", ck); code != 200 {
		t.Errorf("the block list with ann's cookie: %d", code)
	}
	if code, _ := call("POST", "/logout", "", "", ck); code != http.StatusSeeOther {
		t.Errorf("logout: %d", code)
	}
	for _, path := range []string{"/api/v1/incidents", "/api/v1/blocklist/actions"} {
		if code, _ := call("GET", path, "", "", ck); code != 401 {
			t.Errorf("GET %s with the logged-out cookie: %d, want 401", path, code)
		}
	}

	// A restart with another token for ann: her sessions end, root's not.
	annCookie, rootCookie := login(tokens["ann"]), login(tokens["root"])
	p.stop(t)
	first, _ := os.ReadFile(p.cmd.Stderr.(*os.File).Name())
	oldToken := tokens["ann"]
	tokens["ann"] = "annToken-2-91fa"
	write("ann", tokens["ann"])
	p = startWormsign(t, env, "run")
	waitLog(t, p, "wormsign started")
	if code, _ := call("GET", "/api/v1/incidents", "", "", annCookie); code != 401 {
		t.Errorf("ann's cookie after her token changed: %d, want 401", code)
	}
	if code, _ := call("GET", "/api/v1/incidents", "", "", rootCookie); code != 200 {
		t.Errorf("root's cookie after ann's token changed: %d, want 200", code)
	}
	if code, _ := call("GET", "/api/v1/incidents", "", tokens["ann"], nil); code != 200 {
		t.Errorf("ann's new token: %d, want 200", code)
	}
	p.stop(t)

	second, _ := os.ReadFile(p.cmd.Stderr.(*os.File).Name())
	raw := string(first) + string(second)
	if !strings.Contains(raw, "noc-router (export), ann (operator), root (admin)") {
		t.Errorf("the log does not list the names and roles:\n%s", raw)
	}
	tokens["ann (before)"] = oldToken
	for name, token := range tokens {
		if strings.Contains(raw, token) {
			t.Errorf("%s's token is in the log", name)
		}
	}
	if strings.Contains(raw, "made up") {
		t.Error("a token was made up although http.tokens are configured")
	}
}
