package network

import (
	"net/netip"
	"testing"

	"github.com/wormsign/wormsign/flow"
)

const (
	fin = flow.TCPFin
	syn = flow.TCPSyn
	rst = flow.TCPRst
	psh = 0x08
	ack = flow.TCPAck
	urg = 0x20
)

func outbound(proto uint8, flags uint8, srcPort, dstPort uint16, startMs int64) flow.Flow {
	return flow.Flow{StartMs: startMs, EndMs: startMs + 500, SrcAddr: netip.MustParseAddr("203.0.113.5"),
		DstAddr: netip.MustParseAddr("198.18.0.25"), SrcPort: srcPort, DstPort: dstPort, Proto: proto, TCPFlags: flags, Packets: 3}
}

// Every combination of the six classic TCP flags, from a client port to a
// server port and back, sampled and not, with nothing received: only a SYN
// without ACK is an attempt, and a completed handshake (or a record
// without flags) is the client's.
func TestAttemptTCPFlagCombinations(t *testing.T) {
	for flags := range uint8(64) {
		for _, rate := range []uint32{0, 1, 1000} {
			synNoAck := flags&syn != 0 && flags&ack == 0
			// No flags at all is an exporter that sends none: the ports
			// decide, as for a completed handshake.
			handshake := flags&syn != 0 && flags&ack != 0 || flags == 0
			for _, tc := range []struct {
				name             string
				srcPort, dstPort uint16
				want             bool
			}{
				{"client to server", 40000, 25, synNoAck || handshake},
				{"server to client", 25, 40000, synNoAck},
			} {
				f := outbound(flow.ProtoTCP, flags, tc.srcPort, tc.dstPort, 1000)
				f.SamplingRate = rate
				if got := Attempt(&f, Received{}); got != tc.want {
					t.Errorf("flags %#02x, %s, 1:%d: Attempt = %v, want %v", flags, tc.name, rate, got, tc.want)
				}
				if NeedsExchange(&f) != handshake {
					t.Errorf("flags %#02x: NeedsExchange = %v, want %v", flags, !handshake, handshake)
				}
			}
		}
	}
}

// A completed handshake is told by what the remote sent first.
func TestAttemptHandshakeByReceived(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Received
		want bool
	}{
		{"nothing received: the ports say client", Received{}, true},
		{"a spoofed SYN came first and never acknowledged", Received{Known: true, StartMs: 1000, NeverAcked: true}, false},
		{"never acknowledged, even if later", Received{Known: true, StartMs: 5000, NeverAcked: true}, false},
		{"the remote began earlier: a server answering", Received{Known: true, StartMs: 999}, false},
		{"the remote began later: the subscriber called", Received{Known: true, StartMs: 1001}, true},
		{"same millisecond, acknowledged: the ports say client", Received{Known: true, StartMs: 1000}, true},
	} {
		f := outbound(flow.ProtoTCP, syn|ack|psh|fin, 40000, 25, 1000)
		if got := Attempt(&f, tc.in); got != tc.want {
			t.Errorf("%s: Attempt = %v, want %v", tc.name, got, tc.want)
		}
	}
	// The same tie from a well-known port is the subscriber's server.
	f := outbound(flow.ProtoTCP, syn|ack, 22, 40000, 1000)
	if Attempt(&f, Received{Known: true, StartMs: 1000}) {
		t.Error("a SYN-ACK from port 22 to a high port, same millisecond, counted as an attempt")
	}
	// What was received never turns a bare SYN or a RST around.
	g := outbound(flow.ProtoTCP, syn, 40000, 25, 1000)
	h := outbound(flow.ProtoTCP, rst|ack, 40000, 25, 1000)
	if !Attempt(&g, Received{Known: true, StartMs: 1, NeverAcked: true}) || Attempt(&h, Received{}) {
		t.Error("flags were overridden by what was received")
	}
}

// Every ICMP and ICMPv6 type and some codes: queries are attempts,
// replies, errors and unknown types are not, whatever was received;
// sampling changes nothing.
func TestAttemptICMPTypes(t *testing.T) {
	queries := map[uint8]map[int]bool{
		ProtoICMP:   {8: true, 10: true, 13: true, 15: true, 17: true, 42: true},
		ProtoICMPv6: {128: true, 133: true, 135: true, 139: true, 160: true},
	}
	for _, proto := range []uint8{ProtoICMP, ProtoICMPv6} {
		for typ := range 256 {
			for _, code := range []uint16{0, 1, 3, 13} {
				for _, rate := range []uint32{0, 512} {
					f := outbound(proto, 0, 0, uint16(typ)<<8|code, 1000)
					f.SamplingRate = rate
					// What was received does not matter for ICMP.
					in := Received{Known: true, StartMs: 2000}
					if got := Attempt(&f, in); got != queries[proto][typ] {
						t.Errorf("proto %d type %d code %d 1:%d: Attempt = %v, want %v", proto, typ, code, rate, got, !got)
					}
					if NeedsExchange(&f) {
						t.Errorf("proto %d type %d: ICMP needs no exchange", proto, typ)
					}
				}
			}
		}
	}
	// Port 8<<8 means echo only for ICMP: TCP to port 2048 is no query.
	tcp := outbound(flow.ProtoTCP, rst, 40000, 8<<8, 1000)
	if Attempt(&tcp, Received{}) {
		t.Error("TCP read as ICMP")
	}
}

