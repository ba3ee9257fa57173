package detector

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

var (
	t0      = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC).UnixMilli()
	zombie  = netip.MustParseAddr("203.0.113.10")
	relay   = netip.MustParseAddr("203.0.113.25")
	user    = netip.MustParseAddr("203.0.113.77")
	routerA = netip.MustParseAddr("192.0.2.1")
)

func smtpFlow(src netip.Addr, d int, endMs int64, flags uint8) flow.Flow {
	return flow.Flow{
		StartMs: endMs - 100, EndMs: endMs, Exporter: routerA,
		SrcAddr: src, DstAddr: dst(d), SrcPort: 40000, DstPort: 25, Proto: flow.ProtoTCP,
		TCPFlags: flags, Packets: 2, Bytes: 120,
	}
}

// event is the part of an alert the lifecycle tests look at.
type event struct {
	Kind, State, Subscriber string
	Distinct                uint64
	AtMin                   float64 // event time of the flow that caused it, minutes after t0
}

type run struct {
	e      *Engine
	events []event
	all    []alert.Alert
}

func (r *run) feed(f flow.Flow) {
	for _, a := range r.e.Process(&f) {
		r.record(a, f.EndMs)
	}
}

func (r *run) advance(ms int64) {
	for _, a := range r.e.Advance(ms) {
		r.record(a, ms)
	}
}

func (r *run) record(a alert.Alert, atMs int64) {
	r.all = append(r.all, a)
	r.events = append(r.events, event{a.Kind, a.State, a.SubscriberIP, a.DistinctDsts, float64(atMs-t0) / 60000})
}

func testConfig() Configuration {
	c := DefaultConfiguration()
	c.SMTPFanout.Threshold = 5
	c.SMTPFanout.SlowThreshold = 20
	c.SMTPFanout.UpdateInterval = time.Minute
	c.SMTPFanout.Cooldown = 3 * time.Minute
	c.SMTPFanout.MaxDestinations = 100
	c.SMTPFanout.SampleSize = 3
	c.AllowedLateness = 2 * time.Minute
	return c
}

func at(m float64) int64 { return t0 + int64(m*60000) }

func TestEngineLifecycle(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	// Four destinations: below the threshold of five.
	for i := 0; i < 4; i++ {
		r.feed(smtpFlow(zombie, i, at(float64(i)*0.1), flow.TCPSyn))
	}
	// The fifth opens.
	r.feed(smtpFlow(zombie, 4, at(0.5), flow.TCPSyn))
	// More within the update interval: no event.
	r.feed(smtpFlow(zombie, 5, at(0.6), flow.TCPSyn))
	r.feed(smtpFlow(zombie, 6, at(0.9), flow.TCPSyn))
	// One minute after the open, growth: update.
	r.feed(smtpFlow(zombie, 7, at(1.6), flow.TCPSyn))
	// Same destinations again later: no growth, no update.
	r.feed(smtpFlow(zombie, 7, at(2.8), flow.TCPSyn))
	// The last flow above the threshold is the one at 2.8 (eight distinct
	// in the window); at 5.5 the window [1,5] holds only two, so quiet
	// starts then; resolved at the first minute boundary 3 minutes after
	// the last evaluation above the threshold (6.0), once the watermark
	// minus the allowed lateness (2 minutes) has passed it: at 8.0.
	r.advance(at(7.5))
	r.advance(at(8.0))
	r.advance(at(9.0))
	want := []event{
		{alert.KindSMTPFanout, alert.StateOpen, zombie.String(), 5, 0.5},
		{alert.KindSMTPFanout, alert.StateUpdate, zombie.String(), 8, 1.6},
		{alert.KindSMTPFanout, alert.StateResolved, zombie.String(), 8, 8.0},
	}
	if diff := cmp.Diff(want, r.events); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	id := r.all[0].ID
	for _, a := range r.all {
		if a.ID != id {
			t.Errorf("%s event has id %s, want the incident's %s", a.State, a.ID, id)
		}
	}
	// A new burst after the resolution is a new incident with a new id.
	for i := 0; i < 5; i++ {
		r.feed(smtpFlow(zombie, 100+i, at(20), flow.TCPSyn))
	}
	last := r.all[len(r.all)-1]
	if last.State != alert.StateOpen || last.ID == id {
		t.Errorf("second incident: state %s id %s, want open with a new id (first was %s)", last.State, last.ID, id)
	}
	if got := r.all[0]; got.FirstSeen != time.UnixMilli(t0).UTC() || got.Exporter != routerA.String() {
		t.Errorf("open: first_seen %s exporter %s, want %s %s", got.FirstSeen, got.Exporter, time.UnixMilli(t0).UTC(), routerA)
	}
}

