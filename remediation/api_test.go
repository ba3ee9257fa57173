package remediation

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/console"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/internal/testenv"
)

// apiComponent is a component with one walled case, its API behind the
// console's own guard (a token per role).
func apiComponent(t *testing.T) (*Component, http.Handler, *prometheus.Registry, string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	guard, err := console.NewGuard([]httpserver.Credential{
		{Name: "vera", Role: httpserver.RoleViewer, Token: "viewer-t"},
		{Name: "olga", Role: httpserver.RoleOperator, Token: "operator-t"},
	}, httpserver.NewAuthLimiter(reg))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Ladder = []Step{{StepNotify, 0}, {StepWalled, 0}, {StepBlock, 24 * time.Hour}}
	c, err := New(cfg, Dependencies{Bus: bus.NewMemory(8), Registry: reg, Authorize: guard.Authorize, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.book.Apply(zombieAlert("inc-1", alert.StateOpen, t0)); err != nil {
		t.Fatal(err)
	}
	cs, _ := c.book.OfCustomer("cust-42")
	return c, c.Handler(), reg, cs.ID
}

func apiCall(h http.Handler, method, path, token, body string) (int, string, http.Header) {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String(), w.Header()
}

// TestCasesAPIRoles: reading takes a viewer, acting an operator; no
// token is 401; bad input is 400, a wrong state 409, no case 404.
func TestCasesAPIRoles(t *testing.T) {
	_, h, _, id := apiComponent(t)
	for _, tc := range []struct {
		method, path, body string
		want               [3]int // none, viewer, operator
	}{
		{"GET", APIPath, "", [3]int{401, 200, 200}},
		{"GET", APIPath + "?state=walled", "", [3]int{401, 200, 200}},
		{"GET", APIPath + "?state=nope", "", [3]int{401, 400, 400}},
		{"GET", APIPath + "?what=1", "", [3]int{401, 400, 400}},
		{"GET", APIPath + "/stats", "", [3]int{401, 200, 200}},
		{"GET", APIPath + "/" + id, "", [3]int{401, 200, 200}},
		{"GET", APIPath + "/case-nope", "", [3]int{401, 404, 404}},
		{"GET", APIPath + "/" + id + "/xarf", "", [3]int{401, 302, 302}},
		{"POST", APIPath + "/" + id + "/hold", `{"duration":"forever"}`, [3]int{401, 403, 400}},
		{"POST", APIPath + "/" + id + "/hold", `{"duration":"4h","note":"customer called"}`, [3]int{401, 403, 200}},
		{"POST", APIPath + "/" + id + "/skip", `{"note":"x","extra":1}`, [3]int{401, 403, 400}},
		{"POST", APIPath + "/case-nope/release", `{}`, [3]int{401, 403, 404}},
		{"POST", APIPath + "/" + id + "/false_positive", `{"note":"a list server"}`, [3]int{401, 403, 200}},
		{"POST", APIPath + "/" + id + "/false_positive", `{}`, [3]int{401, 403, 409}},
		{"DELETE", APIPath + "/" + id, "", [3]int{401, 404, 404}},
	} {
		// A refused POST never reaches the case: the operator's turn,
		// last, finds it as the rows before left it.
		for i, tok := range []string{"", "viewer-t", "operator-t"} {
			code, body, _ := apiCall(h, tc.method, tc.path, tok, tc.body)
			if code != tc.want[i] {
				t.Errorf("%s %s %s as %q: %d, want %d (%s)", tc.method, tc.path, tc.body, tok, code, tc.want[i], body)
			}
		}
	}
}

// TestCasesAPIView: a case's view carries its ladder and next step, the
// evidence in words and the history with who did what; the stats and the
// Prometheus metrics count a false positive against its rule.
func TestCasesAPIView(t *testing.T) {
	c, h, reg, id := apiComponent(t)
	_, body, _ := apiCall(h, "GET", APIPath+"/"+id, "viewer-t", "")
	var v struct {
		Case   Case
		Events []Event
		Ladder []string
		Next   int
		NextAt time.Time `json:"next_at"`
		Left   int       `json:"self_releases_left"`
		Evid   Evidence  `json:"evidence"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if v.Case.State != StateWalled || v.Next != 2 || !v.NextAt.Equal(t0.Add(24*time.Hour)) || v.Left != 2 ||
		len(v.Ladder) != 3 || v.Ladder[1] != "walled:0s" || v.Evid.Destinations != 140 || !strings.Contains(v.Evid.What, "mail servers") {
		t.Errorf("view %s", body)
	}
	_, _, hdr := apiCall(h, "GET", APIPath+"/"+id+"/xarf", "viewer-t", "")
	if hdr.Get("Location") != "/api/v1/incidents/inc-1/xarf" {
		t.Errorf("xarf redirect to %q", hdr.Get("Location"))
	}
	if code, _, _ := apiCall(h, "POST", APIPath+"/"+id+"/false_positive", "operator-t", `{"note":"a list server"}`); code != 200 {
		t.Fatalf("false positive: %d", code)
	}
	_, evs, _ := c.Case(id)
	last := evs[len(evs)-1]
	if last.Type != EventFalsePositive || last.Actor != "olga" || last.Note != "a list server" || last.State != StateFalsePositive {
		t.Errorf("last event %+v", last)
	}
	_, body, _ = apiCall(h, "GET", APIPath+"/stats", "viewer-t", "")
	var s Stats
	json.Unmarshal([]byte(body), &s)
	if s.Cases != 1 || s.ByState[StateFalsePositive] != 1 || s.FalsePositives[alert.KindSMTPFanout] != 1 || s.Walled != 1 {
		t.Errorf("stats %s", body)
	}
	if v, _ := testenv.Metric(t, reg, "wormsign_remediation_false_positives_total", map[string]string{"kind": "smtp_fanout"}); v != 1 {
		t.Errorf("false positives metric %v, want 1", v)
	}
	if v, _ := testenv.Metric(t, reg, "wormsign_remediation_cases", map[string]string{"state": "false_positive"}); v != 1 {
		t.Errorf("cases metric %v, want 1", v)
	}
}
