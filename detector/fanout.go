package detector

import "net/netip"

// fanout counts distinct destinations of one subscriber over sliding
// event-time windows built from one-minute buckets.
//
// Each destination remembers the last minute it was contacted, and each
// bucket counts the destinations whose last contact fell in it. A window's
// distinct count is then the sum of its buckets: a destination contacted in
// several minutes is counted once, in the latest. Moving a destination from
// one bucket to a later one is O(1), so the count stays exact and cheap.
//
// Past maxDsts destinations the exact set is dropped and every bucket
// keeps a HyperLogLog sketch instead; a window's count is then the
// estimate of the union of its buckets' sketches. Putting each known
// destination in the sketch of its last minute when switching keeps the
// union exact in meaning: a destination is in a window iff its last
// contact is.
type fanout struct {
	lastSeen  map[netip.Addr]int64 // destination → minute of last contact; nil once saturated
	ring      []bucket             // len = minutes of the longest window
	latest    int64                // newest minute seen
	sample    []netip.Addr         // first destinations, in contact order
	saturated bool                 // beyond maxDsts: counting with sketches
}

type bucket struct {
	minute   int64
	distinct uint64
	flows    uint64
	failed   uint64
	sketch   *hll // only when saturated
}

func newFanout(minutes int) *fanout {
	return &fanout{lastSeen: map[netip.Addr]int64{}, ring: make([]bucket, minutes), latest: -1 << 62}
}

func (f *fanout) oldest() int64 { return f.latest - int64(len(f.ring)) + 1 }

func (f *fanout) at(minute int64) *bucket {
	i := minute % int64(len(f.ring))
	if i < 0 {
		i += int64(len(f.ring))
	}
	return &f.ring[i]
}

// slot returns the bucket of minute, resetting a slot left by an older minute.
func (f *fanout) slot(minute int64) *bucket {
	b := f.at(minute)
	if b.minute != minute {
		*b = bucket{minute: minute}
	}
	return b
}

// addFirst records one flow to dst ending in minute. scale is the sampling
// multiplier for flow counts. It reports whether dst is a first contact
// (not seen in the longest window) and false in ok for a flow older than
// the longest window, which can no longer change any count.
func (f *fanout) addFirst(dst netip.Addr, minute int64, failed bool, scale uint64, maxDsts, sampleSize int) (first, ok bool) {
	if minute > f.latest {
		f.latest = minute
		f.prune()
	}
	if minute < f.oldest() {
		return false, false
	}
	b := f.slot(minute)
	b.flows += scale
	if failed {
		b.failed += scale
	}
	if f.saturated {
		if b.sketch == nil {
			b.sketch = new(hll)
		}
		b.sketch.add(hashAddr(dst))
		return false, true
	}
	prev, seen := f.lastSeen[dst]
	switch {
	case !seen:
		if len(f.lastSeen) >= maxDsts {
			f.saturate()
			return f.addFirst(dst, minute, false, 0, maxDsts, sampleSize)
		}
		first = true
		if len(f.sample) < sampleSize {
			f.sample = append(f.sample, dst)
		}
	case minute <= prev:
		return false, true
	default:
		if prev >= f.oldest() {
			if pb := f.at(prev); pb.minute == prev {
				pb.distinct--
			}
		}
	}
	f.lastSeen[dst] = minute
	b.distinct++
	return first, true
}

// saturate switches from the exact set to per-bucket sketches.
func (f *fanout) saturate() {
	for dst, m := range f.lastSeen {
		b := f.at(m)
		if b.minute != m {
			continue
		}
		if b.sketch == nil {
			b.sketch = new(hll)
		}
		b.sketch.add(hashAddr(dst))
	}
	f.lastSeen = nil
	f.saturated = true
}

// prune forgets destinations last contacted before the longest window and
// returns to exact counting once every sketch has left it.
func (f *fanout) prune() {
	oldest := f.oldest()
	if f.saturated {
		for i := range f.ring {
			if f.ring[i].sketch != nil && f.ring[i].minute >= oldest {
				return
			}
		}
		f.saturated = false
		f.lastSeen = map[netip.Addr]int64{}
		f.sample = f.sample[:0]
		return
	}
	for dst, m := range f.lastSeen {
		if m < oldest {
			delete(f.lastSeen, dst)
		}
	}
	if len(f.lastSeen) == 0 {
		f.sample = f.sample[:0]
	}
}

// window sums the last minutes buckets ending at the newest minute.
func (f *fanout) window(minutes int) (distinct, flows, failed uint64) {
	var union *hll
	for m := f.latest - int64(minutes) + 1; m <= f.latest; m++ {
		b := f.at(m)
		if b.minute != m {
			continue
		}
		distinct += b.distinct
		flows += b.flows
		failed += b.failed
		if f.saturated && b.sketch != nil {
			if union == nil {
				union = new(hll)
			}
			union.merge(b.sketch)
		}
	}
	if f.saturated {
		distinct = 0
		if union != nil {
			distinct = union.estimate()
		}
	}
	return distinct, flows, failed
}

// empty reports whether nothing is left in the longest window.
func (f *fanout) empty() bool {
	if f.saturated {
		return false
	}
	return len(f.lastSeen) == 0
}