func TestEngineNoDuplicateIncident(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	// A steady sender above the threshold for twenty minutes: one open,
	// updates at most once a minute while the count grows, never a second open.
	for i := 0; i < 200; i++ {
		r.feed(smtpFlow(zombie, i, at(float64(i)*0.1), flow.TCPSyn))
	}
	opens, updates := 0, 0
	lastUpdate := -10.0
	for _, ev := range r.events {
		switch ev.State {
		case alert.StateOpen:
			opens++
		case alert.StateUpdate:
			updates++
			if ev.AtMin-lastUpdate < 1 {
				t.Errorf("update at %.1f min only %.1f min after the previous one", ev.AtMin, ev.AtMin-lastUpdate)
			}
			lastUpdate = ev.AtMin
		}
	}
	// The 5-minute count grows for five minutes and then stays at 50:
	// updates only while it grows.
	if opens != 1 || updates < 4 || updates > 10 {
		t.Errorf("%d opens and %d updates over 20 minutes, want 1 and 4..10", opens, updates)
	}
}

func TestEngineEventTime(t *testing.T) {
	cases := []struct {
		name  string
		flows []flow.Flow
		want  []event
		late  uint64
	}{
		{
			name: "out of order within the window still opens",
			flows: []flow.Flow{
				smtpFlow(zombie, 0, at(4), flow.TCPSyn),
				smtpFlow(zombie, 1, at(2.1), flow.TCPSyn),
				smtpFlow(zombie, 2, at(3), flow.TCPSyn),
				smtpFlow(zombie, 3, at(2.2), flow.TCPSyn),
				smtpFlow(zombie, 4, at(2.5), flow.TCPSyn),
			},
			want: []event{{alert.KindSMTPFanout, alert.StateOpen, zombie.String(), 5, 2.5}},
		},
		{
			name: "flows later than the allowed lateness are dropped",
			flows: []flow.Flow{
				smtpFlow(zombie, 0, at(10), flow.TCPSyn),
				smtpFlow(zombie, 1, at(7.9), flow.TCPSyn), // 2.1 min late
				smtpFlow(zombie, 2, at(8.1), flow.TCPSyn),
				smtpFlow(zombie, 3, at(9), flow.TCPSyn),
				smtpFlow(zombie, 4, at(9.5), flow.TCPSyn),
			},
			want: nil, // four counted: one short of the threshold
			late: 1,
		},
		{
			name: "the same five spread over more than the window do not open",
			flows: []flow.Flow{
				smtpFlow(zombie, 0, at(0), flow.TCPSyn),
				smtpFlow(zombie, 1, at(2), flow.TCPSyn),
				smtpFlow(zombie, 2, at(4), flow.TCPSyn),
				smtpFlow(zombie, 3, at(6), flow.TCPSyn),
				smtpFlow(zombie, 4, at(8), flow.TCPSyn),
			},
			want: nil,
		},
		{
			name: "other ports do not feed smtp_fanout",
			flows: func() []flow.Flow {
				var fs []flow.Flow
				for i := 0; i < 10; i++ {
					f := smtpFlow(user, i, at(1), flow.TCPSyn|flow.TCPAck)
					f.DstPort = 587
					fs = append(fs, f)
				}
				return fs
			}(),
			want: nil,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{e: NewEngine(testConfig())}
			for _, f := range tc.flows {
				r.feed(f)
			}
			if diff := cmp.Diff(tc.want, r.events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if got := r.e.Stats().LateFlows; got != tc.late {
				t.Errorf("late flows %d, want %d", got, tc.late)
			}
		})
	}
}

func TestEngineAllowList(t *testing.T) {
	cfg := testConfig()
	cfg.AllowList = []network.Prefix{{Prefix: netip.PrefixFrom(relay, 32)}}
	r := &run{e: NewEngine(cfg)}
	for i := 0; i < 50; i++ {
		r.feed(smtpFlow(relay, i, at(float64(i)*0.01), flow.TCPSyn|flow.TCPAck))
		r.feed(smtpFlow(zombie, i, at(float64(i)*0.01), flow.TCPSyn))
	}
	for _, ev := range r.events {
		if ev.Subscriber == relay.String() {
			t.Errorf("allow-listed relay alerted: %+v", ev)
		}
	}
	if len(r.events) == 0 {
		t.Error("the zombie next to the relay was not alerted")
	}
	if got := r.e.Stats().AllowListed; got != 50 {
		t.Errorf("allow-listed flows %d, want 50", got)
	}
}

