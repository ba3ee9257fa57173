package identity

import (
	"net/netip"
	"testing"
)

const tableT0 = int64(1_764_669_600_000) // 2025-12-02 10:00 UTC

func at(m int64) int64 { return tableT0 + m*60_000 }

func hold(customer, prefix, session string, start int64) Binding {
	return Binding{Customer: customer, Prefix: netip.MustParsePrefix(prefix), Source: SourceRADIUS,
		Session: session, StartMs: start, UpdatedMs: start}
}

func resolve(t *testing.T, tab *Table, addr string, at int64) string {
	t.Helper()
	res, _ := tab.Resolve(netip.MustParseAddr(addr), 0, at)
	return res.Customer
}

// An address resolves to whoever held it at the flow's time, before and
// after it changed hands, and a new holder ends the previous holding.
func TestWhoHeldTheAddress(t *testing.T) {
	tab := NewTable(0, 0)
	tab.Apply(hold("A", "203.0.113.7/32", "a1", at(0)))
	stop := hold("A", "203.0.113.7/32", "a1", at(0))
	stop.EndMs, stop.EndReason, stop.UpdatedMs = at(10), EndStop, at(10)
	tab.Apply(stop)
	res := tab.Apply(hold("B", "203.0.113.7/32", "b1", at(12)))
	if !res.Stored || len(res.Ended) != 0 {
		t.Fatalf("B's start: %+v, want stored, nothing to end (A stopped)", res)
	}
	tab.Apply(hold("A", "203.0.113.9/32", "a2", at(11)))
	for _, c := range []struct {
		addr string
		at   int64
		want string
	}{
		{"203.0.113.7", at(-1), ""}, {"203.0.113.7", at(0) - 3000, "A"}, {"203.0.113.7", at(5), "A"}, {"203.0.113.7", at(11), ""},
		{"203.0.113.7", at(12) - 2000, "B"},
		{"203.0.113.7", at(13), "B"}, {"203.0.113.9", at(13), "A"}, {"203.0.113.8", at(13), ""},
	} {
		if got := resolve(t, tab, c.addr, c.at); got != c.want {
			t.Errorf("%s at +%dm: %q, want %q", c.addr, (c.at-tableT0)/60_000, got, c.want)
		}
	}
	// C starts on .9 without A's stop: A's holding ends there.
	res = tab.Apply(hold("C", "203.0.113.9/32", "c1", at(20)))
	if len(res.Ended) != 1 || res.Ended[0].Customer != "A" || res.Ended[0].EndReason != EndReassigned || res.Ended[0].EndMs != at(20) {
		t.Fatalf("C's start ended %+v, want A's holding at +20m, reassigned", res.Ended)
	}
	if got := resolve(t, tab, "203.0.113.9", at(19)); got != "A" {
		t.Errorf(".9 at +19m: %q, want A until C came", got)
	}
	if h := tab.Holdings("A", at(21)); len(h) != 0 {
		t.Errorf("A holds %+v at +21m, want nothing", h)
	}
	if h := tab.Holdings("B", at(21)); len(h) != 1 || h[0].Prefix.String() != "203.0.113.7/32" {
		t.Errorf("B holds %+v, want .7", h)
	}
	// Reading a record again changes nothing; an older record of a
	// holding does not undo a newer one.
	if res := tab.Apply(stop); res.Stored {
		t.Errorf("a duplicate stop was stored again")
	}
	if res := tab.Apply(hold("A", "203.0.113.7/32", "a1", at(0))); res.Stored {
		t.Errorf("A's start read back after its stop reopened the holding")
	}
}

// An open holding ends at its expiry unless renewed.
func TestExpiry(t *testing.T) {
	tab := NewTable(0, 0)
	b := hold("A", "203.0.113.7/32", "a1", at(0))
	b.ExpiresMs = at(15)
	tab.Apply(b)
	if got := resolve(t, tab, "203.0.113.7", at(14)); got != "A" {
		t.Errorf("before expiry: %q", got)
	}
	if got := resolve(t, tab, "203.0.113.7", at(16)); got != "" {
		t.Errorf("after expiry: %q, want nobody", got)
	}
	b.ExpiresMs, b.UpdatedMs = at(30), at(5)
	tab.Apply(b)
	if got := resolve(t, tab, "203.0.113.7", at(16)); got != "A" {
		t.Errorf("after renewal: %q, want A", got)
	}
}

