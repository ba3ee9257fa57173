package sink

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/webhook"
)

// Only http and https URLs are accepted, and the error names the key.
func TestWebhookURLSchemes(t *testing.T) {
	for _, u := range []string{"file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://x/", "javascript:alert(1)",
		"unix:///run/x.sock", "http:///no-host", "//noc.example/hook", "noc.example/hook", ""} {
		err := webhookConfig(webhook.Configuration{Name: "a", URL: u, Secret: "s"}).Validate()
		if err == nil || !strings.Contains(err.Error(), "sink.webhooks[0].url") {
			t.Errorf("url %q: error %v, want one naming sink.webhooks[0].url", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:9/x", "https://noc.example/hook?a=b", "HTTPS://noc.example/"} {
		if err := webhookConfig(webhook.Configuration{Name: "a", URL: u, Secret: "s"}).Validate(); err != nil {
			t.Errorf("url %q: %v", u, err)
		}
	}
}

// A target that redirects (302, or 307 which would keep the POST and its
// body) is not followed: the second receiver never gets the alert, and the
// 3xx is counted and retried like any failure.
func TestWebhookRedirectNotFollowed(t *testing.T) {
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		second := newReceiver(t, "s3cret", nil)
		first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, second.srv.URL+"/stolen", code)
		}))
		t.Cleanup(first.Close)
		msgs, _ := testAlerts(2)
		cfg := webhookConfig(webhook.Configuration{Name: "redirecting", URL: first.URL, Secret: "s3cret", Timeout: time.Second})
		cfg.DrainTimeout = 200 * time.Millisecond
		mem := bus.NewMemory(64)
		reg := prometheus.NewRegistry()
		s, err := New(cfg, Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg, Bus: mem, FlowsTopic: "f", AlertsTopic: "a"})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		p, _ := mem.Producer("a")
		if err := p.Publish(context.Background(), msgs...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "three refused attempts", 10*time.Second, func() bool {
			return webhookMetric(t, reg, "attempts_total", "redirecting", "http_3xx") >= 3
		})
		mem.CloseTopic("a")
		s.Stop()
		if got := second.received(); len(got) != 0 {
			t.Errorf("%d: the redirect's target received %d bodies, want none", code, len(got))
		}
		if got := webhookMetric(t, reg, "delivered_total", "redirecting"); got != 0 {
			t.Errorf("%d: delivered = %g, want 0", code, got)
		}
	}
}
