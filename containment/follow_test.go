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
