package sink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/webhook"
)

// webhookMetric is the value of the webhook metric name (without its
// wormsign_webhook_ prefix) of the sink's target, and result for
// attempts_total or reason for dropped_total.
func webhookMetric(t *testing.T, reg prometheus.Gatherer, name, target string, extra ...string) float64 {
	t.Helper()
	labels := map[string]string{"component": "sink", "target": target}
	switch name {
	case "attempts_total":
		labels["result"] = extra[0]
	case "dropped_total":
		labels["reason"] = extra[0]
	}
	v, _ := testenv.Metric(t, reg, "wormsign_webhook_"+name, labels)
	return v
}

// receiver is a webhook endpoint on loopback that checks signatures and
// keeps the bodies it accepted. fail decides, per request, whether to
// answer 500 ("fail"), hang past the client's timeout ("hang") or accept.
type receiver struct {
	t      *testing.T
	secret string
	mu     sync.Mutex
	got    []string
	tries  int
	fail   func(try int) string
	srv    *httptest.Server
}

func newReceiver(t *testing.T, secret string, fail func(int) string) *receiver {
	r := &receiver{t: t, secret: secret, fail: fail}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	if !webhook.VerifySignature([]byte(r.secret), body, req.Header.Get(webhook.SignatureHeader)) {
		r.t.Errorf("bad signature %q for body %s", req.Header.Get(webhook.SignatureHeader), body)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if a, err := alert.Unmarshal(body); err != nil || a.ID != req.Header.Get(AlertIDHeader) {
		r.t.Errorf("body %s does not match %s %q", body, AlertIDHeader, req.Header.Get(AlertIDHeader))
	}
	r.mu.Lock()
	r.tries++
	mode := ""
	if r.fail != nil {
		mode = r.fail(r.tries)
	}
	r.mu.Unlock()
	switch mode {
	case "fail":
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	case "hang":
		<-req.Context().Done() // the sink gives up first
		return
	}
	r.mu.Lock()
	r.got = append(r.got, string(body))
	r.mu.Unlock()
}

func (r *receiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testAlerts(n int) ([]bus.Message, []string) {
	var msgs []bus.Message
	var bodies []string
	start := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for i := range n {
		a := alert.Alert{ID: fmt.Sprintf("incident-%d", i/3), Kind: alert.KindSMTPFanout,
			State:        []string{alert.StateOpen, alert.StateUpdate, alert.StateResolved}[i%3],
			SubscriberIP: fmt.Sprintf("203.0.113.%d", 10+i/3), WindowStart: start, WindowEnd: start.Add(5 * time.Minute),
			FirstSeen: start, LastSeen: start.Add(4 * time.Minute), DistinctDsts: uint64(25 + i), Flows: uint64(40 + i), Score: 1.25,
			Exporter: "127.0.0.1", Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.1"}, Threshold: 25, Window: "5m0s"}}
		b, _ := a.Marshal()
		msgs = append(msgs, bus.Message{Key: []byte(a.SubscriberIP), Value: b})
		bodies = append(bodies, string(b))
	}
	return msgs, bodies
}

func webhookConfig(targets ...webhook.Configuration) Configuration {
	cfg := DefaultConfiguration()
	cfg.Group = "wh"
	cfg.Webhooks = targets
	cfg.WebhookMinBackoff, cfg.WebhookMaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cfg.Retention = RetentionConfiguration{}
	return cfg
}

// A target that fails, then times out, then recovers gets every alert,
// in order, exactly as sent; a healthy target meanwhile is not held back.
func TestWebhookRetriesWithoutBlockingOthers(t *testing.T) {
	const n = 12
	msgs, bodies := testAlerts(n)
	steady := newReceiver(t, "s3cret-a", nil)
	flaky := newReceiver(t, "s3cret-b", func(try int) string {
		switch {
		case len(steady.received()) < n:
			return "fail" // down until the other target has everything
		case try%4 == 1:
			return "hang"
		case try%4 == 2:
			return "fail"
		}
		return ""
	})
	cfg := webhookConfig(
		webhook.Configuration{Name: "steady", URL: steady.srv.URL, Secret: "s3cret-a", Timeout: time.Second},
		webhook.Configuration{Name: "flaky", URL: flaky.srv.URL + "/hook", Secret: "s3cret-b", Timeout: 150 * time.Millisecond},
	)
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
	waitFor(t, "both targets", 30*time.Second, func() bool { return len(flaky.received()) == n })
	mem.CloseTopic("a")
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*receiver{"steady": steady, "flaky": flaky} {
		if diff := cmp.Diff(bodies, r.received()); diff != "" {
			t.Errorf("%s received (-sent +got):\n%s", name, diff)
		}
	}
	for _, tc := range []struct {
		target, result string
		atLeast        float64
	}{{"flaky", "http_5xx", 2}, {"flaky", "timeout", 2}, {"flaky", "ok", n}, {"steady", "ok", n}} {
		got := webhookMetric(t, reg, "attempts_total", tc.target, tc.result)
		if got < tc.atLeast {
			t.Errorf("%s attempts with result %s = %g, want >= %g", tc.target, tc.result, got, tc.atLeast)
		}
	}
	if got := webhookMetric(t, reg, "delivered_total", "steady"); got != n {
		t.Errorf("steady delivered = %g, want %d", got, n)
	}
}

// With Kafka the retry position of a target outlives the sink: alerts a
// dead target missed arrive after a restart, and a healthy target does
// not get them again.
func TestWebhookPositionSurvivesRestart(t *testing.T) {
	const n = 9
	msgs, bodies := testAlerts(n)
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = testenv.KafkaBrokers(t)
	kcfg.FlowsTopic, kcfg.AlertsTopic, kcfg.Partitions = testenv.Name(t, "f"), testenv.Name(t, "a"), 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := k.Producer(kcfg.AlertsTopic)
	defer p.Close()
	if err := p.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	healthy := newReceiver(t, "h", nil)
	var down sync.Mutex
	isDown := true
	dead := newReceiver(t, "d", func(int) string {
		down.Lock()
		defer down.Unlock()
		if isDown {
			return "fail"
		}
		return ""
	})
	cfg := webhookConfig(
		webhook.Configuration{Name: "healthy", URL: healthy.srv.URL, Secret: "h", Timeout: time.Second},
		webhook.Configuration{Name: "dead", URL: dead.srv.URL, Secret: "d", Timeout: time.Second},
	)
	cfg.Group = testenv.Name(t, "g")
	var reg *prometheus.Registry
	start := func() *Component {
		reg = prometheus.NewRegistry()
		s, err := New(cfg, Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg,
			Bus: k, FlowsTopic: kcfg.FlowsTopic, AlertsTopic: kcfg.AlertsTopic})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		return s
	}
	s := start()
	waitFor(t, "the healthy target", time.Minute, func() bool { return len(healthy.received()) == n })
	waitFor(t, "retries at the dead target", time.Minute, func() bool {
		return webhookMetric(t, reg, "attempts_total", "dead", "http_5xx") >= 3
	})
	time.Sleep(500 * time.Millisecond) // let the last commit of the healthy target land
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	down.Lock()
	isDown = false
	down.Unlock()
	s = start()
	waitFor(t, "the recovered target", time.Minute, func() bool { return len(dead.received()) == n })
	time.Sleep(time.Second) // time for a wrong re-delivery to the healthy target to show
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(bodies, dead.received()); diff != "" {
		t.Errorf("recovered target received (-sent +got):\n%s", diff)
	}
	if diff := cmp.Diff(bodies, healthy.received()); diff != "" {
		t.Errorf("healthy target received (-sent +got):\n%s", diff)
	}
}

// The targets are validated under the key sink.webhooks (the text form and
// the signature are tested in package webhook).
func TestWebhookConfiguration(t *testing.T) {
	bad := []Configuration{
		webhookConfig(webhook.Configuration{Name: "a", URL: "ftp://x", Secret: "s"}),
		webhookConfig(webhook.Configuration{Name: "a", URL: "http://x", Secret: ""}),
		webhookConfig(webhook.Configuration{Name: "a b", URL: "http://x", Secret: "s"}),
		webhookConfig(webhook.Configuration{Name: "a", URL: "http://x", Secret: "s"}, webhook.Configuration{Name: "a", URL: "http://y", Secret: "s"}),
	}
	for i, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("bad configuration %d validated", i)
		}
	}
	if err := webhookConfig(webhook.Configuration{Name: "a", URL: "http://x", Secret: "s"}).Validate(); err != nil {
		t.Errorf("good configuration: %v", err)
	}
}

