package detector

import (
	"net/netip"
	"sync/atomic"
)

// SubscriberBudget is max_subscribers for the engines of one detector
// instance together. Without it a flood of spoofed sources, or one IPv6
// host walking its /64, would grow a detector until the kernel kills it.
type SubscriberBudget struct {
	limit int64
	used  atomic.Int64
}

// NewSubscriberBudget returns a budget of limit subscribers; 0 is none.
func NewSubscriberBudget(limit int) *SubscriberBudget { return &SubscriberBudget{limit: int64(limit)} }

// displaceCandidates is how many subscribers of the shard are looked at
// for one to give way: the least recently active of a few is close to the
// least recently active of all, for a constant cost per new subscriber.
const displaceCandidates = 8

// makeRoom tells whether a new subscriber may get state. At the budget,
// the least recently active of a few subscribers of its shard gives way;
// one with an open incident never does (it would lose the incident and
// open it again under a new id), so when every candidate has one the
// newcomer is refused instead.
func (e *Engine) makeRoom(addr netip.Addr) bool {
	b := e.budget
	if b == nil || b.limit <= 0 || b.used.Load() < b.limit {
		return true
	}
	var victim netip.Addr
	var oldest int64
	n := 0
	// From the newcomer's shard on, so that an empty shard does not
	// refuse it while others are full.
	for i := range shards {
		for a, s := range e.table.shard((shardOf(addr) + i) % shards) {
			if n++; n > displaceCandidates {
				break
			}
			if s.hasIncident() {
				continue
			}
			if !victim.IsValid() || s.lastMs < oldest {
				victim, oldest = a, s.lastMs
			}
		}
		if n > displaceCandidates {
			break
		}
	}
	if !victim.IsValid() {
		e.stats.Refused++
		return false
	}
	e.drop(victim)
	e.stats.Displaced++
	return true
}

// drop forgets a subscriber without incidents.
func (e *Engine) drop(addr netip.Addr) {
	e.table.remove(addr)
	e.budget.used.Add(-1)
}