func TestEngineFailedShareInScore(t *testing.T) {
	var scores []float64
	var shares []float64
	for _, flags := range []uint8{flow.TCPSyn | flow.TCPAck, flow.TCPSyn} {
		r := &run{e: NewEngine(testConfig())}
		for i := 0; i < 5; i++ {
			r.feed(smtpFlow(zombie, i, at(0.1*float64(i)), flags))
		}
		if len(r.all) != 1 {
			t.Fatalf("flags %#x: %d alerts, want 1", flags, len(r.all))
		}
		scores = append(scores, r.all[0].Score)
		shares = append(shares, r.all[0].Evidence.FailedShare)
	}
	if diff := cmp.Diff([]float64{0, 1}, shares); diff != "" {
		t.Errorf("failed share, completed then failed (-want +got):\n%s", diff)
	}
	if scores[1] <= scores[0] {
		t.Errorf("score of failed attempts %.2f not above completed %.2f", scores[1], scores[0])
	}
}

func TestEngineEvictsIdleSubscribers(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	r.feed(smtpFlow(user, 1, at(0), flow.TCPSyn|flow.TCPAck))
	if got := r.e.Subscribers(); got != 1 {
		t.Fatalf("subscribers %d, want 1", got)
	}
	r.advance(at(30))
	if got := r.e.Subscribers(); got != 1 {
		t.Errorf("after 30 min: subscribers %d, want 1 (still in the 60-minute window)", got)
	}
	// Idle past the slow window and the lateness (62 min), it goes when
	// its shard is next visited: within 16 more minutes.
	for m := 31.0; m <= 78; m++ {
		r.advance(at(m))
	}
	if got := r.e.Subscribers(); got != 0 {
		t.Errorf("after 78 min: subscribers %d, want 0", got)
	}
	if got := r.e.Stats().Evicted; got != 1 {
		t.Errorf("evicted %d, want 1", got)
	}
}

func TestEngineInherit(t *testing.T) {
	prev := alert.Alert{ID: "cafe", Kind: alert.KindSMTPFanout, State: alert.StateUpdate, SubscriberIP: zombie.String(),
		FirstSeen: time.UnixMilli(at(-90)).UTC(), LastSeen: time.UnixMilli(at(-1)).UTC(), DistinctDsts: 40}
	quiet := prev
	quiet.ID, quiet.SubscriberIP = "beef", user.String()
	done := prev
	done.ID, done.SubscriberIP, done.State = "dead", relay.String(), alert.StateResolved
	r := &run{e: NewEngine(testConfig())}
	r.e.Inherit([]alert.Alert{prev, quiet, done})
	// The zombie goes on: its flows continue the inherited incident.
	for i := 0; i < 45; i++ {
		r.feed(smtpFlow(zombie, i, at(float64(i)*0.02), flow.TCPSyn))
	}
	r.advance(at(20))
	var got []string
	for _, a := range r.all {
		got = append(got, a.ID+"/"+a.State+"/"+a.SubscriberIP)
	}
	// No open: the zombie's incident updates once it passes the 40
	// destinations already reported, and resolves; the quiet one is
	// never seen here again and is dropped, not resolved twice.
	want := []string{"cafe/update/" + zombie.String(), "cafe/resolved/" + zombie.String()}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if r.all[0].DistinctDsts != 41 || !r.all[0].FirstSeen.Equal(prev.FirstSeen) {
		t.Errorf("update: distinct %d first_seen %s, want 41 and the inherited %s", r.all[0].DistinctDsts, r.all[0].FirstSeen, prev.FirstSeen)
	}
}

func TestEngineFutureFlow(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	// An exporter an hour ahead: its flow would otherwise push the
	// watermark an hour on and make the next flows late.
	bad := smtpFlow(user, 1, at(60), flow.TCPSyn|flow.TCPAck)
	bad.TimeReceivedMs = at(0)
	r.feed(bad)
	for i := 0; i < 5; i++ {
		f := smtpFlow(zombie, i, at(0.1), flow.TCPSyn)
		f.TimeReceivedMs = at(0.1)
		r.feed(f)
	}
	s := r.e.Stats()
	if s.FutureFlows != 1 || s.LateFlows != 0 || len(opens(r.all, alert.KindSMTPFanout)) != 1 {
		t.Errorf("future %d late %d events %+v, want 1 future, 0 late, the zombie opened", s.FutureFlows, s.LateFlows, r.events)
	}
}