// Without Kafka a target that is down must not stall the alerts topic (the
// in-process bus blocks its producer on a full queue): its backlog keeps
// reading, holds webhook_backlog alerts and drops the oldest beyond.
func TestWebhookBacklogInMemory(t *testing.T) {
	const n, held = 50, 20
	msgs, bodies := testAlerts(n)
	var mu sync.Mutex
	up := false
	r := newReceiver(t, "k", func(int) string {
		mu.Lock()
		defer mu.Unlock()
		if up {
			return ""
		}
		return "fail"
	})
	cfg := webhookConfig(webhook.Configuration{Name: "down", URL: r.srv.URL, Secret: "k", Timeout: time.Second})
	cfg.WebhookBacklog = held
	mem := bus.NewMemory(8)
	reg := prometheus.NewRegistry()
	s, err := New(cfg, Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg, Bus: mem, FlowsTopic: "f", AlertsTopic: "a"})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	p, _ := mem.Producer("a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range msgs {
		// One at a time, so that the first alert is in delivery before
		// the backlog fills: it is the one retried.
		if err := p.Publish(ctx, m); err != nil {
			t.Fatalf("publishing while the target is down: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, "the backlog to settle", 10*time.Second, func() bool {
		return webhookMetric(t, reg, "dropped_total", "down", "queue_full") == n-held-1
	})
	mu.Lock()
	up = true
	mu.Unlock()
	want := append([]string{bodies[0]}, bodies[n-held:]...)
	waitFor(t, "the held alerts", 30*time.Second, func() bool { return len(r.received()) == len(want) })
	mem.CloseTopic("a")
	s.Stop()
	if diff := cmp.Diff(want, r.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
}
