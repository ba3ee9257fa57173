package webhook

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/internal/testenv"
)

// receiver is a target on loopback that checks signatures and keeps the
// bodies it accepted. mode decides, per request (from 1), whether to
// answer 500 ("fail"), hang past the client's timeout ("hang"), redirect
// ("redirect") or accept ("").
type receiver struct {
	t      *testing.T
	secret string
	mode   func(try int) string
	srv    *httptest.Server
	over   chan struct{}

	mu      sync.Mutex
	tries   int
	got     []string
	headers []http.Header
}

func newReceiver(t *testing.T, secret string, mode func(int) string) *receiver {
	r := &receiver{t: t, secret: secret, mode: mode, over: make(chan struct{})}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	t.Cleanup(func() { close(r.over) })
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	if !VerifySignature([]byte(r.secret), body, req.Header.Get(SignatureHeader)) {
		r.t.Errorf("bad signature %q for body %s", req.Header.Get(SignatureHeader), body)
	}
	r.mu.Lock()
	r.tries++
	mode := ""
	if r.mode != nil {
		mode = r.mode(r.tries)
	}
	r.mu.Unlock()
	switch mode {
	case "fail":
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	case "hang":
		select {
		case <-req.Context().Done():
		case <-r.over:
		}
		return
	case "redirect":
		http.Redirect(w, req, "http://127.0.0.1:9/stolen", http.StatusTemporaryRedirect)
		return
	}
	r.mu.Lock()
	r.got = append(r.got, string(body))
	r.headers = append(r.headers, req.Header.Clone())
	r.mu.Unlock()
}

func (r *receiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// results records what Done reported, per event id.
type results struct {
	mu  sync.Mutex
	ids []string
	res []Result
}

func (rs *results) event(id string) Event {
	h := http.Header{}
	h.Set("X-Test-Id", id)
	return Event{Body: []byte(`{"id":"` + id + `"}`), ID: id, Header: h, Done: func(r Result) {
		rs.mu.Lock()
		rs.ids = append(rs.ids, id)
		rs.res = append(rs.res, r)
		rs.mu.Unlock()
	}}
}

func (rs *results) get() ([]string, []Result) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]string(nil), rs.ids...), append([]Result(nil), rs.res...)
}

func start(t *testing.T, r *receiver, timeout time.Duration, p Policy, reg prometheus.Registerer, component string) *Deliverer {
	t.Helper()
	d, err := New(Configuration{Name: "t", URL: r.srv.URL + "/hook", Secret: r.secret, Timeout: timeout}, p,
		Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg, Component: component})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(func() { d.Stop() })
	return d
}

func metric(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := testenv.Metric(t, reg, name, labels)
	if !ok {
		return -1
	}
	return v
}

var fast = Policy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Queue: 100}

