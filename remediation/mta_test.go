package remediation

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/webhook"
)

// startWithRelay starts a component on an in-process bus whose notices go
// through the Postfix p (STARTTLS with its certificate, AUTH), with one
// contact, and a webhook target recording what it gets.
func startWithRelay(t *testing.T, smtp SMTPConfiguration) (*Component, bus.Producer, func() []map[string]any) {
	t.Helper()
	dir := t.TempDir()
	contacts := filepath.Join(dir, "contacts.csv")
	os.WriteFile(contacts, []byte("subscriber_id,email,name,language\ncust-42,erika@customers.example,Erika Mustermann,en\n"), 0o600)
	var mu sync.Mutex
	var hooks []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		json.Unmarshal(body, &m)
		mu.Lock()
		hooks = append(hooks, m)
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	cfg := testConfig()
	cfg.Ladder = []Step{{StepNotify, 0}}
	cfg.SMTP = smtp
	cfg.Contacts.CSV = contacts
	cfg.Desk = DeskConfiguration{Name: "Example ISP abuse desk", Phone: "+49 30 1234567", PortalURL: "https://help.isp.example/"}
	b := bus.NewMemory(64)
	c, err := New(cfg, Dependencies{Bus: b, AlertsTopic: "alerts", Webhooks: []webhook.Configuration{{Name: "tickets", URL: srv.URL, Secret: "k"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	prod, err := b.Producer("alerts")
	if err != nil {
		t.Fatal(err)
	}
	return c, prod, func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]any(nil), hooks...)
	}
}

func publish(t *testing.T, p bus.Producer, a alert.Alert) {
	t.Helper()
	raw, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(context.Background(), bus.Message{Key: []byte(a.SubscriberIP), Value: raw}); err != nil {
		t.Fatal(err)
	}
}

func waitCase(t *testing.T, c *Component, customer string, ok func(Case, []Event) bool) (Case, []Event) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, cs := range c.Cases() {
			if cs.Customer == customer {
				cs, evs, _ := c.Case(cs.ID)
				if ok(cs, evs) {
					return cs, evs
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("case of %s not as wanted within 30 s: %+v", customer, c.Cases())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNoticeThroughPostfix: a zombie's case is notified through a real
// Postfix relay (STARTTLS verified against its certificate, AUTH PLAIN),
// the mail lands in the customer's mailbox with the evidence and sane
// headers, the case records the notice, and the webhook hears
// case.notified.
func TestNoticeThroughPostfix(t *testing.T) {
	p := testenv.StartPostfix(t, testenv.PostfixConfig{})
	c, prod, hooks := startWithRelay(t, SMTPConfiguration{Addr: p.Addr(), From: "abuse@isp.example", FromName: "Example ISP abuse desk",
		StartTLS: true, ServerName: p.ServerName(), CAFile: p.CertFile(), Username: p.User(), Password: p.Password(),
		Timeout: 10 * time.Second, Attempts: 2})
	publish(t, prod, zombieAlert("inc-1", alert.StateOpen, t0))
	cs, evs := waitCase(t, c, "cust-42", func(cs Case, _ []Event) bool { return cs.State == StateNotified })
	msgs := p.WaitMessages(t, 1, 30*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(msgs))
	}
	m := msgs[0]
	h := m.Header
	var dec mime.WordDecoder
	subject, _ := dec.DecodeHeader(h.Get("Subject"))
	for k, want := range map[string]string{"From": `"Example ISP abuse desk" <abuse@isp.example>`, "To": `"Erika Mustermann" <erika@customers.example>`,
		"Auto-Submitted": "auto-generated", "X-Wormsign-Case": cs.ID, "Content-Type": "text/plain; charset=utf-8"} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if subject != "Security notice for your internet connection ("+cs.ID+")" {
		t.Errorf("subject %q", subject)
	}
	if d, err := h.Date(); err != nil || d.IsZero() {
		t.Errorf("Date: %v", err)
	}
	if id := h.Get("Message-ID"); !strings.HasPrefix(id, "<"+cs.ID+".") || !strings.HasSuffix(id, "@isp.example>") {
		t.Errorf("Message-ID %q", id)
	}
	if h.Get("Received") == "" {
		t.Errorf("no Received header: the mail did not go through the relay")
	}
	for _, want := range []string{"Dear Erika Mustermann", "203.0.113.7", "140 different destinations", "198.18.0.10",
		"mail servers", "never ask for your", "https://help.isp.example/", cs.ID} {
		if !strings.Contains(m.Body, want) {
			t.Errorf("body lacks %q:\n%s", want, m.Body)
		}
	}
	if len(evs) < 2 || evs[1].Type != EventNotify || !strings.Contains(evs[1].Note, h.Get("Message-ID")) {
		t.Errorf("history %+v, want the notice with its Message-ID", evs)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		var names []string
		for _, hk := range hooks() {
			names = append(names, hk["event"].(string))
		}
		if strings.Contains(strings.Join(names, " "), "case.notified") {
			if names[0] != "case.opened" {
				t.Errorf("webhook events %v, want case.opened first", names)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook events %v, want case.notified", names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNoticeRefusedAuthIsRecorded: a wrong password is refused by the relay
// for good (535), and the case says the notice was not sent, and why.
func TestNoticeRefusedAuthIsRecorded(t *testing.T) {
	p := testenv.StartPostfix(t, testenv.PostfixConfig{})
	c, prod, _ := startWithRelay(t, SMTPConfiguration{Addr: p.Addr(), From: "abuse@isp.example", StartTLS: true,
		ServerName: p.ServerName(), CAFile: p.CertFile(), Username: p.User(), Password: "wrong", Timeout: 10 * time.Second, Attempts: 3})
	publish(t, prod, zombieAlert("inc-1", alert.StateOpen, t0))
	_, evs := waitCase(t, c, "cust-42", func(_ Case, evs []Event) bool {
		return len(evs) > 1 && evs[len(evs)-1].Type == EventNotifyFailed
	})
	if note := evs[len(evs)-1].Note; !strings.Contains(note, "after 1 attempts") || !strings.Contains(note, "AUTH") {
		t.Errorf("failure note %q, want AUTH refused at the first attempt", note)
	}
	if n := len(p.Messages(t)); n != 0 {
		t.Errorf("%d messages delivered with a wrong password", n)
	}
}

// TestNoticeRetriesThenGivesUp: a relay that does not answer is tried
// smtp.attempts times, then the case says the notice was given up.
func TestNoticeRetriesThenGivesUp(t *testing.T) {
	old := retryWaitScale
	retryWaitScale = 0.001 // a minute becomes 60 ms
	defer func() { retryWaitScale = old }()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	c, prod, _ := startWithRelay(t, SMTPConfiguration{Addr: addr, From: "abuse@isp.example", StartTLS: true, Timeout: time.Second, Attempts: 3})
	publish(t, prod, zombieAlert("inc-1", alert.StateOpen, t0))
	_, evs := waitCase(t, c, "cust-42", func(_ Case, evs []Event) bool {
		return len(evs) > 1 && evs[len(evs)-1].Type == EventNotifyFailed
	})
	if note := evs[len(evs)-1].Note; !strings.Contains(note, "given up after 3 attempts") || !strings.Contains(note, "connection refused") {
		t.Errorf("failure note %q", note)
	}
}
