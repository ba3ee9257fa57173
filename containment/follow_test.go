package containment

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// A customer's block follows it from address to address; the next holder
// of an old address is never blocked; with no address known the block
// waits and lands on the next one.
func TestBlockFollowsCustomer(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Enabled, cfg.Grace = true, 0
	p := NewPolicy(cfg, nil, nil)
	held := map[string][]netip.Prefix{"A": {netip.MustParsePrefix("203.0.113.7/32")}}
	p.SetHoldings(func(c string, _ time.Time) []netip.Prefix { return held[c] })
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	a := alert.Alert{ID: "inc-A", Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: "203.0.113.7",
		SubscriberID: "A", LastSeen: t0, Evidence: alert.Evidence{Identity: &alert.Identity{Customer: "A"}}}
	p.Apply(a)
	if got := activePrefixes(p); got != "203.0.113.7/32" {
		t.Fatalf("active %q, want .7", got)
	}
	// A's session stops; B gets .7, A reconnects on .9.
	held["A"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}
	changes := p.Follow("A", t0.Add(time.Minute))
	if got := activePrefixes(p); got != "203.0.113.9/32" {
		t.Fatalf("active %q after the move, want only .9 (changes %+v)", got, changes)
	}
	var released bool
	for _, c := range changes {
		if c.Type == ChangeRelease && c.Entry.Prefix.String() == "203.0.113.7/32" && c.Note == "address reassigned" {
			released = true
		}
	}
	if !released {
		t.Errorf("changes %+v: want .7 released as address reassigned", changes)
	}
	// A late alert of A's about its flows from .7 must not block .7,
	// which B holds now.
	late := a
	late.State, late.LastSeen = alert.StateUpdate, t0.Add(2*time.Minute)
	p.Apply(late)
	if got := activePrefixes(p); got != "203.0.113.9/32" {
		t.Fatalf("active %q after a late alert naming .7, want only .9", got)
	}
	// A disconnects and nothing is known: the block waits, then lands.
	held["A"] = nil
	p.Follow("A", t0.Add(3*time.Minute))
	if got := activePrefixes(p); got != "" {
		t.Fatalf("active %q with no address known, want none", got)
	}
	var waiting bool
	for _, e := range p.Entries() {
		waiting = waiting || (e.State == StateUnbound && e.Customer == "A")
	}
	if !waiting {
		t.Fatalf("entries %+v: want A waiting unbound", p.Entries())
	}
	held["A"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.11/32")}
	p.Follow("A", t0.Add(4*time.Minute))
	if got := activePrefixes(p); got != "203.0.113.11/32" {
		t.Fatalf("active %q, want .11 once A is known there", got)
	}
	for _, e := range p.Entries() {
		if e.Prefix.String() == "203.0.113.11/32" && (e.IncidentID != "inc-A" || !e.Expires.Equal(t0.Add(2*time.Minute).Add(cfg.Duration))) {
			t.Errorf("moved entry %+v: want A's incident and expiry kept", e)
		}
	}
}

func activePrefixes(p *Policy) string {
	out := ""
	for _, e := range MakeList(p.Entries(), p.Now(), false).Active {
		if out != "" {
			out += ","
		}
		out += e.Prefix.String()
	}
	return out
}

// The periodic follow moves every customer's entry in one round, as
// Follow would one by one.
func TestFollowAllMovesEveryCustomer(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Enabled, cfg.Grace = true, 0
	p := NewPolicy(cfg, nil, nil)
	held := map[string][]netip.Prefix{
		"A": {netip.MustParsePrefix("203.0.113.7/32")},
		"B": {netip.MustParsePrefix("203.0.113.8/32")},
	}
	p.SetHoldings(func(c string, _ time.Time) []netip.Prefix { return held[c] })
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	for c, addr := range map[string]string{"A": "203.0.113.7", "B": "203.0.113.8"} {
		p.Apply(alert.Alert{ID: "inc-" + c, Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: addr,
			SubscriberID: c, LastSeen: t0, Evidence: alert.Evidence{Identity: &alert.Identity{Customer: c}}})
	}
	// They swap addresses; nothing says so but the bindings.
	held["A"], held["B"] = held["B"], held["A"]
	p.FollowAll(t0.Add(time.Minute))
	got := map[string]string{}
	for _, e := range MakeList(p.Entries(), p.Now(), false).Active {
		got[e.Prefix.String()] = e.Customer
	}
	if got["203.0.113.8/32"] != "A" || got["203.0.113.7/32"] != "B" || len(got) != 2 {
		t.Fatalf("active %v, want A on .8 and B on .7", got)
	}
	// They swap back, each told apart (the bindings' own records): A's
	// move must not overwrite B's block before B's follow comes.
	held["A"], held["B"] = held["B"], held["A"]
	p.Follow("A", t0.Add(2*time.Minute))
	p.Follow("B", t0.Add(2*time.Minute))
	got = map[string]string{}
	for _, e := range MakeList(p.Entries(), p.Now(), false).Active {
		got[e.Prefix.String()] = e.Customer
	}
	if got["203.0.113.7/32"] != "A" || got["203.0.113.8/32"] != "B" || len(got) != 2 {
		t.Fatalf("active %v after the swap back, want A on .7 and B on .8", got)
	}
}