// Flows without flags: what the remote sent first decides, ties
// included (a spoofed datagram and its reply often share one start);
// without it, the ports.
func TestAttemptWithoutFlags(t *testing.T) {
	for _, proto := range []uint8{ProtoUDP, flow.ProtoTCP, 47, 132} {
		for _, tc := range []struct {
			name             string
			srcPort, dstPort uint16
			in               Received
			want             bool
		}{
			{"query to a server", 40000, 53, Received{}, true},
			{"server answering a client", 53, 40000, Received{}, false},
			{"peer to peer, high ports", 40000, 50000, Received{}, true},
			{"well-known to well-known", 123, 123, Received{}, true},
			{"answers a datagram received earlier", 40000, 50000, Received{Known: true, StartMs: 900}, false},
			{"answers a datagram received in the same millisecond", 123, 123, Received{Known: true, StartMs: 1000}, false},
			{"the remote's datagram came after", 53, 40000, Received{Known: true, StartMs: 1100}, true},
			// An exporter cuts a long exchange into records; the
			// later ones keep the verdict of its beginning.
			{"a later record of the subscriber's flood, answered now and then", 40000, 9,
				Received{Known: true, StartMs: 950, SentStartMs: 900}, true},
			{"a later record of an exchange the remote began", 40000, 50000,
				Received{Known: true, StartMs: 800, SentStartMs: 900}, false},
		} {
			f := outbound(proto, 0, tc.srcPort, tc.dstPort, 1000)
			if got := Attempt(&f, tc.in); got != tc.want {
				t.Errorf("proto %d, %s: Attempt = %v, want %v", proto, tc.name, got, tc.want)
			}
		}
	}
	// A flow without a start is judged by its end.
	f := outbound(ProtoUDP, 0, 40000, 53, 0)
	f.EndMs = 1000
	if Attempt(&f, Received{Known: true, StartMs: 1000}) {
		t.Error("a flow without start time did not answer a datagram received at its end")
	}
}

func TestSubscriberPrefixV6(t *testing.T) {
	space := NewSubscribers([]Prefix{MustParsePrefix("203.0.113.0/24"), MustParsePrefix("2001:db8:100::/40")})
	for _, tc := range []struct {
		bits        int
		addr, label string
		prefix      string
	}{
		{64, "2001:db8:100:7:a:b:c:d", "2001:db8:100:7::/64", "2001:db8:100:7::/64"},
		{64, "2001:db8:100:7:ffff::1", "2001:db8:100:7::/64", "2001:db8:100:7::/64"},
		{56, "2001:db8:100:7f:1::1", "2001:db8:100::/56", "2001:db8:100::/56"},
		{128, "2001:db8:100:7::1", "2001:db8:100:7::1", "2001:db8:100:7::1/128"},
		{64, "203.0.113.9", "203.0.113.9", "203.0.113.9/32"},
		{64, "::ffff:203.0.113.9", "203.0.113.9", "203.0.113.9/32"},
	} {
		s := space.WithPrefixV6(tc.bits)
		a := netip.MustParseAddr(tc.addr)
		if got := s.Label(a); got != tc.label {
			t.Errorf("/%d: Label(%s) = %s, want %s", tc.bits, a, got, tc.label)
		}
		if got := s.Prefix(a).String(); got != tc.prefix {
			t.Errorf("/%d: Prefix(%s) = %s, want %s", tc.bits, a, got, tc.prefix)
		}
		remote := netip.MustParseAddr("2001:db8:ffff::1")
		sub, dir := s.Of(a, remote)
		in, indir := s.Of(remote, a)
		if dir != Outbound || indir != Inbound || sub != in || s.Key(a, remote) != sub || s.Label(sub) != tc.label {
			t.Errorf("/%d: Of(%s) = %s %d, inbound %s %d, key %s", tc.bits, a, sub, dir, in, indir, s.Key(a, remote))
		}
	}
	// Two privacy addresses of one /64 are one subscriber, of another /64
	// another one.
	s := space
	a, b, c := netip.MustParseAddr("2001:db8:100:7::a"), netip.MustParseAddr("2001:db8:100:7:1234::b"), netip.MustParseAddr("2001:db8:100:8::a")
	if s.Subscriber(a) != s.Subscriber(b) || s.Subscriber(a) == s.Subscriber(c) {
		t.Errorf("subscribers %s %s %s", s.Subscriber(a), s.Subscriber(b), s.Subscriber(c))
	}
}