// IPv6: the longest prefix holding the address wins; the privacy
// addresses of a delegated /56 are its customer's.
func TestPrefixes(t *testing.T) {
	tab := NewTable(0, 0)
	tab.Apply(hold("A", "2001:db8:1::/48", "a1", at(0)))
	tab.Apply(hold("B", "2001:db8:1:200::/56", "b1", at(0)))
	if got := resolve(t, tab, "2001:db8:1:2ff::1234", at(1)); got != "B" {
		t.Errorf("inside the /56: %q, want B", got)
	}
	if got := resolve(t, tab, "2001:db8:1:300::1", at(1)); got != "A" {
		t.Errorf("outside the /56: %q, want A", got)
	}
}

// Behind a CGNAT, a public address and port resolve to the inside address
// of the port block at the time, and on to its customer.
func TestPortBlocks(t *testing.T) {
	tab := NewTable(0, 0)
	tab.Apply(hold("A", "100.64.0.7/32", "a1", at(0)))
	block := func(inside string, lo, hi uint16, start int64) Binding {
		return Binding{Source: SourceCGNAT, Prefix: netip.MustParsePrefix("198.51.100.1/32"), PortLo: lo, PortHi: hi,
			Inside: netip.MustParseAddr(inside), StartMs: start, UpdatedMs: start}
	}
	tab.Apply(block("100.64.0.7", 1024, 2047, at(1)))
	tab.Apply(block("100.64.0.8", 2048, 3071, at(1)))
	res, ok := tab.Resolve(netip.MustParseAddr("198.51.100.1"), 1500, at(2))
	if !ok || res.Customer != "A" || res.Inside.String() != "100.64.0.7" {
		t.Fatalf("port 1500: %+v, want A behind 100.64.0.7", res)
	}
	res, ok = tab.Resolve(netip.MustParseAddr("198.51.100.1"), 2500, at(2))
	if !ok || res.Customer != "" || res.Inside.String() != "100.64.0.8" {
		t.Fatalf("port 2500: %+v, want 100.64.0.8, no customer known", res)
	}
	if _, ok := tab.Resolve(netip.MustParseAddr("198.51.100.1"), 4000, at(2)); ok {
		t.Errorf("port 4000 outside every block resolved")
	}
	// The block changes hands.
	tab.Apply(block("100.64.0.9", 1024, 2047, at(5)))
	res, _ = tab.Resolve(netip.MustParseAddr("198.51.100.1"), 1500, at(6))
	if res.Inside.String() != "100.64.0.9" {
		t.Errorf("after reallocation: %+v, want 100.64.0.9", res)
	}
	res, _ = tab.Resolve(netip.MustParseAddr("198.51.100.1"), 1500, at(3))
	if res.Inside.String() != "100.64.0.7" {
		t.Errorf("a flow from before the reallocation: %+v, want 100.64.0.7", res)
	}
}

// The table is bounded: history per address, bindings in all; Prune
// forgets what ended long ago.
func TestBounds(t *testing.T) {
	tab := NewTable(3, 2)
	for i := range 5 {
		tab.Apply(hold("C"+string(rune('a'+i)), "203.0.113.7/32", "s", at(int64(i))))
	}
	if got := len(tab.Address(netip.MustParseAddr("203.0.113.7"))); got != 2 {
		t.Errorf("history of .7: %d holdings, want 2", got)
	}
	tab.Apply(hold("X", "203.0.113.8/32", "s", at(0)))
	if res := tab.Apply(hold("Y", "203.0.113.9/32", "s", at(0))); res.Stored {
		t.Errorf("a fourth binding beyond max_bindings 3 was stored")
	}
	if len(tab.History("Ca")) != 0 {
		t.Errorf("a holding dropped from the history is still in the customer index")
	}
	if n := tab.Prune(at(100)); n != 1 || tab.Len() != 2 {
		t.Errorf("pruned %d, %d left; want the one ended holding gone, 2 left", n, tab.Len())
	}
}
