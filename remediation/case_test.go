package remediation

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func testConfig() Configuration {
	c := DefaultConfiguration()
	c.Enabled = true
	return c
}

func zombieAlert(id, state string, at time.Time) alert.Alert {
	return alert.Alert{ID: id, Kind: alert.KindSMTPFanout, State: state, SubscriberIP: "203.0.113.7", SubscriberID: "203.0.113.7",
		FirstSeen: at.Add(-5 * time.Minute), LastSeen: at, DistinctDsts: 140,
		Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.10", "198.18.0.11"}, FailedAttempts: 90,
			Identity: &alert.Identity{Customer: "cust-42"}}}
}

func effects(r Result, typ string) []Effect {
	var out []Effect
	for _, e := range r.Effects {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func eventTypes(evs []Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func apply(t *testing.T, b *Casebook, a alert.Alert) Result {
	t.Helper()
	r, err := b.Apply(a)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLadder: notify at the open, walled at 4h and blocked at 24h while the
// incident is active, each in event time, one case for the customer
// whatever the kind.
func TestLadder(t *testing.T) {
	b := NewCasebook(testConfig())
	r := apply(t, b, zombieAlert("inc-1", alert.StateOpen, t0))
	if n := len(effects(r, EffectNotify)); n != 1 {
		t.Fatalf("open: %d notify effects, want 1 (%+v)", n, r)
	}
	cs, _ := b.OfCustomer("cust-42")
	if cs.State != StateOpen || cs.Step != 1 {
		t.Fatalf("after open: state %s step %d", cs.State, cs.Step)
	}
	if _, err := b.Notified(cs.ID, true, "sent", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Another kind joins the same case.
	flood := zombieAlert("inc-2", alert.StateOpen, t0.Add(time.Hour))
	flood.Kind = alert.KindOutboundFlood
	r = apply(t, b, flood)
	if got := eventTypes(r.Events); !slices.Equal(got, []string{EventJoin}) {
		t.Errorf("second incident: events %v, want [join]", got)
	}
	if r := b.Advance(t0.Add(4*time.Hour - time.Second)); len(r.Effects) != 0 {
		t.Errorf("before 4h: %+v", r.Effects)
	}
	r = b.Advance(t0.Add(4 * time.Hour))
	if c := effects(r, EffectContain); len(c) != 1 || c[0].Action != StepWalled {
		t.Fatalf("at 4h: %+v, want walled", r.Effects)
	}
	r = b.Advance(t0.Add(24 * time.Hour))
	if c := effects(r, EffectContain); len(c) != 1 || c[0].Action != StepBlock {
		t.Fatalf("at 24h: %+v, want block", r.Effects)
	}
	cs, _ = b.OfCustomer("cust-42")
	if cs.State != StateBlocked || cs.Level != 2 || len(cs.Kinds) != 2 || len(b.Cases()) != 1 {
		t.Errorf("case %+v, want one blocked case of two kinds", cs)
	}
}

// TestLadderWaitsForActivity: a step after 0 is taken only while an
// incident is active; a quiet, notified case closes after close_after.
func TestLadderWaitsForActivity(t *testing.T) {
	b := NewCasebook(testConfig())
	apply(t, b, zombieAlert("inc-1", alert.StateOpen, t0))
	apply(t, b, zombieAlert("inc-1", alert.StateResolved, t0.Add(time.Hour)))
	r := b.Advance(t0.Add(5 * time.Hour))
	if len(effects(r, EffectContain)) != 0 {
		t.Errorf("resolved incident walled: %+v", r.Effects)
	}
	r = b.Advance(t0.Add(time.Hour + 72*time.Hour))
	if got := eventTypes(r.Events); !slices.Equal(got, []string{EventClosed}) {
		t.Errorf("quiet case: events %v, want [closed]", got)
	}
}

// TestSelfReleaseLimitAndRelapse: a walled customer releases itself twice
// in the window, then is refused; a relapse after a self-release goes
// straight to the next step.
func TestSelfReleaseLimitAndRelapse(t *testing.T) {
	cfg := testConfig()
	cfg.Ladder = []Step{{StepNotify, 0}, {StepWalled, 0}, {StepBlock, 24 * time.Hour}}
	b := NewCasebook(cfg)
	at := t0
	apply(t, b, zombieAlert("inc-1", alert.StateOpen, at))
	cs, _ := b.OfCustomer("cust-42")
	if cs.State != StateWalled {
		t.Fatalf("walled at 0: state %s", cs.State)
	}
	if _, err := b.SelfRelease(cs.ID, at.Add(time.Minute)); err != nil {
		t.Fatalf("first self-release: %v", err)
	}
	// The same incident still reported within the grace: no relapse.
	r := apply(t, b, zombieAlert("inc-1", alert.StateUpdate, at.Add(5*time.Minute)))
	if len(r.Events) != 0 {
		t.Errorf("update within the grace: %v", eventTypes(r.Events))
	}
	// A new incident: relapse, one step higher than walled: blocked.
	r = apply(t, b, zombieAlert("inc-2", alert.StateOpen, at.Add(2*time.Hour)))
	if got := eventTypes(r.Events); !slices.Equal(got, []string{EventReopen, EventBlocked}) {
		t.Fatalf("relapse: events %v, want [reopen blocked]", got)
	}
	if _, err := b.SelfRelease(cs.ID, at.Add(3*time.Hour)); !errors.Is(err, ErrState) {
		t.Errorf("self-release while blocked: %v, want ErrState", err)
	}
	// The desk releases; the next relapse restarts the ladder (walled at
	// 0 again) and the customer has one self-release left.
	if _, err := b.Release(cs.ID, "alice", "called the customer", at.Add(4*time.Hour)); err != nil {
		t.Fatal(err)
	}
	apply(t, b, zombieAlert("inc-3", alert.StateOpen, at.Add(6*time.Hour)))
	cs, _ = b.OfCustomer("cust-42")
	if cs.State != StateWalled || b.SelfReleasesLeft(&cs) != 1 {
		t.Fatalf("after desk release and relapse: %s, %d left", cs.State, b.SelfReleasesLeft(&cs))
	}
	if _, err := b.SelfRelease(cs.ID, at.Add(7*time.Hour)); err != nil {
		t.Fatalf("second self-release: %v", err)
	}
	// Relapse after the second: straight to block; the desk releases, a
	// third relapse walls again, and the third self-release is refused.
	apply(t, b, zombieAlert("inc-4", alert.StateOpen, at.Add(8*time.Hour)))
	b.Release(cs.ID, "alice", "", at.Add(9*time.Hour))
	apply(t, b, zombieAlert("inc-5", alert.StateOpen, at.Add(10*time.Hour)))
	r, err := b.SelfRelease(cs.ID, at.Add(11*time.Hour))
	if !errors.Is(err, ErrSelfReleaseLimit) || !slices.Equal(eventTypes(r.Events), []string{EventReleaseDenied}) {
		t.Fatalf("third self-release: %v %v, want the limit", err, eventTypes(r.Events))
	}
	// Past the window the customer may again.
	if _, err := b.SelfRelease(cs.ID, at.Add(31*24*time.Hour)); err != nil {
		t.Errorf("self-release after the window: %v", err)
	}
}

// TestFalsePositive releases everything, closes, and the next incident
// opens a new case.
func TestFalsePositive(t *testing.T) {
	cfg := testConfig()
	cfg.Ladder = []Step{{StepNotify, 0}, {StepWalled, 0}}
	b := NewCasebook(cfg)
	apply(t, b, zombieAlert("inc-1", alert.StateOpen, t0))
	cs, _ := b.OfCustomer("cust-42")
	r, err := b.FalsePositive(cs.ID, "alice", "a mailing list server", t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rel := effects(r, EffectRelease)
	if len(rel) != 1 || !slices.Contains(rel[0].IDs, "inc-1") || len(rel[0].IDs) != 2 {
		t.Fatalf("false positive: release %+v, want the walled step and inc-1", rel)
	}
	apply(t, b, zombieAlert("inc-2", alert.StateOpen, t0.Add(2*time.Hour)))
	if n := len(b.Cases()); n != 2 {
		t.Errorf("%d cases after a false positive and a new incident, want 2", n)
	}
	s := computeStats(b.Cases())
	if s.FalsePositives[alert.KindSMTPFanout] != 1 || s.Precision[alert.KindSMTPFanout] != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestHoldAndSkip: a hold delays the due step; a skip passes over it.
func TestHoldAndSkip(t *testing.T) {
	b := NewCasebook(testConfig())
	apply(t, b, zombieAlert("inc-1", alert.StateOpen, t0))
	cs, _ := b.OfCustomer("cust-42")
	if _, err := b.Hold(cs.ID, 8*time.Hour, "alice", "customer called", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r := b.Advance(t0.Add(5 * time.Hour)); len(r.Effects) != 0 {
		t.Errorf("held: %+v", r.Effects)
	}
	if _, err := b.Skip(cs.ID, "alice", "no garden for this one", t0.Add(6*time.Hour)); err != nil {
		t.Fatal(err)
	}
	apply(t, b, zombieAlert("inc-1", alert.StateUpdate, t0.Add(9*time.Hour)))
	cs, _ = b.OfCustomer("cust-42")
	if cs.State != StateOpen || cs.Step != 2 {
		t.Errorf("after hold and skip: %s step %d, want open at step 2", cs.State, cs.Step)
	}
	r := b.Advance(t0.Add(24 * time.Hour))
	if c := effects(r, EffectContain); len(c) != 1 || c[0].Action != StepBlock {
		t.Errorf("at 24h: %+v, want block", r.Effects)
	}
}

// TestCasebookBounded: beyond max_cases the oldest closed case goes; open
// ones never do.
func TestCasebookBounded(t *testing.T) {
	cfg := testConfig()
	cfg.MaxCases = 2
	b := NewCasebook(cfg)
	for i, cust := range []string{"a", "b"} {
		a := zombieAlert("inc-"+cust, alert.StateOpen, t0.Add(time.Duration(i)*time.Minute))
		a.Evidence.Identity = &alert.Identity{Customer: cust}
		apply(t, b, a)
	}
	c := zombieAlert("inc-c", alert.StateOpen, t0.Add(time.Hour))
	c.Evidence.Identity = &alert.Identity{Customer: "c"}
	if _, err := b.Apply(c); !errors.Is(err, ErrCasebookFull) {
		t.Fatalf("third open case: %v, want ErrCasebookFull", err)
	}
	a, _ := b.OfCustomer("a")
	b.Close(a.ID, "alice", "", t0.Add(2*time.Hour))
	if _, err := b.Apply(c); err != nil {
		t.Fatalf("with a closed case to evict: %v", err)
	}
	if _, ok := b.OfCustomer("b"); !ok {
		t.Error("open case b evicted")
	}
}

// TestLadderFor: kind and group, then group, then kind.
func TestLadderFor(t *testing.T) {
	c := testConfig()
	kind := []Step{{StepNotify, 0}}
	group := []Step{{StepNotify, time.Hour}}
	both := []Step{{StepBlock, 0}}
	c.Ladders = []LadderConfiguration{{Kind: "darknet", Steps: kind}, {Group: "business", Steps: group}, {Kind: "darknet", Group: "business", Steps: both}}
	for _, tc := range []struct {
		kind, group string
		want        []Step
	}{{"darknet", "", kind}, {"darknet", "business", both}, {"smtp_fanout", "business", group}, {"smtp_fanout", "", c.Ladder}} {
		if got := c.ladderFor(tc.kind, tc.group); !slices.Equal(got, tc.want) {
			t.Errorf("%s/%s: %v, want %v", tc.kind, tc.group, got, tc.want)
		}
	}
}
