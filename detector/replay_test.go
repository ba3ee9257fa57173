package detector

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// scenario is forty minutes of a small access network, as the collector
// would publish it: one message per subscriber per 10 seconds of flows.
// A spam zombie fails against mail servers from minute 5, a worm sweeps
// port 445 from minute 12, a mail relay (allow-listed) and ordinary users
// talk all along, then everybody falls quiet for 20 minutes.
func scenario() (msgs []bus.Message, minutes []int) {
	worm := netip.MustParseAddr("203.0.113.66")
	users := []netip.Addr{user, netip.MustParseAddr("203.0.113.78"), netip.MustParseAddr("203.0.113.79")}
	d := 0
	for tick := 0; tick < 6*40; tick++ { // 10-second ticks
		endMs := t0 + int64(tick)*10_000
		batches := map[netip.Addr][]flow.Flow{}
		add := func(f flow.Flow) { batches[f.SrcAddr] = append(batches[f.SrcAddr], f) }
		if tick >= 6*20 && tick < 6*38 {
			continue // quiet: incidents resolve on the first flows after
		}
		for i, u := range users {
			for j := 0; j < 3; j++ {
				f := entropyFlow(u, i*10+j, 443, endMs+int64(j*100))
				f.TCPFlags = flow.TCPSyn | flow.TCPAck | flow.TCPFin
				add(f)
			}
		}
		for j := 0; j < 4; j++ {
			add(smtpFlow(relay, 5000+(tick*4+j)%300, endMs+int64(j*50), flow.TCPSyn|flow.TCPAck))
		}
		if tick >= 30 && tick < 6*15 {
			for j := 0; j < 2; j++ {
				d++
				add(smtpFlow(zombie, 10000+d, endMs+int64(j*300), flow.TCPSyn))
			}
		}
		if tick >= 72 && tick < 6*18 {
			for j := 0; j < 30; j++ {
				d++
				add(entropyFlow(worm, 20000+d, 445, endMs+int64(j*10)))
			}
		}
		for _, src := range append([]netip.Addr{relay, zombie, worm}, users...) {
			if fs := batches[src]; len(fs) > 0 {
				msgs = append(msgs, bus.Message{Key: src.AsSlice(), Value: flow.AppendBatch(nil, fs)})
				minutes = append(minutes, tick/6)
			}
		}
	}
	return msgs, minutes
}

// runDetector runs one detector on the in-process bus, publishing msgs
// with pause(minutes) called before each new event minute, and returns the
// alerts it published, in order.
func runDetector(t *testing.T, cfg Configuration, msgs []bus.Message, minutes []int, pause func(d *Component, minutes int), clock Clock) ([]string, *Component) {
	t.Helper()
	mem := bus.NewMemory(16)
	alertsIn, _ := mem.Consumer("alerts", "test")
	d, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(), Bus: mem,
		FlowsTopic: "flows", AlertsTopic: "alerts", ResolveAtEnd: true, Clock: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	var got []string
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for {
			m, err := alertsIn.Fetch(context.Background())
			if err != nil {
				return
			}
			got = append(got, string(m.Value))
		}
	}()
	out, _ := mem.Producer("flows")
	for i, m := range msgs {
		if i > 0 && minutes[i] != minutes[i-1] {
			pause(d, minutes[i]-minutes[i-1])
		}
		if err := out.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	d.Drain()
	mem.CloseTopic("alerts")
	<-collected
	d.Stop()
	return got, d
}

