package detector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
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

type rebalanceCase struct {
	lookback, beforeJoin time.Duration
	exact                bool // alerts equal to an uninterrupted run
	concurrent           bool // publish while the group rebalances
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

	newInstance := func(name string) *Component {
		c, err := New(cfg, Dependencies{
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)).With("instance", name),
			Registry: prometheus.NewRegistry(), Bus: k,
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
