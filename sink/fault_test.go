package sink

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// flowStream makes bus messages of flows whose bytes field numbers them
// from 0, so that ClickHouse can tell a lost flow from a duplicate one.
type flowStream struct {
	next   uint64
	perMsg int
}

func (s *flowStream) messages(n int) []bus.Message {
	end := time.Now().UTC().Add(-time.Minute)
	out := make([]bus.Message, 0, n)
	for range n {
		subscriber := fmt.Sprintf("203.0.113.%d", 1+s.next%50)
		flows := make([]flow.Flow, s.perMsg)
		for i := range flows {
			flows[i] = smtpFlow(subscriber, fmt.Sprintf("198.18.%d.%d", s.next%200, i), end, s.next)
			s.next++
		}
		out = append(out, flowMessage(subscriber, flows, 0, 0))
	}
	return out
}

func faultLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func startSink(t *testing.T, cfg Configuration, k bus.Bus, kcfg bus.Configuration, ch *clickhousedb.DB) *Component {
	t.Helper()
	s, err := New(cfg, Dependencies{Logger: faultLogger(t), Registry: prometheus.NewRegistry(), Bus: k,
		FlowsTopic: kcfg.FlowsTopic, AlertsTopic: kcfg.AlertsTopic, ClickHouse: ch})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	return s
}

// checkFlows asserts that flows holds each of 0..want-1 exactly once, and
// that the rollup and the ledger agree, the rollup short by at most
// maxShort flows.
func checkFlows(t *testing.T, ch *clickhousedb.DB, want, maxShort uint64) {
	t.Helper()
	db := ch.Database()
	for _, q := range []struct{ what, query string }{
		{"rows", "SELECT count() FROM " + db + ".flows"},
		{"distinct flows", "SELECT uniqExact(bytes) FROM " + db + ".flows"},
		{"highest flow + 1", "SELECT max(bytes) + 1 FROM " + db + ".flows"},
	} {
		if got := count(t, ch, q.query); got != want {
			t.Errorf("%s = %d, want %d", q.what, got, want)
		}
	}
	// A server killed inside an INSERT may have written the flows part
	// and not the rollup's (views are not transactional): the rollup may
	// fall short by what was in flight, never exceed. The ledger may
	// record a message twice (the retry finds it), never miss one.
	rollup := count(t, ch, "SELECT sum(flows) FROM "+db+".flows_1m")
	if rollup > want || rollup < want-maxShort {
		t.Errorf("flows in the rollup = %d, want %d (at most %d short)", rollup, want, maxShort)
	}
	if ledger := count(t, ch, "SELECT sum(rows) FROM "+db+".sink_ledger WHERE source = 'flows'"); ledger < want {
		t.Errorf("rows in the ledger = %d, want >= %d", ledger, want)
	}
}

func waitRows(t *testing.T, ch *clickhousedb.DB, want uint64, timeout time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d flows in ClickHouse", want), timeout, func() bool {
		var n uint64
		err := ch.QueryRow(context.Background(), "SELECT count() FROM "+ch.Database()+".flows").Scan(&n)
		return err == nil && n >= want
	})
}

func faultSinkConfig(t *testing.T) Configuration {
	cfg := DefaultConfiguration()
	cfg.Group = testenv.Name(t, "g")
	cfg.BatchMessages, cfg.FlushInterval, cfg.Workers = 10, 50*time.Millisecond, 2
	cfg.RetryMaxBackoff, cfg.DrainTimeout = 500*time.Millisecond, 5*time.Second
	cfg.Retention = RetentionConfiguration{}
	return cfg
}

// faultFeed publishes numbered flows to a fresh flows topic on the shared
// broker.
type faultFeed struct {
	k      *bus.Kafka
	kcfg   bus.Configuration
	stream *flowStream
	ctx    context.Context
	p      bus.Producer
	t      *testing.T
}

