// Package network holds what every stage needs to know about address space:
// a prefix as operators write it in the configuration (a prefix or a bare
// address), a longest-prefix table with a value, and the one rule that says
// which address of a flow is the subscriber.
package network

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/gaissmai/bart"
)

// Prefix is a network in the configuration. A bare address means that one
// host (/32 or /128), which is how operators list a single mail relay or
// exporter. IPv4-mapped IPv6 forms are stored as IPv4.
type Prefix struct{ netip.Prefix }

// ParsePrefix reads "192.0.2.0/24", "2001:db8::/32" or "192.0.2.25".
func ParsePrefix(s string) (Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Prefix{}, fmt.Errorf("invalid network %q: %w", s, err)
		}
		return Prefix{canonical(p)}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Prefix{}, fmt.Errorf("invalid network %q: want an address or a prefix", s)
	}
	a = a.Unmap()
	return Prefix{netip.PrefixFrom(a, a.BitLen())}, nil
}

// MustParsePrefix is ParsePrefix for tests and constants.
func MustParsePrefix(s string) Prefix {
	p, err := ParsePrefix(s)
	if err != nil {
		panic(err)
	}
	return p
}

// canonical masks p and turns ::ffff:a.b.c.d/n (n >= 96) into a.b.c.d/(n-96),
// so that an IPv4 address always matches, however the prefix was written.
func canonical(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// UnmarshalText lets YAML and WORMSIGN_* variables hold networks.
func (p *Prefix) UnmarshalText(b []byte) error {
	v, err := ParsePrefix(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText writes the prefix form.
func (p Prefix) MarshalText() ([]byte, error) { return []byte(p.Prefix.String()), nil }

// Table maps prefixes to values and finds the longest prefix holding an
// address. It is safe for concurrent lookups once filled.
type Table[V any] struct{ t bart.Table[V] }

// NewTable returns an empty table.
func NewTable[V any]() *Table[V] { return &Table[V]{} }

// Insert adds p → v unless p is there already: the first entry of a file or
// a list wins, as an operator reading it top down expects.
func (t *Table[V]) Insert(p netip.Prefix, v V) {
	p = canonical(p)
	if _, dup := t.t.Get(p); dup {
		return
	}
	t.t.Insert(p, v)
}

// Lookup returns the value of the longest prefix holding a.
func (t *Table[V]) Lookup(a netip.Addr) (V, bool) {
	if t == nil {
		var zero V
		return zero, false
	}
	return t.t.Lookup(a.Unmap())
}

// Len is the number of prefixes.
func (t *Table[V]) Len() int {
	if t == nil {
		return 0
	}
	return t.t.Size()
}

// Set is a set of networks: does any of them hold an address?
type Set struct{ t bart.Table[struct{}] }

// NewSet returns the set of the given prefixes.
func NewSet(prefixes ...Prefix) *Set {
	s := &Set{}
	for _, p := range prefixes {
		s.t.Insert(canonical(p.Prefix), struct{}{})
	}
	return s
}

// Contains tells whether a prefix of s holds a. A nil or empty set holds
// nothing.
func (s *Set) Contains(a netip.Addr) bool {
	if s == nil {
		return false
	}
	return s.t.Contains(a.Unmap())
}

// Overlaps tells whether p and a prefix of s share an address: p holds
// one of them or lies inside one. A nil or empty set overlaps nothing.
func (s *Set) Overlaps(p netip.Prefix) bool {
	if s == nil || !p.IsValid() {
		return false
	}
	return s.t.OverlapsPrefix(canonical(p))
}

// Len is the number of prefixes.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.t.Size()
}
