package detector

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Network is a prefix in the configuration; a bare address means that one
// host (/32 or /128), which is how operators list single mail relays.
type Network struct{ netip.Prefix }

// ParseNetwork reads "192.0.2.0/24" or "192.0.2.25".
func ParseNetwork(s string) (Network, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Network{}, fmt.Errorf("invalid network %q: %w", s, err)
		}
		return Network{p.Masked()}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Network{}, fmt.Errorf("invalid network %q: want an address or a prefix", s)
	}
	a = a.Unmap()
	return Network{netip.PrefixFrom(a, a.BitLen())}, nil
}

// MustParseNetwork is ParseNetwork for tests and constants.
func MustParseNetwork(s string) Network {
	n, err := ParseNetwork(s)
	if err != nil {
		panic(err)
	}
	return n
}

// UnmarshalText lets YAML and WORMSIGN_* variables hold networks.
func (n *Network) UnmarshalText(b []byte) error {
	v, err := ParseNetwork(string(b))
	if err != nil {
		return err
	}
	*n = v
	return nil
}

// MarshalText writes the prefix form.
func (n Network) MarshalText() ([]byte, error) { return []byte(n.Prefix.String()), nil }

// prefixTable finds the longest prefix holding an address. It tries one
// map lookup per prefix length in use, so a mapping file of a million
// subscriber addresses costs one lookup per flow, not a scan.
type prefixTable[V any] struct {
	v4, v6 []int // prefix lengths in use, longest first
	m      map[netip.Prefix]V
}

func newPrefixTable[V any]() *prefixTable[V] {
	return &prefixTable[V]{m: map[netip.Prefix]V{}}
}

// insert adds p → v unless p is already there (the first entry wins).
func (t *prefixTable[V]) insert(p netip.Prefix, v V) {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	if _, dup := t.m[p]; dup {
		return
	}
	t.m[p] = v
	lens := &t.v6
	if p.Addr().Is4() {
		lens = &t.v4
	}
	if !slices.Contains(*lens, p.Bits()) {
		*lens = append(*lens, p.Bits())
		slices.Sort(*lens)
		slices.Reverse(*lens)
	}
}

func (t *prefixTable[V]) lookup(a netip.Addr) (V, bool) {
	var zero V
	if t == nil || len(t.m) == 0 {
		return zero, false
	}
	a = a.Unmap()
	lens := t.v6
	if a.Is4() {
		lens = t.v4
	}
	for _, bits := range lens {
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if v, ok := t.m[p]; ok {
			return v, true
		}
	}
	return zero, false
}

func (t *prefixTable[V]) len() int {
	if t == nil {
		return 0
	}
	return len(t.m)
}
