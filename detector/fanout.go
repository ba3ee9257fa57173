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
type fanout struct {
	lastSeen  map[netip.Addr]int64 // destination → minute of last contact
	ring      []bucket             // len = minutes of the longest window
	latest    int64                // newest minute seen
	sample    []netip.Addr         // first destinations, in contact order
	saturated bool                 // lastSeen hit its cap
}

type bucket struct {
	minute   int64
	distinct uint64
	flows    uint64
	failed   uint64
}

func newFanout(minutes int) *fanout {
	return &fanout{lastSeen: map[netip.Addr]int64{}, ring: make([]bucket, minutes), latest: -1 << 62}
}

func (f *fanout) oldest() int64 { return f.latest - int64(len(f.ring)) + 1 }

// slot returns the bucket of minute, resetting a slot left by an older minute.
func (f *fanout) slot(minute int64) *bucket {
	b := &f.ring[int(minute%int64(len(f.ring)))]
	if b.minute != minute {
		*b = bucket{minute: minute}
	}
	return b
}

// add records one flow to dst ending in minute. scale is the sampling
// multiplier for flow counts. It reports false for a flow older than the
// longest window, which can no longer change any count.
func (f *fanout) add(dst netip.Addr, minute int64, failed bool, scale uint64, maxDsts, sampleSize int) bool {
	if minute > f.latest {
		f.latest = minute
		f.prune()
	}
	if minute < f.oldest() {
		return false
	}
	b := f.slot(minute)
	b.flows += scale
	if failed {
		b.failed += scale
	}
	prev, seen := f.lastSeen[dst]
	switch {
	case !seen:
		if len(f.lastSeen) >= maxDsts {
			f.saturated = true
			return true
		}
		if len(f.sample) < sampleSize {
			f.sample = append(f.sample, dst)
		}
	case minute <= prev:
		return true
	default:
		if prev >= f.oldest() {
			if pb := &f.ring[int(prev%int64(len(f.ring)))]; pb.minute == prev {
				pb.distinct--
			}
		}
	}
	f.lastSeen[dst] = minute
	b.distinct++
	return true
}

// prune forgets destinations last contacted before the longest window.
func (f *fanout) prune() {
	oldest := f.oldest()
	for dst, m := range f.lastSeen {
		if m < oldest {
			delete(f.lastSeen, dst)
		}
	}
	if len(f.lastSeen) == 0 {
		f.sample = f.sample[:0]
		f.saturated = false
	}
}

// window sums the last minutes buckets ending at the newest minute.
func (f *fanout) window(minutes int) (distinct, flows, failed uint64) {
	for m := f.latest - int64(minutes) + 1; m <= f.latest; m++ {
		b := &f.ring[int(m%int64(len(f.ring)))]
		if b.minute == m {
			distinct += b.distinct
			flows += b.flows
			failed += b.failed
		}
	}
	return distinct, flows, failed
}

// empty reports whether nothing is left in the longest window.
func (f *fanout) empty() bool { return len(f.lastSeen) == 0 }
