package detector

import (
	"net/netip"
	"testing"
	"unsafe"
)

func TestSubscriberTable(t *testing.T) {
	tb := newSubscriberTable()
	v4 := netip.MustParseAddr("203.0.113.7")
	mapped := netip.MustParseAddr("::ffff:203.0.113.7")
	v6 := netip.MustParseAddr("2001:db8:1::")
	for i, a := range []netip.Addr{v4, mapped, v6} {
		if tb.get(a) != nil {
			t.Fatalf("%s found before it was added", a)
		}
		tb.add(a).lastMs = int64(i + 1)
	}
	// An IPv4-mapped IPv6 address is another subscriber than the IPv4
	// one: merging them would let one's traffic count as the other's.
	for i, a := range []netip.Addr{v4, mapped, v6} {
		if s := tb.get(a); s == nil || s.lastMs != int64(i+1) {
			t.Fatalf("%s: got %+v, want lastMs %d", a, s, i+1)
		}
	}
	if tb.len() != 3 {
		t.Fatalf("len %d, want 3", tb.len())
	}
	seen := map[netip.Addr]int64{}
	for i := range shards {
		for a, s := range tb.shard(i) {
			if shardOf(a) != i {
				t.Errorf("%s yielded by shard %d, belongs to %d", a, i, shardOf(a))
			}
			seen[a] = s.lastMs
		}
	}
	if len(seen) != 3 || seen[v4] != 1 || seen[mapped] != 2 || seen[v6] != 3 {
		t.Fatalf("shards yielded %v", seen)
	}

	old := tb.get(v4)
	tb.remove(v4)
	tb.remove(v4) // twice is harmless
	if tb.get(v4) != nil || tb.len() != 2 {
		t.Fatalf("after remove: get %v, len %d", tb.get(v4), tb.len())
	}
	if old.lastMs != 0 {
		t.Errorf("a removed subscriber's slot keeps its state: lastMs %d", old.lastMs)
	}
	// The freed slot is reused, zeroed, and the others are untouched.
	if s := tb.add(netip.MustParseAddr("203.0.113.8")); s != old || s.lastMs != 0 {
		t.Errorf("new subscriber got slot %p (freed %p) with lastMs %d", s, old, s.lastMs)
	}
	if tb.get(mapped).lastMs != 2 || tb.get(v6).lastMs != 3 {
		t.Error("removing one subscriber changed another")
	}
}

func TestSubscriberTableManyChunks(t *testing.T) {
	tb := newSubscriberTable()
	const n = 3*slotsPerChunk + 5
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}) }
	for i := range n {
		tb.add(addr(i)).lastMs = int64(i)
	}
	// Remove every other one while iterating, as the sweep does.
	for sh := range shards {
		for a, s := range tb.shard(sh) {
			if s.lastMs%2 == 1 {
				tb.remove(a)
			}
		}
	}
	if tb.len() != (n+1)/2 {
		t.Fatalf("len %d, want %d", tb.len(), (n+1)/2)
	}
	for i := range n {
		s := tb.get(addr(i))
		if (s != nil) != (i%2 == 0) || (s != nil && s.lastMs != int64(i)) {
			t.Fatalf("subscriber %d: %+v", i, s)
		}
	}
	chunks := len(tb.chunks)
	for i := range n / 2 {
		tb.add(netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}))
	}
	if len(tb.chunks) != chunks {
		t.Errorf("adding as many as were removed grew the table from %d to %d chunks", chunks, len(tb.chunks))
	}
}

// TestSubscriberSize guards the layout BenchmarkSubscriberMemory measures:
// a field added to subscriber costs every subscriber of every detector.
func TestSubscriberSize(t *testing.T) {
	if got := unsafe.Sizeof(subscriber{}); got > 88 {
		t.Errorf("subscriber is %d bytes, budget 88 (see BenchmarkSubscriberMemory)", got)
	}
}