// TestEngineInheritPublishedPastCommit: the previous owner announced an
// update for flows past the offset it committed; the new owner rebuilds up
// to that offset, inherits the update and processes those flows again
// without announcing it a second time.
func TestEngineInheritPublishedPastCommit(t *testing.T) {
	var flows []flow.Flow
	for i := 0; i < 60; i++ {
		flows = append(flows, smtpFlow(zombie, i, at(float64(i)*0.05), flow.TCPSyn|flow.TCPAck))
	}
	cfg := testConfig()
	cfg.SMTPFanout.Sequential.Enabled = false
	cfg.SMTPFanout.UpdateInterval = time.Second
	// The previous owner announced up to flow 34 and committed up to 30.
	first := &run{e: NewEngine(cfg)}
	for i := range flows[:35] {
		first.feed(flows[i])
	}
	if len(first.all) < 2 {
		t.Fatalf("uninterrupted run: %d events, want an open and an update", len(first.all))
	}
	last := first.all[len(first.all)-1]

	// The new owner: state rebuilt from the flows up to the commit (30),
	// without publishing, then the announced events, then the rest again.
	// A rebuild that starts part-way (lookback shorter than the incident)
	// sees the incident open at another time, hence under another id.
	for _, from := range []int{0, 10} {
		second := &run{e: NewEngine(cfg)}
		for i := range flows[from:30] {
			second.e.Process(&flows[from+i])
		}
		second.e.Inherit([]alert.Alert{last})
		for i := range flows[30:] {
			second.feed(flows[30+i])
		}
		if len(second.all) == 0 {
			t.Errorf("rebuilt from flow %d: no update while the incident grew past what was announced", from)
		}
		for _, a := range second.all {
			switch {
			case a.ID != last.ID:
				t.Errorf("rebuilt from flow %d: %s under a new id %s, want the incident's %s", from, a.State, a.ID, last.ID)
			case a.State == alert.StateOpen:
				t.Errorf("rebuilt from flow %d: the incident opened again", from)
			case a.State == alert.StateUpdate && a.DistinctDsts <= last.DistinctDsts:
				t.Errorf("rebuilt from flow %d: announced again: %s %s distinct %d (previous owner announced %d)",
					from, a.ID, a.State, a.DistinctDsts, last.DistinctDsts)
			}
		}
	}
}

// A zombie at a steady rate for thirty hours: its count stops growing
// within minutes, and still an update goes out every half
// incident_lookback, so that the alerts topic holds it within the
// lookback a next owner of the partition reads back.
func TestEngineRefreshesSteadyIncident(t *testing.T) {
	cfg := testConfig()
	cfg.IncidentLookback = 4 * time.Hour
	r := &run{e: NewEngine(cfg)}
	for m := 0.0; m < 30*60; m += 0.5 {
		// The same ten servers over and over: the count stays at ten.
		r.feed(smtpFlow(zombie, int(m*2)%10, at(m), flow.TCPSyn))
	}
	var got []float64
	for _, ev := range r.events {
		if ev.State == alert.StateUpdate && ev.AtMin > 10 {
			got = append(got, ev.AtMin)
		}
		if ev.State != alert.StateUpdate && ev.State != alert.StateOpen {
			t.Fatalf("%s at %.1f h: the incident must stay open", ev.State, ev.AtMin/60)
		}
	}
	// From the last update of the growth (minute 4.5) on, every two hours.
	if len(got) != 14 {
		t.Fatalf("%d refresh updates over 30 h at minutes %v, want 14 (every 2 h)", len(got), got)
	}
	for i := 1; i < len(got); i++ {
		// Flows come every half minute: the refresh is due at the first
		// one two hours after the previous.
		if d := math.Round(got[i] - got[i-1]); d < 120 || d > 121 {
			t.Errorf("refresh %d came %.0f min after the previous one, want 120", i, d)
		}
	}
	if r.all[len(r.all)-1].ID != r.all[0].ID {
		t.Error("a refresh carries another id than the incident's")
	}
}

// TestEngineReleaseFreesBudget: the engines of one instance share
// max_subscribers, and an engine whose partition went to another instance
// gives its room back.
func TestEngineReleaseFreesBudget(t *testing.T) {
	cfg := testConfig()
	budget := NewSubscriberBudget(10)
	gone, next := NewEngine(cfg), NewEngine(cfg)
	gone.SetSubscriberBudget(budget)
	next.SetSubscriberBudget(budget)
	feed := func(e *Engine, first byte) {
		for i := range byte(10) {
			f := smtpFlow(netip.AddrFrom4([4]byte{203, 0, 113, first + i}), 1, at(0.5), flow.TCPSyn)
			e.Process(&f)
		}
	}
	feed(gone, 1)
	gone.Release()
	if n := budget.used.Load(); n != 0 {
		t.Fatalf("budget counts %d subscribers after Release, want 0", n)
	}
	feed(next, 101)
	if s := next.Stats(); next.Subscribers() != 10 || s.Displaced != 0 || s.Refused != 0 {
		t.Errorf("next engine: %d subscribers, %d displaced, %d refused; want 10, 0, 0", next.Subscribers(), s.Displaced, s.Refused)
	}
}
