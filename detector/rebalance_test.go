package detector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// seen is what the rebalance test compares of an alert.
type seen struct {
	ID, State string
	Distinct  uint64
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRebalanceKeepsIncidents runs two detector instances in one consumer
// group on the real Kafka: A alone, then B joins (a rebalance), then A
// leaves (another). The alerts on the alerts topic must be exactly those of
// one engine per partition fed without interruption: no incident lost, none
// opened twice, ids stable across owners.
func TestRebalanceKeepsIncidents(t *testing.T) {
	rebalance(t, rebalanceCase{lookback: time.Hour, exact: true})
}

// TestRebalanceUnderLoad is the same with flows arriving while the group
// rebalances: what an instance finished before losing a partition is
// committed, the next owner rebuilds up to it and goes on from there.
func TestRebalanceUnderLoad(t *testing.T) {
	rebalance(t, rebalanceCase{lookback: time.Hour, exact: true, concurrent: true})
}

// TestRebalanceAfterLookback is the same with incidents older than the
// rebuild's read-back: the windows restart from what the lookback holds,
// but the incidents carry on under their ids (read back from the alerts
// topic) and resolve once: one open, one resolved, one id per zombie.
func TestRebalanceAfterLookback(t *testing.T) {
	rebalance(t, rebalanceCase{lookback: time.Second, beforeJoin: 2500 * time.Millisecond})
}

// TestRebalanceReadBacksFail is TestRebalanceKeepsIncidents with every
// new owner's read-backs failing at first, as they do for the seconds
// after a broker is lost and before its partitions have new leaders: the
// rebuild breaks off after one message, twice per partition, and the
// read-back of open incidents fails twice per assignment. Detecting before
// they succeed would restart the windows empty.
func TestRebalanceReadBacksFail(t *testing.T) {
	rebalance(t, rebalanceCase{lookback: time.Hour, exact: true, readBackFailures: 2})
}

// TestRebalanceIncidentReadBackFails is TestRebalanceAfterLookback with the
// same failures: the incidents are only on the alerts topic, and an owner
// that gave up reading them would open each again under a new id.
func TestRebalanceIncidentReadBackFails(t *testing.T) {
	rebalance(t, rebalanceCase{lookback: time.Second, beforeJoin: 2500 * time.Millisecond, readBackFailures: 2})
}

type rebalanceCase struct {
	lookback, beforeJoin time.Duration
	exact                bool // alerts equal to an uninterrupted run
	concurrent           bool // publish while the group rebalances
	// readBackFailures is how many times each read-back of a new
	// assignment fails before it works (faultyReadBacks).
	readBackFailures int
}

var errInjected = errors.New("injected: the leader is not available")

// faultyReadBacks is the Kafka bus with the read-backs of each new
// assignment failing its first failures times: a rebuild of a partition
// after delivering one message, the read-back of the alerts topic before
// reading anything.
type faultyReadBacks struct {
	*bus.Kafka
	failures int

	mu                      sync.Mutex
	generation              int32
	rebuildFails, sinceFail map[int]int // per partition; sinceFail has one key, 0
}

func (f *faultyReadBacks) fail(counts map[int]int, key int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if counts[key] >= f.failures {
		return false
	}
	counts[key]++
	return true
}

func (f *faultyReadBacks) assigned(generation int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rebuildFails == nil || generation != f.generation {
		f.generation, f.rebuildFails, f.sinceFail = generation, map[int]int{}, map[int]int{}
	}
}

func (f *faultyReadBacks) ReadSince(ctx context.Context, topic string, since time.Time, fn func(bus.Message) error) error {
	if f.fail(f.sinceFail, 0) {
		return errInjected
	}
	return f.Kafka.ReadSince(ctx, topic, since, fn)
}

func (f *faultyReadBacks) Partitioned(topic, group string) (bus.GroupConsumer, error) {
	g, err := f.Kafka.Partitioned(topic, group)
	return faultyGroup{g, f}, err
}

type faultyGroup struct {
	bus.GroupConsumer
	f *faultyReadBacks
}

func (g faultyGroup) Consume(ctx context.Context, handle func(context.Context, bus.Claim)) error {
	return g.GroupConsumer.Consume(ctx, func(ctx context.Context, c bus.Claim) {
		g.f.assigned(c.Generation())
		handle(ctx, faultyClaim{c, g.f})
	})
}

type faultyClaim struct {
	bus.Claim
	f *faultyReadBacks
}

func (c faultyClaim) ReadBack(ctx context.Context, since time.Time, fn func(bus.Message) error) error {
	if !c.f.fail(c.f.rebuildFails, c.Partition()) {
		return c.Claim.ReadBack(ctx, since, fn)
	}
	err := c.Claim.ReadBack(ctx, since, func(m bus.Message) error {
		if err := fn(m); err != nil {
			return err
		}
		return errInjected // after one message
	})
	if err == nil {
		err = errInjected // there was nothing to read back
	}
	return err
}

func rebalance(t *testing.T, tc rebalanceCase) {
	const partitions = 4
	bcfg := bus.DefaultConfiguration()
	bcfg.Brokers = testenv.KafkaBrokers(t)
	bcfg.FlowsTopic = testenv.Name(t, "flows")
	bcfg.AlertsTopic = testenv.Name(t, "alerts")
	bcfg.Partitions = partitions
	bcfg.Linger = 5 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := bus.NewKafka(ctx, bcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.DeleteTopics(context.Background(), bcfg.FlowsTopic, bcfg.AlertsTopic) })
	cfg := testConfig()
	cfg.Group = testenv.Name(t, "detector")
	cfg.IdleAdvance = time.Hour // event time from flows only: deterministic
	cfg.CommitInterval = 50 * time.Millisecond
	cfg.RebuildLookback = tc.lookback

	var instanceBus bus.Bus = k
	if tc.readBackFailures > 0 {
		instanceBus = &faultyReadBacks{Kafka: k, failures: tc.readBackFailures}
	}
	newInstance := func(name string) *Component {
		c, err := New(cfg, Dependencies{
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)).With("instance", name),
			Registry: prometheus.NewRegistry(), Bus: instanceBus,
			FlowsTopic: bcfg.FlowsTopic, AlertsTopic: bcfg.AlertsTopic,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Alerts as they arrive, per subscriber.
	got := map[string][]seen{}
	total := 0
	alertsIn, _ := k.Consumer(bcfg.AlertsTopic, testenv.Name(t, "reader"))
	defer alertsIn.Close()
	arrived := make(chan alert.Alert, 1024)
	go func() {
		for {
			m, err := alertsIn.Fetch(ctx)
			if err != nil {
				close(arrived)
				return
			}
			a, err := alert.Unmarshal(m.Value)
			if err == nil {
				arrived <- a
			}
		}
	}()
	drain := func() {
		for {
			select {
			case a, ok := <-arrived:
				if !ok {
					return
				}
				got[a.SubscriberIP] = append(got[a.SubscriberIP], seen{a.ID, a.State, a.DistinctDsts})
				total++
			default:
				return
			}
		}
	}

	// The reference: one engine per partition, fed the same messages in
	// the same per-partition order, never interrupted.
	ref := map[int]*Engine{}
	want := map[string][]seen{}
	wantTotal := 0
	balancer := &kafka.Murmur2Balancer{}
	ids := make([]int, partitions)
	for i := range ids {
		ids[i] = i
	}
	flowsOut, _ := k.Producer(bcfg.FlowsTopic)
	defer flowsOut.Close()
	var zombies []netip.Addr
	for i := 1; i <= 12; i++ {
		zombies = append(zombies, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}))
	}
	publish := func(phase int, minute float64, port uint16) {
		t.Helper()
		var msgs []bus.Message
		for zi, z := range zombies {
			var fs []flow.Flow
			for d := 0; d < 8; d++ {
				f := smtpFlow(z, phase*100+zi*1000+d, at(minute+float64(d)*0.05), flow.TCPSyn)
				f.DstPort = port
				fs = append(fs, f)
			}
			key := z.AsSlice()
			msgs = append(msgs, bus.Message{Key: key, Value: flow.AppendBatch(nil, fs)})
			p := balancer.Balance(kafka.Message{Key: key}, ids...)
			if ref[p] == nil {
				ref[p] = NewEngine(cfg)
			}
			for i := range fs {
				for _, a := range ref[p].Process(&fs[i]) {
					want[a.SubscriberIP] = append(want[a.SubscriberIP], seen{a.ID, a.State, a.DistinctDsts})
					wantTotal++
				}
			}
		}
		if !tc.concurrent {
			if err := flowsOut.Publish(ctx, msgs...); err != nil {
				t.Fatal(err)
			}
			return
		}
		for _, m := range msgs {
			if err := flowsOut.Publish(ctx, m); err != nil {
				t.Fatal(err)
			}
			time.Sleep(150 * time.Millisecond)
		}
	}
	held := func(cs ...*Component) func() bool {
		return func() bool {
			var all []int
			for _, c := range cs {
				ps := c.Partitions()
				if len(ps) == 0 {
					return false
				}
				all = append(all, ps...)
			}
			slices.Sort(all)
			return slices.Equal(all, ids)
		}
	}
	caughtUp := func() bool { drain(); return total >= wantTotal }
	// Past the lookback the windows restart from what it holds, so the
	// updates after a rebalance can be fewer than the reference's: what
	// must arrive then is every incident's resolution.
	allResolved := func() bool {
		drain()
		for _, z := range zombies {
			evs := got[z.String()]
			if len(evs) == 0 || evs[len(evs)-1].State != alert.StateResolved {
				return false
			}
		}
		return true
	}
	finished := caughtUp
	if !tc.exact {
		finished = allResolved
	}

	settle := func(what string, cond func() bool) {
		if !tc.concurrent {
			waitFor(t, what, time.Minute, cond)
		}
	}
	a := newInstance("a")
	waitFor(t, "A to hold every partition", time.Minute, held(a))
	publish(1, 0, 25) // every zombie opens
	settle("the opens", caughtUp)

	time.Sleep(tc.beforeJoin) // the opens fall out of the rebuild's lookback
	b := newInstance("b")
	settle("A and B to share the partitions", held(a, b))
	publish(2, 1.5, 25) // growth: updates, from whichever instance owns it
	settle("the updates after B joined", caughtUp)

	if err := a.Stop(); err != nil {
		t.Errorf("stop A: %v", err)
	}
	// B holds A's subscribers now; A would carry them against its
	// max_subscribers into any partitions it was given again.
	if n := a.budget.used.Load(); n != 0 {
		t.Errorf("A's subscriber budget counts %d subscribers after it gave up its partitions, want 0", n)
	}
	settle("B to hold every partition", held(b))
	publish(3, 3, 25)  // more growth
	publish(4, 30, 80) // event time moves on: every incident resolves
	waitFor(t, "the updates and resolutions after A left", time.Minute, finished)
	// Anything repeated would arrive now.
	time.Sleep(2 * time.Second)
	drain()
	if err := b.Stop(); err != nil {
		t.Errorf("stop B: %v", err)
	}

	if tc.exact {
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("alerts across two rebalances differ from an uninterrupted run (-want +got):\n%s", diff)
		}
	}
	for _, z := range zombies {
		evs := got[z.String()]
		var states []string
		for _, e := range evs {
			if e.ID != evs[0].ID {
				t.Errorf("%s: event %+v does not carry the incident id %s", z, e, evs[0].ID)
			}
			if len(states) == 0 || states[len(states)-1] != e.State {
				states = append(states, e.State)
			}
		}
		if fmt.Sprint(states) != "[open update resolved]" {
			t.Errorf("%s: states %v (repeats folded), want [open update resolved]: %+v", z, states, evs)
		}
	}
	for _, z := range zombies {
		evs := want[z.String()]
		states := make([]string, len(evs))
		for i, e := range evs {
			states[i] = e.State
		}
		if fmt.Sprint(states) != "[open update update resolved]" {
			t.Errorf("reference for %s: %v, want one open, two updates, one resolved (test is not testing)", z, states)
		}
	}
}
