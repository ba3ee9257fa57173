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
//
// An IPv6 subscriber is a prefix, not an address: a host picks new
// privacy addresses (RFC 8981) within its /64 every day or at will, and
// a customer with a delegated prefix numbers a whole LAN from it. Of and
// Key return the prefix's first address (subscriber_prefix_v6 bits, 64
// by default), so that one customer's addresses are one subscriber for
// detection, alerts, the console and the block list; Label writes it as
// the prefix. An IPv4 subscriber stays one address.
type Subscribers struct {
	set    *Set
	v6Bits uint8 // 0 means DefaultPrefixV6
}

// DefaultPrefixV6 is the IPv6 subscriber prefix length: the /64 every
// access network gives one customer's LAN (RFC 6177 suggests /56 or /48
// for delegated prefixes; configure 56 where the ISP delegates /56s).
const DefaultPrefixV6 = 64

// NewSubscribers returns the subscriber space of the given networks, with
// IPv6 subscribers of DefaultPrefixV6 bits.
func NewSubscribers(networks []Prefix) Subscribers {
	if len(networks) == 0 {
		return Subscribers{}
	}
	return Subscribers{set: NewSet(networks...)}
}

// WithPrefixV6 returns s with IPv6 subscribers of bits (1 to 128).
func (s Subscribers) WithPrefixV6(bits int) Subscribers {
	s.v6Bits = uint8(bits)
	return s
}

// PrefixV6 is the length of an IPv6 subscriber prefix.
func (s Subscribers) PrefixV6() int {
	if s.v6Bits == 0 {
		return DefaultPrefixV6
	}
	return int(s.v6Bits)
}

// Subscriber returns the subscriber a holds: a itself for IPv4, the first
// address of its prefix for IPv6.
func (s Subscribers) Subscriber(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if !a.Is6() {
		return a
	}
	p, err := a.Prefix(s.PrefixV6())
	if err != nil {
		return a
	}
	return p.Addr()
}

// Label writes a subscriber as alerts, the console and the block list
// show it: the address for IPv4, the prefix for IPv6 (2001:db8:1:2::/64).
func (s Subscribers) Label(a netip.Addr) string {
	a = s.Subscriber(a)
	if !a.IsValid() {
		return ""
	}
	if a.Is6() && s.PrefixV6() < 128 {
		return netip.PrefixFrom(a, s.PrefixV6()).String()
	}
	return a.String()
}

// Prefix is the network a subscriber covers: /32, or its IPv6 prefix.
func (s Subscribers) Prefix(a netip.Addr) netip.Prefix {
	a = s.Subscriber(a)
	if a.Is6() {
		return netip.PrefixFrom(a, s.PrefixV6())
	}
	return netip.PrefixFrom(a, a.BitLen())
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
		return s.Subscriber(src), Outbound
	case s.set.Contains(dst):
		return s.Subscriber(dst), Inbound
	}
	return netip.Addr{}, NoSubscriber
}

// Key is the Kafka key of a flow: its subscriber, or its source when it
// has none (such flows are kept, not evaluated).
func (s Subscribers) Key(src, dst netip.Addr) netip.Addr {
	if a, dir := s.Of(src, dst); dir != NoSubscriber {
		return a
	}
	return s.Subscriber(src)
}

// Everyone tells whether no subscriber space is configured.
func (s Subscribers) Everyone() bool { return s.set == nil }