func newFaultFeed(t *testing.T, partitions, flowsPerMessage int, timeout time.Duration) *faultFeed {
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = testenv.KafkaBrokers(t)
	kcfg.FlowsTopic, kcfg.AlertsTopic, kcfg.Partitions = testenv.Name(t, "f"), testenv.Name(t, "a"), partitions
	ctx := waitContext(t, timeout)
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := k.Producer(kcfg.FlowsTopic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &faultFeed{k: k, kcfg: kcfg, stream: &flowStream{perMsg: flowsPerMessage}, ctx: ctx, p: p, t: t}
}

// publish sends batches of ten messages, 20 ms apart.
func (f *faultFeed) publish(batches int) {
	for range batches {
		if err := f.p.Publish(f.ctx, f.stream.messages(10)...); err != nil {
			f.t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ClickHouse killed while the sink writes, then started again: every
// flow arrives once.
func TestFaultClickHouseRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	forEachPrivateClickHouse(t, testFaultClickHouseRestart)
}

func testFaultClickHouseRestart(t *testing.T, server *testenv.Service, addr string) {
	// A short read timeout, so that a frozen server fails writes fast.
	ch := openTestClickHouseTimeout(t, addr, 2*time.Second)
	f := newFaultFeed(t, 4, 25, 4*time.Minute)
	k, kcfg, stream, publish := f.k, f.kcfg, f.stream, f.publish
	s := startSink(t, faultSinkConfig(t), k, kcfg, ch)
	defer s.Stop()

	publish(20)
	waitRows(t, ch, 1, time.Minute)
	server.Kill()
	publish(20) // the sink reads these while ClickHouse is down
	waitFor(t, "failed writes", time.Minute, func() bool { return value(s.metrics.writeErrors.WithLabelValues("flows")) >= 2 })
	time.Sleep(time.Second)
	server.Restart()
	publish(20)
	// Frozen rather than dead: INSERTs sent before the freeze complete on
	// the server after the client gave up on them, and their retries must
	// find them in the ledger.
	waitRows(t, ch, stream.next, 2*time.Minute)
	errs := value(s.metrics.writeErrors.WithLabelValues("flows"))
	// Frozen for 30 s, as a network that stops passing packets without
	// closing connections would leave it.
	server.Signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	publish(20)
	waitFor(t, "writes to fail on the frozen server", time.Minute, func() bool {
		return value(s.metrics.writeErrors.WithLabelValues("flows")) > errs
	})
	time.Sleep(time.Until(frozenAt.Add(30 * time.Second)))
	server.Signal(syscall.SIGCONT)
	t.Logf("server frozen for %s", time.Since(frozenAt).Round(time.Second))
	publish(20)
	waitRows(t, ch, stream.next, 2*time.Minute)
	time.Sleep(2 * time.Second)             // a duplicate written late would show now
	checkFlows(t, ch, stream.next, 2*10*25) // two workers' batches in flight at the kill
	t.Logf("%d flows; write errors %g, duplicates skipped %g", stream.next,
		value(s.metrics.writeErrors.WithLabelValues("flows")), value(s.metrics.duplicates.WithLabelValues("flows")))
}

// Kafka killed while the sink consumes, then started again: every flow
// arrives once, and a new sink in the same group finds nothing left.
func TestFaultKafkaRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	testenv.ForEachClickHouse(t, testFaultKafkaRestart)
}

func testFaultKafkaRestart(t *testing.T, chAddr string) {
	ch := openTestClickHouse(t, chAddr)
	broker, addr := testenv.StartPrivateKafka(t)
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = []string{addr}
	kcfg.FlowsTopic, kcfg.AlertsTopic, kcfg.Partitions = "flows", "alerts", 4
	ctx := waitContext(t, 5*time.Minute)
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := k.Producer(kcfg.FlowsTopic)
	defer p.Close()
	stream := &flowStream{perMsg: 20}
	for range 30 {
		if err := p.Publish(ctx, stream.messages(10)...); err != nil {
			t.Fatal(err)
		}
	}
	// A slow sink, so that Kafka dies in the middle of the stream.
	cfg := faultSinkConfig(t)
	cfg.BatchMessages, cfg.Workers = 3, 1
	s := startSink(t, cfg, k, kcfg, ch)
	waitRows(t, ch, 1, time.Minute)
	broker.Kill()
	var n uint64
	if err := ch.QueryRow(ctx, "SELECT count() FROM "+ch.Database()+".flows").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n >= stream.next {
		t.Fatalf("the sink wrote all %d flows before Kafka stopped; the test proves nothing", n)
	}
	time.Sleep(3 * time.Second)
	broker.Restart()
	for range 30 {
		if err := p.Publish(ctx, stream.messages(10)...); err != nil {
			t.Fatal(err)
		}
	}
	waitRows(t, ch, stream.next, 3*time.Minute)
	time.Sleep(2 * time.Second)
	checkFlows(t, ch, stream.next, 0)
	t.Logf("%d flows, %d written before the kill; commit errors %g, duplicates skipped %g", stream.next, n,
		value(s.metrics.commitErrors.WithLabelValues("flows")), value(s.metrics.duplicates.WithLabelValues("flows")))
	if err := s.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	// Everything written was committed, or is in the ledger: a new member
	// of the group adds nothing.
	s = startSink(t, cfg, k, kcfg, ch)
	time.Sleep(5 * time.Second)
	s.Stop()
	checkFlows(t, ch, stream.next, 0)
}

// With the in-process bus a down ClickHouse pushes back on the producer
// (the collector, which then counts drops at the UDP edge) instead of
// buffering without bound, and nothing is lost or doubled once it returns.
func TestFaultBackPressureInMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	forEachPrivateClickHouse(t, testFaultBackPressureInMemory)
}

func testFaultBackPressureInMemory(t *testing.T, server *testenv.Service, addr string) {
	ch := openTestClickHouseTimeout(t, addr, 2*time.Second)
	mem := bus.NewMemory(16)
	cfg := faultSinkConfig(t)
	cfg.DrainTimeout = time.Minute // a server restarting beside other tests may be slow
	kcfg := bus.Configuration{FlowsTopic: "flows", AlertsTopic: "alerts"}
	s := startSink(t, cfg, mem, kcfg, ch)
	p, _ := mem.Producer("flows")
	stream := &flowStream{perMsg: 10}
	ctx := waitContext(t, 3*time.Minute)
	if err := p.Publish(ctx, stream.messages(50)...); err != nil {
		t.Fatal(err)
	}
	waitRows(t, ch, 1, time.Minute)
	server.Kill()
	// The bus queue (16), the fetcher's hand-over (64), the batch being
	// gathered (10) and the batches the workers and the committer hold
	// (up to 4 of 10): the producer must be held back within 200 messages.
	blocked := false
	for range 20 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := p.Publish(pctx, stream.messages(10)...)
		cancel()
		if err != nil {
			blocked = true
			break
		}
	}
	if !blocked {
		t.Fatalf("published %d flows while ClickHouse was down without being held back", stream.next)
	}
	server.Restart()
	s.Drain()
	s.Stop()
	// The last Publish timed out part way: the flows it queued arrived,
	// those it did not were never sent. Every flow that arrived must be
	// there once, and they must be a prefix of the stream.
	n := count(t, ch, "SELECT count() FROM "+ch.Database()+".flows")
	if n == 0 || n > stream.next {
		t.Fatalf("%d flows in ClickHouse, %d offered", n, stream.next)
	}
	checkFlows(t, ch, n, 2*10*10)
	t.Logf("producer held back after %d flows; %d arrived", stream.next, n)
}

