package network

import "net/netip"

// Subscribers is the ISP's subscriber space (subscriber_networks) and the
// one rule, used by every stage, for which address of a flow is the
// subscriber:
//
//   - the source, when it lies in the subscriber space: the flow is
//     outbound, sent by the subscriber, and is what the detector evaluates;
//   - else the destination, when it lies in the subscriber space: the flow
//     is inbound, traffic the subscriber received; it is stored and shown
//     with that subscriber but never evaluated as its behaviour;
//   - else the flow has no subscriber (transit, or the ISP's own servers).
//
// An empty subscriber space means every source is a subscriber, so that
// wormsign works before anyone has configured it: every flow is outbound.
//
// The collector keys each flow by Key (so that one subscriber's flows, in
// and out, land in one partition, in order) and the detector evaluates a
// flow only when Of says it is outbound.
type Subscribers struct{ set *Set }

// NewSubscribers returns the subscriber space of the given networks.
func NewSubscribers(networks []Prefix) Subscribers {
	if len(networks) == 0 {
		return Subscribers{}
	}
	return Subscribers{set: NewSet(networks...)}
}

// Direction tells how a flow relates to its subscriber.
type Direction uint8

// Directions of a flow relative to the subscriber space.
const (
	NoSubscriber Direction = iota
	Outbound               // the source is the subscriber
	Inbound                // the destination is the subscriber
)

// Of returns the flow's subscriber and direction.
func (s Subscribers) Of(src, dst netip.Addr) (netip.Addr, Direction) {
	switch {
	case s.set == nil || s.set.Contains(src):
		return src, Outbound
	case s.set.Contains(dst):
		return dst, Inbound
	}
	return netip.Addr{}, NoSubscriber
}

// Key is the Kafka key of a flow: its subscriber, or its source when it
// has none (such flows are kept, not evaluated).
func (s Subscribers) Key(src, dst netip.Addr) netip.Addr {
	if a, dir := s.Of(src, dst); dir != NoSubscriber {
		return a
	}
	return src
}

// Everyone tells whether no subscriber space is configured.
func (s Subscribers) Everyone() bool { return s.set == nil }
