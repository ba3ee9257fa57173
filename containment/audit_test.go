package containment

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/webhook"
)

// changeReceiver keeps the ids of the changes POSTed to it.
type changeReceiver struct {
	mu  sync.Mutex
	ids []string
	srv *httptest.Server
}

func newChangeReceiver(t *testing.T) *changeReceiver {
	r := &changeReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if !webhook.VerifySignature([]byte("k"), body, req.Header.Get(webhook.SignatureHeader)) {
			t.Errorf("webhook signature does not verify")
		}
		var ch Change
		json.Unmarshal(body, &ch)
		r.mu.Lock()
		r.ids = append(r.ids, ch.ID)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *changeReceiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}

// TestAuditDeadWebhookDoesNotHoldBackClickHouse: a webhook target that
// hangs and one that refuses connections do not keep the changes from
// ClickHouse containment_actions; and since those targets have not got
// the changes, the audit consumer commits nothing, so that an instance
// started after them delivers every change to the targets, now up, and
// one started after that delivers nothing again.
func TestAuditDeadWebhookDoesNotHoldBackClickHouse(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	ctx := context.Background()
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = brokers
	kcfg.FlowsTopic, kcfg.AlertsTopic = testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	kcfg.Partitions = 1
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Grace = 0
	cfg.Topic, cfg.Group = testenv.Name(t, "containment"), testenv.Name(t, "containment")
	t.Cleanup(func() { k.DeleteTopics(context.Background(), kcfg.FlowsTopic, kcfg.AlertsTopic, cfg.Topic) })
	chCfg := clickhousedb.DefaultConfiguration()
	chCfg.Addr, chCfg.Database = testenv.ClickHouseAddr(t), testenv.Name(t, "wsaudit")
	db := chtest.Database(t, chCfg)

	over := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server hears the client hang up
		select {
		case <-r.Context().Done(): // the client gave up
		case <-over:
		}
	}))
	t.Cleanup(hanging.Close)
	t.Cleanup(func() { close(over) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := "http://" + l.Addr().String() + "/hook"
	l.Close() // nothing listens there now: connections are refused
	deps := Dependencies{ClickHouse: db, Webhooks: []webhook.Configuration{
		{Name: "hanging", URL: hanging.URL, Secret: "k", Timeout: 500 * time.Millisecond},
		{Name: "refusing", URL: refusing, Secret: "k", Timeout: 500 * time.Millisecond},
	}}
	a := startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic)

	prod, err := k.Producer(kcfg.AlertsTopic)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	now := time.Now().UTC()
	var msgs []bus.Message
	for i, ip := range []string{"203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5"} {
		al := mkAlert("inc-"+ip, alert.KindSMTPFanout, alert.StateOpen, ip, now.Add(time.Duration(i)*time.Second))
		v, _ := al.Marshal()
		msgs = append(msgs, bus.Message{Key: []byte(ip), Value: v})
	}
	if err := prod.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rows := func() uint64 {
		var n uint64
		db.QueryRow(ctx, "SELECT count() FROM "+chCfg.Database+".containment_actions FINAL").Scan(&n)
		return n
	}
	// Promptly: the targets' timeouts and backoff are not waited for.
	deadline := time.Now().Add(15 * time.Second)
	for rows() != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 changes in containment_actions after 15 s while two webhook targets are down", rows())
		}
		time.Sleep(200 * time.Millisecond)
	}
	a.Stop()

	// The targets come back: a restart delivers them every change, which
	// the audit did not commit while they lacked it.
	up := newChangeReceiver(t)
	up2 := newChangeReceiver(t)
	deps.Webhooks[0].URL, deps.Webhooks[1].URL = up.srv.URL, up2.srv.URL
	b := startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic)
	waitFor(t, "the four changes at the recovered targets", func() bool {
		return len(up.received()) >= 4 && len(up2.received()) >= 4
	})
	time.Sleep(time.Second) // the commit
	b.Stop()
	if n := rows(); n != 4 {
		t.Errorf("%d changes in containment_actions, want 4", n)
	}

	// Delivered everywhere and committed: a third start delivers nothing.
	again := newChangeReceiver(t)
	deps.Webhooks[0].URL, deps.Webhooks[1].URL = again.srv.URL, again.srv.URL
	startOnAlerts(t, cfg, k, deps, kcfg.AlertsTopic)
	time.Sleep(3 * time.Second)
	if got := again.received(); len(got) != 0 {
		t.Errorf("after every target had the changes, a restart delivered %d again: %v", len(got), got)
	}
}