// A drain on the in-process bus that begins with every message read and
// ClickHouse down waits the whole drain timeout, not the short hand-over a
// rebalance gets: no next owner would read what it gave up.
func TestFaultDrainOutlastsHandover(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	server, addr := testenv.StartPrivateClickHouse18(t) // the pipeline's logic, not the server's
	ch := openTestClickHouseTimeout(t, addr, 2*time.Second)
	mem := bus.NewMemory(16)
	cfg := faultSinkConfig(t)
	cfg.DrainTimeout = time.Minute
	kcfg := bus.Configuration{FlowsTopic: "flows", AlertsTopic: "alerts"}
	s := startSink(t, cfg, mem, kcfg, ch)
	p, _ := mem.Producer("flows")
	stream := &flowStream{perMsg: 10}
	ctx := waitContext(t, 3*time.Minute)
	if err := p.Publish(ctx, stream.messages(5)...); err != nil {
		t.Fatal(err)
	}
	// Killed once the first INSERT has fed every view too: the flows
	// table shows its rows while the views are still being written, and
	// a kill then leaves the rollup short (checkFlows allows that only
	// where a test says so; this one is about the drain).
	db := ch.Database()
	waitFor(t, "the first batch in flows, the rollup and the ledger", time.Minute, func() bool {
		return count(t, ch, "SELECT count() FROM "+db+".flows") >= stream.next &&
			count(t, ch, "SELECT sum(flows) FROM "+db+".flows_1m") >= stream.next &&
			count(t, ch, "SELECT sum(rows) FROM "+db+".sink_ledger WHERE source = 'flows'") >= stream.next
	})
	server.Kill()
	// Fewer messages than the pipeline holds: the bus's queue is empty
	// once the sink has read them, so the drain finds the topic's end at
	// once while their batch cannot be written.
	if err := p.Publish(ctx, stream.messages(3)...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sink to read the messages", 10*time.Second, func() bool {
		return value(s.metrics.writeErrors.WithLabelValues("flows")) > 0
	})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		s.Drain()
	}()
	time.Sleep(rebalanceHandover + 2*time.Second)
	server.Restart()
	<-drained
	s.Stop()
	checkFlows(t, ch, stream.next, 0)
	if n := value(s.metrics.givenUp.WithLabelValues("flows")); n != 0 {
		t.Errorf("%g messages given up", n)
	}
}

