package network

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "192.0.2.0/24", want: "192.0.2.0/24"},
		{in: " 192.0.2.7/24 ", want: "192.0.2.0/24"},
		{in: "192.0.2.25", want: "192.0.2.25/32"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "::ffff:192.0.2.1", want: "192.0.2.1/32"},
		{in: "::ffff:192.0.2.0/120", want: "192.0.2.0/24"},
		{in: "192.0.2.0/33", bad: true},
		{in: "mail.example.net", bad: true},
		{in: "", bad: true},
	} {
		p, err := ParsePrefix(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParsePrefix(%q) = %s, want an error", tc.in, p)
			}
			continue
		}
		if err != nil || p.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %s, %v, want %s", tc.in, p, err, tc.want)
		}
	}
}

func TestPrefixYAML(t *testing.T) {
	var got struct {
		Networks []Prefix `yaml:"networks"`
	}
	if err := yaml.Unmarshal([]byte("networks: [192.0.2.0/24, 198.51.100.9, '2001:db8::/48']"), &got); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, p := range got.Networks {
		b, _ := p.MarshalText()
		texts = append(texts, string(b))
	}
	if diff := cmp.Diff([]string{"192.0.2.0/24", "198.51.100.9/32", "2001:db8::/48"}, texts); diff != "" {
		t.Errorf("networks (-want +got):\n%s", diff)
	}
	if err := yaml.Unmarshal([]byte("networks: [not-a-network]"), &got); err == nil {
		t.Error("a bad network was accepted")
	}
}

func TestTableLongestPrefixFirstEntryWins(t *testing.T) {
	tab := NewTable[string]()
	tab.Insert(netip.MustParsePrefix("10.0.0.0/8"), "wide")
	tab.Insert(netip.MustParsePrefix("10.1.0.0/16"), "narrow")
	tab.Insert(netip.MustParsePrefix("10.1.0.0/16"), "duplicate, ignored")
	tab.Insert(netip.MustParsePrefix("::ffff:192.0.2.0/120"), "mapped")
	tab.Insert(netip.MustParsePrefix("2001:db8::/32"), "v6")
	for _, tc := range []struct {
		addr, want string
		ok         bool
	}{
		{"10.2.3.4", "wide", true},
		{"10.1.3.4", "narrow", true},
		{"::ffff:10.1.3.4", "narrow", true},
		{"192.0.2.9", "mapped", true},
		{"2001:db8:1::1", "v6", true},
		{"11.0.0.1", "", false},
	} {
		got, ok := tab.Lookup(netip.MustParseAddr(tc.addr))
		if got != tc.want || ok != tc.ok {
			t.Errorf("Lookup(%s) = %q, %v, want %q, %v", tc.addr, got, ok, tc.want, tc.ok)
		}
	}
	if tab.Len() != 4 {
		t.Errorf("Len = %d, want 4", tab.Len())
	}
	var empty *Table[int]
	if _, ok := empty.Lookup(netip.MustParseAddr("10.0.0.1")); ok || empty.Len() != 0 {
		t.Error("a nil table found something")
	}
}

func TestSet(t *testing.T) {
	s := NewSet(MustParsePrefix("192.0.2.0/24"), MustParsePrefix("2001:db8::7"))
	for addr, want := range map[string]bool{
		"192.0.2.200": true, "::ffff:192.0.2.1": true, "192.0.3.1": false,
		"2001:db8::7": true, "2001:db8::8": false,
	} {
		if got := s.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	var none *Set
	if none.Contains(netip.MustParseAddr("192.0.2.1")) {
		t.Error("a nil set holds an address")
	}
}

func TestSetOverlaps(t *testing.T) {
	s := NewSet(MustParsePrefix("192.0.2.25"), MustParsePrefix("198.51.100.128/25"), MustParsePrefix("2001:db8:0:1::/64"))
	for pfx, want := range map[string]bool{
		"192.0.2.25/32": true, "192.0.2.16/28": true, "192.0.2.0/24": true, "192.0.2.32/28": false,
		"198.51.100.0/24": true, "198.51.100.200/32": true, "198.51.100.0/25": false,
		"::ffff:192.0.2.0/120": true, "2001:db8::/48": true, "2001:db8:0:1:1::/80": true, "2001:db8:0:2::/64": false,
	} {
		if got := s.Overlaps(MustParsePrefix(pfx).Prefix); got != want {
			t.Errorf("Overlaps(%s) = %v, want %v", pfx, got, want)
		}
	}
	var none *Set
	if none.Overlaps(MustParsePrefix("0.0.0.0/0").Prefix) {
		t.Error("a nil set overlaps a prefix")
	}
}

func TestSubscriberRule(t *testing.T) {
	space := NewSubscribers([]Prefix{MustParsePrefix("203.0.113.0/24")})
	sub, other, other2 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	sub2 := netip.MustParseAddr("203.0.113.6")
	for _, tc := range []struct {
		name     string
		s        Subscribers
		src, dst netip.Addr
		want     netip.Addr
		dir      Direction
		key      netip.Addr
	}{
		{"outbound", space, sub, other, sub, Outbound, sub},
		{"inbound", space, other, sub, sub, Inbound, sub},
		{"subscriber to subscriber is the sender's", space, sub, sub2, sub, Outbound, sub},
		{"transit", space, other, other2, netip.Addr{}, NoSubscriber, other},
		{"no space: every source", Subscribers{}, other, sub, other, Outbound, other},
	} {
		got, dir := tc.s.Of(tc.src, tc.dst)
		if got != tc.want || dir != tc.dir {
			t.Errorf("%s: Of = %s, %d, want %s, %d", tc.name, got, dir, tc.want, tc.dir)
		}
		if key := tc.s.Key(tc.src, tc.dst); key != tc.key {
			t.Errorf("%s: Key = %s, want %s", tc.name, key, tc.key)
		}
	}
	if !NewSubscribers(nil).Everyone() || space.Everyone() {
		t.Error("Everyone is wrong")
	}
}

func BenchmarkTableLookup(b *testing.B) {
	tab := NewTable[int]()
	for i := range 4096 {
		tab.Insert(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), i)
	}
	a := netip.MustParseAddr("10.3.7.9")
	for b.Loop() {
		tab.Lookup(a)
	}
}