// TestReplayEqualsLive feeds the same flows once paced (60 ms of wall
// clock per event minute, so that the detector's one-second ticker runs
// through the quiet part) and once at full speed: the alerts must be
// identical, byte for byte and in order.
func TestReplayEqualsLive(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.AllowList = []network.Prefix{{Prefix: netip.PrefixFrom(relay, 32)}}
	msgs, minutes := scenario()
	live, _ := runDetector(t, cfg, msgs, minutes, func(_ *Component, n int) { time.Sleep(time.Duration(n) * 60 * time.Millisecond) }, nil)
	replay, _ := runDetector(t, cfg, msgs, minutes, func(*Component, int) {}, nil)
	if diff := cmp.Diff(live, replay); diff != "" {
		t.Errorf("replay differs from the paced run (-live +replay):\n%s", diff)
	}
	// The scenario must exercise the rules, or the equality says nothing.
	kinds := map[string]int{}
	for _, s := range live {
		a, err := alert.Unmarshal([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		if a.SubscriberIP == relay.String() {
			t.Errorf("allow-listed relay alerted: %s", s)
		}
		kinds[a.Kind+"/"+a.State]++
	}
	for _, k := range []string{"smtp_fanout/open", "smtp_fanout/resolved", "dst_entropy/open", "dst_entropy/resolved"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s events in the paced run, want 1 (all: %v)", kinds[k], k, kinds)
		}
	}
}

// fakeClock is a wall clock the test moves: each second it moves, it
// ticks once and waits until the detector took the tick.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	ticks chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Ticker() (<-chan time.Time, func()) { return f.ticks, func() {} }

func (f *fakeClock) advance(d time.Duration) {
	for range int(d / time.Second) {
		f.mu.Lock()
		f.now = f.now.Add(time.Second)
		now := f.now
		f.mu.Unlock()
		f.ticks <- now
	}
}

// TestReplayEqualsLiveWallClock runs the scenario live against a wall
// clock that moves a minute per event minute, so that through the
// twenty quiet minutes event time follows the wall clock (idle_advance)
// and the incidents resolve before any flow comes again. The replay at
// full speed, where no wall clock passes, must print the same alerts.
func TestReplayEqualsLiveWallClock(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.AllowList = []network.Prefix{{Prefix: netip.PrefixFrom(relay, 32)}}
	msgs, minutes := scenario()
	clock := &fakeClock{now: time.UnixMilli(t0), ticks: make(chan time.Time)}
	var quietWatermark int64
	live, _ := runDetector(t, cfg, msgs, minutes, func(d *Component, n int) {
		clock.advance(time.Duration(n) * time.Minute)
		if n > 1 { // the quiet part: what did the wall clock do to event time?
			// One more tick: once it is taken, the previous ones are done.
			clock.advance(time.Second)
			quietWatermark = int64(testutil.ToFloat64(d.metrics.watermark.WithLabelValues("0")) * 1000)
		}
	}, clock)
	replay, _ := runDetector(t, cfg, msgs, minutes, func(*Component, int) {}, nil)
	if diff := cmp.Diff(live, replay); diff != "" {
		t.Errorf("replay differs from the live run driven by the wall clock (-live +replay):\n%s", diff)
	}
	// The last flow before the quiet ends at minute 20; idle_advance (10 s)
	// then lets event time follow the wall clock for the 18 quiet minutes.
	if got := time.Duration(quietWatermark-t0) * time.Millisecond; got < 35*time.Minute {
		t.Errorf("event time at the end of the quiet: %s after the start, want it moved by the wall clock to >= 35m", got)
	}
	resolved := 0
	for _, s := range live {
		if a, _ := alert.Unmarshal([]byte(s)); a.State == alert.StateResolved {
			resolved++
		}
	}
	if resolved < 2 {
		t.Errorf("%d resolutions in the live run, want the zombie's and the worm's", resolved)
	}
}

// TestSubscriberMapReload checks that a changed map file is picked up by
// a running detector and its ids go into the next alerts.
func TestSubscriberMapReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subscribers.csv")
	if err := os.WriteFile(path, []byte("203.0.113.0/24,old-id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.SubscriberMap = path
	cfg.SubscriberMapReload = 20 * time.Millisecond
	mem := bus.NewMemory(64)
	alertsIn, _ := mem.Consumer("alerts", "test")
	d, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(), Bus: mem,
		FlowsTopic: "flows", AlertsTopic: "alerts",
	})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	defer d.Stop()
	out, _ := mem.Producer("flows")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	openFor := func(src netip.Addr) alert.Alert {
		var fs []flow.Flow
		for i := 0; i < 5; i++ {
			fs = append(fs, smtpFlow(src, i, at(0), flow.TCPSyn))
		}
		if err := out.Publish(ctx, bus.Message{Key: src.AsSlice(), Value: flow.AppendBatch(nil, fs)}); err != nil {
			t.Fatal(err)
		}
		m, err := alertsIn.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := alert.Unmarshal(m.Value)
		return a
	}
	if a := openFor(netip.MustParseAddr("203.0.113.1")); a.SubscriberID != "old-id" {
		t.Errorf("subscriber_id %q, want old-id", a.SubscriberID)
	}
	// A different size, so that the change shows even within the
	// file system's timestamp resolution.
	if err := os.WriteFile(path, []byte("203.0.113.0/24,new-subscriber-id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.mapping.Load().Lookup(user) != "new-subscriber-id" {
		if time.Now().After(deadline) {
			t.Fatal("map not reloaded within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a := openFor(netip.MustParseAddr("203.0.113.2")); a.SubscriberID != "new-subscriber-id" {
		t.Errorf("after reload: subscriber_id %q, want new-subscriber-id", a.SubscriberID)
	}
}