// Two sinks in one group while the flows stream in: a second one joins
// (the partitions are split between them), then the first stops (the
// second takes them all), then the first comes back. Every flow is in
// ClickHouse once; the partitions handed over mid-batch are re-read by
// their next owner and the ledger skips what was written.
func TestFaultSinksRebalance(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	testenv.ForEachClickHouse(t, testFaultSinksRebalance)
}

func testFaultSinksRebalance(t *testing.T, chAddr string) {
	ch := openTestClickHouse(t, chAddr)
	f := newFaultFeed(t, 6, 20, 5*time.Minute)
	k, kcfg, stream, publish := f.k, f.kcfg, f.stream, f.publish
	cfg := faultSinkConfig(t)
	cfg.BatchMessages, cfg.Workers = 5, 1 // slow: batches are in flight at each rebalance
	a := startSink(t, cfg, k, kcfg, ch)
	publish(20)
	waitRows(t, ch, 1, time.Minute)
	b := startSink(t, cfg, k, kcfg, ch)
	publish(40)
	if err := a.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	publish(40)
	a = startSink(t, cfg, k, kcfg, ch)
	publish(20)
	waitRows(t, ch, stream.next, 3*time.Minute)
	time.Sleep(3 * time.Second) // a duplicate written late would show now
	checkFlows(t, ch, stream.next, 0)
	for name, s := range map[string]*Component{"a": a, "b": b} {
		t.Logf("sink %s: committed %g messages, abandoned %g, duplicates skipped %g, commit errors %g", name,
			value(s.metrics.committed.WithLabelValues("flows")), value(s.metrics.abandoned.WithLabelValues("flows")),
			value(s.metrics.duplicates.WithLabelValues("flows")), value(s.metrics.commitErrors.WithLabelValues("flows")))
	}
	if value(b.metrics.committed.WithLabelValues("flows")) == 0 {
		t.Error("the second sink committed nothing: the partitions were never split")
	}
	t.Logf("%d flows in %d messages, each in ClickHouse once", stream.next, stream.next/20)
	a.Stop()
	b.Stop()
}
