package detector

import (
	"iter"
	"net/netip"
)

// subscriberTable holds the engine's subscribers, spread over shards by a
// hash of their key, so that the once-a-minute visit for expiry and
// eviction takes one shard at a time instead of stalling on all of them.
//
// It is laid out for memory, the detector's ceiling at millions of
// subscribers (BenchmarkSubscriberMemory):
//   - The subscribers live in fixed chunks of slotsPerChunk, not one heap
//     object each, and the maps hold their slot numbers. A chunk never
//     moves, so a *subscriber stays valid for as long as its subscriber is
//     in the table; a removed subscriber's slot is zeroed and reused.
//   - IPv4 keys, most of an ISP's subscribers, are their four bytes: a map
//     keyed by netip.Addr (24 bytes with its zone pointer) took 84 B per
//     entry at a million entries where this one takes 20 B.
//
// Slots are not given back when subscribers leave; the table keeps the
// size of its largest population, which max_subscribers bounds.
type subscriberTable struct {
	v4     [shards]map[uint32]uint32
	v6     [shards]map[[16]byte]uint32
	chunks []*[slotsPerChunk]subscriber
	free   []uint32 // slots of removed subscribers
	n      int
}

// slotsPerChunk is 1024 subscribers, about 90 KiB a chunk.
const slotsPerChunk = 1024

func newSubscriberTable() *subscriberTable {
	t := &subscriberTable{}
	t.reset()
	return t
}

// reset empties the table and gives back its memory.
func (t *subscriberTable) reset() {
	for i := range shards {
		t.v4[i] = map[uint32]uint32{}
		t.v6[i] = map[[16]byte]uint32{}
	}
	t.chunks, t.free, t.n = nil, nil, 0
}

// len is the number of subscribers in the table.
func (t *subscriberTable) len() int { return t.n }

func (t *subscriberTable) slot(i uint32) *subscriber {
	return &t.chunks[i/slotsPerChunk][i%slotsPerChunk]
}

func v4Key(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func v4Addr(k uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)})
}

// get returns the subscriber under a, nil when there is none.
func (t *subscriberTable) get(a netip.Addr) *subscriber {
	var i uint32
	var ok bool
	if a.Is4() {
		i, ok = t.v4[shardOf(a)][v4Key(a)]
	} else {
		i, ok = t.v6[shardOf(a)][a.As16()]
	}
	if !ok {
		return nil
	}
	return t.slot(i)
}

// add puts a zeroed subscriber under a, which must not be in the table,
// and returns it.
func (t *subscriberTable) add(a netip.Addr) *subscriber {
	var i uint32
	if n := len(t.free); n > 0 {
		i, t.free = t.free[n-1], t.free[:n-1]
	} else {
		// No slot is free: the t.n slots in use are the first ones.
		if t.n == len(t.chunks)*slotsPerChunk {
			t.chunks = append(t.chunks, new([slotsPerChunk]subscriber))
		}
		i = uint32(t.n)
	}
	if a.Is4() {
		t.v4[shardOf(a)][v4Key(a)] = i
	} else {
		t.v6[shardOf(a)][a.As16()] = i
	}
	t.n++
	return t.slot(i)
}

// remove forgets the subscriber under a; its slot is zeroed, so that a
// pointer to it kept by mistake reads an empty subscriber rather than
// another one's state, and so that what it referenced can be collected.
func (t *subscriberTable) remove(a netip.Addr) {
	var i uint32
	var ok bool
	if a.Is4() {
		sh := t.v4[shardOf(a)]
		if i, ok = sh[v4Key(a)]; ok {
			delete(sh, v4Key(a))
		}
	} else {
		sh := t.v6[shardOf(a)]
		if i, ok = sh[a.As16()]; ok {
			delete(sh, a.As16())
		}
	}
	if !ok {
		return
	}
	*t.slot(i) = subscriber{}
	t.free = append(t.free, i)
	t.n--
}

// shard yields the subscribers of one shard, in no particular order. The
// loop may remove the subscriber it is given.
func (t *subscriberTable) shard(i int) iter.Seq2[netip.Addr, *subscriber] {
	return func(yield func(netip.Addr, *subscriber) bool) {
		for k, slot := range t.v4[i] {
			if !yield(v4Addr(k), t.slot(slot)) {
				return
			}
		}
		for k, slot := range t.v6[i] {
			if !yield(netip.AddrFrom16(k), t.slot(slot)) {
				return
			}
		}
	}
}