// A target that fails, then hangs, then accepts gets every event, in
// order, once, with the headers of the event and of every delivery; each
// is reported delivered in order, and the metrics say what happened.
func TestDeliverInOrderWithRetries(t *testing.T) {
	r := newReceiver(t, "s3cret", func(try int) string {
		switch {
		case try%4 == 1:
			return "fail"
		case try%4 == 2:
			return "hang"
		}
		return ""
	})
	reg := prometheus.NewRegistry()
	d := start(t, r, 100*time.Millisecond, fast, reg, "sink")
	var rs results
	var want []string
	for i := range 6 {
		ev := rs.event(fmt.Sprintf("e%d", i))
		want = append(want, ev.ID)
		if err := d.Enqueue(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "six events", func() bool { ids, _ := rs.get(); return len(ids) == 6 })
	ids, res := rs.get()
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("done (-want +got):\n%s", diff)
	}
	for i, x := range res {
		if x != Delivered {
			t.Errorf("%s: %s, want delivered", ids[i], x)
		}
	}
	var bodies []string
	for _, id := range want {
		bodies = append(bodies, `{"id":"`+id+`"}`)
	}
	if diff := cmp.Diff(bodies, r.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	r.mu.Lock()
	h := r.headers[0]
	r.mu.Unlock()
	for k, v := range map[string]string{"X-Test-Id": "e0", AttemptHeader: "3", "Content-Type": "application/json", "User-Agent": "wormsign-sink"} {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	l := func(kv ...string) map[string]string {
		m := map[string]string{"component": "sink", "target": "t"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"wormsign_webhook_attempts_total", l("result", "ok"), 6},
		// Tries 1, 5, 9 fail, 2, 6, 10 hang: every other event is retried.
		{"wormsign_webhook_attempts_total", l("result", "http_5xx"), 3},
		{"wormsign_webhook_attempts_total", l("result", "timeout"), 3},
		{"wormsign_webhook_attempt_seconds", l(), 12},
		{"wormsign_webhook_delivered_total", l(), 6},
		{"wormsign_webhook_retrying", l(), 0},
		{"wormsign_webhook_queued", l(), 0},
		{"wormsign_webhook_dropped_total", l("reason", "gave_up"), 0},
		{"wormsign_webhook_dropped_total", l("reason", "queue_full"), 0},
	} {
		if got := metric(t, reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %g, want %g", tc.name, tc.labels, got, tc.want)
		}
	}
	if got := metric(t, reg, "wormsign_webhook_last_success_timestamp_seconds", l()); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success at %g", got)
	}
}

// With Policy.Attempts, an event that fails that often is dropped,
// reported GaveUp and counted, and the next one goes on; a refused
// connection and a redirect (not followed) are failures like a 5xx.
func TestGiveUpAfterAttempts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := "http://" + l.Addr().String()
	l.Close()
	redirecting := newReceiver(t, "k", func(int) string { return "redirect" })
	for name, url := range map[string]string{"refused": refusing, "redirect": redirecting.srv.URL} {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p := fast
			p.Attempts = 3
			d, err := New(Configuration{Name: "t", URL: url, Secret: "k", Timeout: time.Second}, p,
				Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg, Component: "containment"})
			if err != nil {
				t.Fatal(err)
			}
			d.Start()
			defer d.Stop()
			var rs results
			for _, id := range []string{"a", "b"} {
				d.Enqueue(context.Background(), rs.event(id))
			}
			waitFor(t, "both given up", func() bool { ids, _ := rs.get(); return len(ids) == 2 })
			ids, res := rs.get()
			if diff := cmp.Diff([]string{"a", "b"}, ids); diff != "" {
				t.Errorf("done (-want +got):\n%s", diff)
			}
			if res[0] != GaveUp || res[1] != GaveUp {
				t.Errorf("results %v, want gave_up twice", res)
			}
			result := map[string]string{"refused": "error", "redirect": "http_3xx"}[name]
			labels := map[string]string{"component": "containment", "target": "t", "result": result}
			if got := metric(t, reg, "wormsign_webhook_attempts_total", labels); got != 6 {
				t.Errorf("attempts %v = %g, want 6", labels, got)
			}
			labels = map[string]string{"component": "containment", "target": "t", "reason": "gave_up"}
			if got := metric(t, reg, "wormsign_webhook_dropped_total", labels); got != 2 {
				t.Errorf("dropped %v = %g, want 2", labels, got)
			}
			if got := metric(t, reg, "wormsign_webhook_retrying", map[string]string{"component": "containment", "target": "t"}); got != 1 {
				t.Errorf("retrying = %g, want 1", got)
			}
		})
	}
}