// fastAuditWebhooks makes the audit's webhook policy quick for a test:
// attempts attempts, milliseconds apart.
func fastAuditWebhooks(t *testing.T, attempts int) {
	saved := auditWebhookPolicy
	auditWebhookPolicy.MinBackoff, auditWebhookPolicy.MaxBackoff, auditWebhookPolicy.Attempts =
		5*time.Millisecond, 20*time.Millisecond, attempts
	t.Cleanup(func() { auditWebhookPolicy = saved })
}

// webhookMetric is the value of wormsign_webhook_<name> for containment's
// target, with result (attempts_total) or reason (dropped_total).
func webhookMetric(t *testing.T, reg prometheus.Gatherer, name, target string, extra ...string) float64 {
	t.Helper()
	labels := map[string]string{"component": "containment", "target": target}
	switch name {
	case "attempts_total":
		labels["result"] = extra[0]
	case "dropped_total":
		labels["reason"] = extra[0]
	}
	v, _ := testenv.Metric(t, reg, "wormsign_webhook_"+name, labels)
	return v
}

// fakeConsumer hands out its messages and records the offsets committed.
type fakeConsumer struct {
	msgs chan bus.Message
	mu   sync.Mutex
	last int64 // the highest offset committed; -1 before any
}

func (f *fakeConsumer) Fetch(ctx context.Context) (bus.Message, error) {
	select {
	case m := <-f.msgs:
		return m, nil
	case <-ctx.Done():
		return bus.Message{}, ctx.Err()
	}
}

func (f *fakeConsumer) Commit(_ context.Context, msgs ...bus.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range msgs {
		f.last = max(f.last, m.Offset)
	}
	return nil
}

func (f *fakeConsumer) Close() error { return nil }

func (f *fakeConsumer) committed() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// The audit commits a record once every target is done with it, and every
// record before it: a webhook that gives up is done, one still trying is
// not; tombstones and undecodable records wait their turn too.
func TestAuditCommitsOnceEveryTargetIsDone(t *testing.T) {
	fastAuditWebhooks(t, 3)
	ok := newChangeReceiver(t)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(down.Close)
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-release
	}))
	t.Cleanup(slow.Close)
	reg := prometheus.NewRegistry()
	c, err := New(testConfig(), Dependencies{Bus: bus.NewMemory(8), Registry: reg, Webhooks: []webhook.Configuration{
		{Name: "ok", URL: ok.srv.URL, Secret: "k"},
		{Name: "down", URL: down.URL, Secret: "k"},
		{Name: "slow", URL: slow.URL, Secret: "k", Timeout: time.Minute},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cons := &fakeConsumer{msgs: make(chan bus.Message, 8), last: -1}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); c.runAudit(ctx, cons) }()
	t.Cleanup(func() { cancel(); <-stopped })
	change := func(offset int64, id, ip string) bus.Message {
		body, _ := json.Marshal(Change{ID: id, Event: "containment", Type: "add",
			Entry: Entry{Prefix: netip.MustParsePrefix(ip + "/32"), State: "active", Action: ActionBlockSMTP}})
		return bus.Message{Key: []byte(ip + "/32"), Value: body, Offset: offset}
	}
	cons.msgs <- change(0, "c0", "203.0.113.2")
	cons.msgs <- bus.Message{Key: []byte("203.0.113.9/32"), Offset: 1} // a tombstone
	cons.msgs <- bus.Message{Value: []byte("{not json"), Offset: 2}
	cons.msgs <- change(3, "c3", "203.0.113.3")

	waitFor(t, "both changes at the healthy target and given up by the dead one", func() bool {
		return len(ok.received()) == 2 && webhookMetric(t, reg, "dropped_total", "down", "gave_up") == 2
	})
	time.Sleep(200 * time.Millisecond)
	if got := cons.committed(); got != -1 {
		t.Errorf("committed offset %d while the slow target still has c0 in delivery, want none", got)
	}
	open()
	waitFor(t, "every record committed", func() bool { return cons.committed() == 3 })
	if diff := cmp.Diff([]string{"c0", "c3"}, ok.received()); diff != "" {
		t.Errorf("the healthy target received (-want +got):\n%s", diff)
	}
}
