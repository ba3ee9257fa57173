package remediation

import (
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/network"
)

// walledComponent is a component whose casebook holds one walled case
// for the subscriber 203.0.113.7 (no identity).
func walledComponent(t *testing.T, max int) *Component {
	t.Helper()
	cfg := testConfig()
	cfg.Ladder = []Step{{StepNotify, 0}, {StepWalled, 0}, {StepBlock, 24 * time.Hour}}
	cfg.SelfReleaseMax = max
	cfg.Desk = DeskConfiguration{Name: "the ISP's abuse desk", Phone: "+49 30 1234567", Email: "abuse@isp.example", PortalURL: "https://help.isp.example/"}
	now := t0
	c, err := New(cfg, Dependencies{Bus: bus.NewMemory(8), Subscribers: network.NewSubscribers([]network.Prefix{network.MustParsePrefix("203.0.113.0/24")}),
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a := zombieAlert("inc-1", alert.StateOpen, t0)
	a.Evidence.Identity = nil
	if _, err := c.book.Apply(a); err != nil {
		t.Fatal(err)
	}
	return c
}

func portalGet(t *testing.T, h http.Handler, from, path string) (int, string, http.Header) {
	t.Helper()
	r := httptest.NewRequest("GET", "http://example.com"+path, nil)
	r.RemoteAddr = from
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, html.UnescapeString(w.Body.String()), w.Header()
}

func portalRelease(t *testing.T, h http.Handler, from, token string) (int, string) {
	t.Helper()
	r := httptest.NewRequest("POST", "http://example.com"+releasePath, strings.NewReader(url.Values{"token": {token}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.RemoteAddr = from
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, html.UnescapeString(w.Body.String())
}

var tokenRE = regexp.MustCompile(`name="token" value="([0-9a-f]+)"`)

// TestPortalShowsOnlyTheConnectionsCase: the walled subscriber sees its
// case, evidence and the button on any path of any host; a neighbour sees
// none of it and cannot release it, not even with the walled one's form.
func TestPortalShowsOnlyTheConnectionsCase(t *testing.T) {
	c := walledComponent(t, 2)
	h := c.PortalHandler()
	code, body, hdr := portalGet(t, h, "203.0.113.7:40000", "/generate_204")
	for _, want := range []string{"Security notice", "203.0.113.7", "140 different destinations", "198.18.0.10", "I have cleaned my computer", "2 more times", "never ask for your password"} {
		if !strings.Contains(body, want) {
			t.Errorf("walled page lacks %q", want)
		}
	}
	if code != 200 || hdr.Get("Cache-Control") != "no-store" || !strings.Contains(hdr.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("page %d, headers %v", code, hdr)
	}
	m := tokenRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no token in the form")
	}
	_, other, _ := portalGet(t, h, "203.0.113.8:40000", "/")
	if strings.Contains(other, "203.0.113.7") || !strings.Contains(other, "No notice for this connection") {
		t.Errorf("neighbour's page shows the case:\n%s", other)
	}
	if code, _ := portalRelease(t, h, "203.0.113.8:40000", m[1]); code != http.StatusForbidden {
		t.Errorf("neighbour's release with the walled form: %d, want 403", code)
	}
	if code, _ := portalRelease(t, h, "203.0.113.7:40000", "00"); code != http.StatusForbidden {
		t.Errorf("release with a forged token: %d, want 403", code)
	}
	// RFC 8908: captive while walled, with the portal's URL.
	_, api, hdr := portalGet(t, h, "203.0.113.7:40000", captivePath)
	var captive map[string]any
	if err := json.Unmarshal([]byte(api), &captive); err != nil || captive["captive"] != true ||
		captive["user-portal-url"] != "https://help.isp.example/" || hdr.Get("Content-Type") != "application/captive+json" {
		t.Errorf("captive API: %s %v (%v)", api, hdr, err)
	}
	_, api, _ = portalGet(t, h, "203.0.113.8:40000", captivePath)
	if strings.TrimSpace(api) != `{"captive":false}` {
		t.Errorf("captive API for a neighbour: %s", api)
	}
}

// TestPortalSelfReleaseLimit: with a limit of one, the first press
// releases; after a relapse the second is refused with whom to call.
func TestPortalSelfReleaseLimit(t *testing.T) {
	c := walledComponent(t, 1)
	h := c.PortalHandler()
	_, body, _ := portalGet(t, h, "203.0.113.7:40000", "/")
	token := tokenRE.FindStringSubmatch(body)[1]
	code, body := portalRelease(t, h, "203.0.113.7:40000", token)
	if code != 200 || !strings.Contains(body, "Your connection is released") {
		t.Fatalf("release: %d\n%s", code, body)
	}
	cs, _ := c.book.OfCustomer("203.0.113.7")
	if cs.State != StateReleased || cs.ReleasedBy != ActorCustomer {
		t.Fatalf("case after the release: %s by %s", cs.State, cs.ReleasedBy)
	}
	// A new incident: blocked (one step higher); the desk releases; the
	// next one walls again.
	c.book.Apply(zombieAlertNoID("inc-2", t0.Add(time.Hour)))
	c.book.Release(cs.ID, "alice", "", t0.Add(2*time.Hour))
	c.book.Apply(zombieAlertNoID("inc-3", t0.Add(3*time.Hour)))
	_, body, _ = portalGet(t, h, "203.0.113.7:40000", "/")
	if strings.Contains(body, "I have cleaned my computer") || !strings.Contains(body, "+49 30 1234567") {
		t.Errorf("page past the limit offers the button or lacks the desk's number:\n%s", body)
	}
	code, body = portalRelease(t, h, "203.0.113.7:40000", token)
	if code != http.StatusForbidden || !strings.Contains(body, "Only the ISP's abuse desk can release it now: call +49 30 1234567 or write to abuse@isp.example") {
		t.Errorf("release past the limit: %d\n%s", code, body)
	}
}

func zombieAlertNoID(id string, at time.Time) alert.Alert {
	a := zombieAlert(id, alert.StateOpen, at)
	a.Evidence.Identity = nil
	return a
}