// A full queue drops its oldest event (reported Overflowed from Enqueue,
// which does not wait) with Policy.DropOldest, and else makes Enqueue wait
// for room.
func TestFullQueue(t *testing.T) {
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
	reg := prometheus.NewRegistry()
	p := fast
	p.Queue, p.DropOldest = 3, true
	d := start(t, r, time.Second, p, reg, "sink")
	var rs results
	d.Enqueue(context.Background(), rs.event("e0"))
	waitFor(t, "e0 in delivery", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.tries > 0 })
	for i := 1; i < 8; i++ {
		if err := d.Enqueue(context.Background(), rs.event(fmt.Sprintf("e%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, reg, "wormsign_webhook_queued", map[string]string{"component": "sink", "target": "t"}); got != 3 {
		t.Errorf("queued = %g, want 3", got)
	}
	if got := metric(t, reg, "wormsign_webhook_dropped_total", map[string]string{"component": "sink", "target": "t", "reason": "queue_full"}); got != 4 {
		t.Errorf("dropped = %g, want 4", got)
	}
	mu.Lock()
	up = true
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ids, res := rs.get()
	want := []string{"e1", "e2", "e3", "e4", "e0", "e5", "e6", "e7"}
	wantRes := []Result{Overflowed, Overflowed, Overflowed, Overflowed, Delivered, Delivered, Delivered, Delivered}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("done (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantRes, res); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}

	// Without DropOldest, Enqueue waits.
	mu.Lock()
	up = false
	mu.Unlock()
	p.DropOldest = false
	d2, err := New(Configuration{Name: "t2", URL: r.srv.URL, Secret: "k"}, p,
		Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg, Component: "sink"})
	if err != nil {
		t.Fatal(err)
	}
	d2.Start()
	defer d2.Stop()
	var rs2 results
	for i := range 4 { // one in delivery, three queued
		d2.Enqueue(context.Background(), rs2.event(strconv.Itoa(i)))
		if i == 0 {
			waitFor(t, "0 in delivery", func() bool {
				return metric(t, reg, "wormsign_webhook_queued", map[string]string{"component": "sink", "target": "t2"}) == 0
			})
		}
	}
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := d2.Enqueue(short, rs2.event("4")); err != context.DeadlineExceeded {
		t.Errorf("enqueue on a full queue: %v, want to wait until the deadline", err)
	}
	mu.Lock()
	up = true
	mu.Unlock()
	if err := d2.Enqueue(context.Background(), rs2.event("5")); err != nil {
		t.Fatal(err)
	}
	if err := d2.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := rs2.get(); !cmp.Equal(ids, []string{"0", "1", "2", "3", "5"}) {
		t.Errorf("done %v, want 0 1 2 3 5", ids)
	}
}

// Stop cuts the attempt in flight and leaves what is queued unreported;
// Enqueue fails after it.
func TestStopLeavesEvents(t *testing.T) {
	r := newReceiver(t, "k", func(int) string { return "hang" })
	reg := prometheus.NewRegistry()
	d := start(t, r, time.Minute, fast, reg, "sink")
	var rs results
	for i := range 3 {
		d.Enqueue(context.Background(), rs.event(strconv.Itoa(i)))
	}
	waitFor(t, "the first attempt", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.tries > 0 })
	begin := time.Now()
	d.Stop()
	if time.Since(begin) > 5*time.Second {
		t.Errorf("Stop took %s", time.Since(begin))
	}
	if ids, _ := rs.get(); len(ids) != 0 {
		t.Errorf("reported %v, want nothing", ids)
	}
	if err := d.Enqueue(context.Background(), rs.event("late")); err != ErrStopped {
		t.Errorf("enqueue after stop: %v", err)
	}
	if got := metric(t, reg, "wormsign_webhook_queued", map[string]string{"component": "sink", "target": "t"}); got != 0 {
		t.Errorf("queued after stop = %g, want 0", got)
	}
}

// Two components' deliverers to targets of the same name share one
// registry (as in `wormsign run`): the component label tells them apart.
func TestComponentsShareRegistry(t *testing.T) {
	r := newReceiver(t, "k", nil)
	reg := prometheus.NewRegistry()
	for _, c := range []string{"sink", "containment"} {
		d := start(t, r, time.Second, fast, reg, c)
		var rs results
		d.Enqueue(context.Background(), rs.event(c))
		waitFor(t, c, func() bool { ids, _ := rs.get(); return len(ids) == 1 })
	}
	for _, c := range []string{"sink", "containment"} {
		if got := metric(t, reg, "wormsign_webhook_delivered_total", map[string]string{"component": c, "target": "t"}); got != 1 {
			t.Errorf("%s delivered = %g, want 1", c, got)
		}
	}
	if _, err := New(Configuration{Name: "t", URL: "gopher://x", Secret: "k"}, fast, Dependencies{Component: "sink"}); err == nil {
		t.Error("New accepted a gopher URL")
	}
	if _, err := New(Configuration{Name: "t", URL: "http://x", Secret: "k"}, fast, Dependencies{}); err == nil {
		t.Error("New accepted no component")
	}
}
