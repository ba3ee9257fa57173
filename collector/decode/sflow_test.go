package decode

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
)

// sFlow v5 datagrams for the tests, built field by field (sFlow v5
// specification: sample_datagram_v5, flow_sample, expanded_flow_sample,
// sampled_header).

func sflowDatagram(samples ...[]byte) []byte {
	return nfbuild.Cat(nfbuild.U32(5), nfbuild.U32(1), []byte{192, 0, 2, 20}, // version, IPv4 agent
		nfbuild.U32(3), nfbuild.U32(1), nfbuild.U32(1000), // sub-agent, sequence, uptime
		nfbuild.U32(uint32(len(samples))), nfbuild.Cat(samples...))
}

// sflowSample is a sample or record: format, length, body.
func sflowSample(format uint32, body ...[]byte) []byte {
	b := nfbuild.Cat(body...)
	return nfbuild.Cat(nfbuild.U32(format), nfbuild.U32(uint32(len(b))), b)
}

// flowSample is a flow sample at 1:100 from interface 4 to 5.
func flowSample(records ...[]byte) []byte {
	return sflowSample(1, nfbuild.U32(1), nfbuild.U32(4), nfbuild.U32(100), nfbuild.U32(1000), nfbuild.U32(0),
		nfbuild.U32(4), nfbuild.U32(5), nfbuild.U32(uint32(len(records))), nfbuild.Cat(records...))
}

// expandedFlowSample is flowSample in the expanded format.
func expandedFlowSample(records ...[]byte) []byte {
	return sflowSample(3, nfbuild.U32(1), nfbuild.U32(0), nfbuild.U32(4), nfbuild.U32(100), nfbuild.U32(1000), nfbuild.U32(0),
		nfbuild.U32(0), nfbuild.U32(4), nfbuild.U32(0), nfbuild.U32(5), nfbuild.U32(uint32(len(records))), nfbuild.Cat(records...))
}

// rawHeader is a sampled_header record of the given header protocol, of
// a frame 4 bytes longer than the header (the FCS).
func rawHeader(protocol uint32, header []byte) []byte {
	padded := nfbuild.Cat(header, make([]byte, (4-len(header)%4)%4))
	return sflowSample(1, nfbuild.U32(protocol), nfbuild.U32(uint32(len(header)+4)), nfbuild.U32(4),
		nfbuild.U32(uint32(len(header))), padded)
}

// packet serializes the layers of a sampled packet.
func packet(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var (
	sfSrc4 = netip.MustParseAddr("203.0.113.5")
	sfDst4 = netip.MustParseAddr("198.51.100.7")
	sfSrc6 = netip.MustParseAddr("2001:db8::5")
	sfDst6 = netip.MustParseAddr("2001:db8::7")
)

func eth(typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: typ}
}

func ip4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: sfSrc4.AsSlice(), DstIP: sfDst4.AsSlice()}
}

func ip6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: sfSrc6.AsSlice(), DstIP: sfDst6.AsSlice()}
}

func icmp4(typ, code uint8) *layers.ICMPv4 {
	return &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Id: 0x448d, Seq: 1}
}

func icmp6(typ, code uint8) gopacket.SerializableLayer {
	// Type, code, checksum, then the message body (echo identifier and
	// sequence, or the unused word of an error).
	return gopacket.Payload{typ, code, 0, 0, 0x44, 0x8d, 0, 1}
}

// tcp is a TCP header from port 40000 to 25.
func tcp(syn, ack bool) *layers.TCP {
	return &layers.TCP{SrcPort: 40000, DstPort: 25, SYN: syn, ACK: ack, Seq: 1, Window: 64240}
}

// sflowFields is what the sFlow tests look at in a decoded flow.
type sflowFields struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto, TCPFlags  uint8
	Bytes            uint64
}

func sflowFieldsOf(f flow.Flow) sflowFields {
	return sflowFields{f.SrcAddr, f.DstAddr, f.SrcPort, f.DstPort, f.Proto, f.TCPFlags, f.Bytes}
}

// TestSFlowSampledHeaders checks the fields read from sampled packet
// headers: type<<8|code in the destination port for ICMP and ICMPv6, TCP
// flags from the TCP header, through VLAN tags, MPLS, IP options and raw
// IP headers.
func TestSFlowSampledHeaders(t *testing.T) {
	ipOptions := ip4(layers.IPProtocolTCP)
	// Record route (7) with room for 9 addresses: a 60-byte IPv4 header.
	ipOptions.Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 39, OptionData: append([]byte{4}, make([]byte, 36)...)}}
	icmpOptions := ip4(layers.IPProtocolICMPv4)
	icmpOptions.Options = ipOptions.Options
	fragment := ip4(layers.IPProtocolICMPv4)
	fragment.FragOffset = 185 // 1480 bytes in: echo data, not an ICMP header
	// An ICMP error quotes the IP and UDP headers of the packet it is
	// about: the ports there are not this packet's.
	quoted := packet(t, ip4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 53, DstPort: 33434})

	tcp4 := sflowFields{sfSrc4, sfDst4, 40000, 25, 6, 0, 0}
	with := func(f sflowFields, flags uint8) sflowFields { f.TCPFlags = flags; return f }
	icmpV4 := func(dport uint16) sflowFields { return sflowFields{sfSrc4, sfDst4, 0, dport, 1, 0, 0} }
	icmpV6 := func(dport uint16) sflowFields { return sflowFields{sfSrc6, sfDst6, 0, dport, 58, 0, 0} }

	cases := []struct {
		name     string
		protocol uint32 // sFlow header protocol
		header   []byte
		want     sflowFields // Bytes: the header's length + 4
	}{
		{"ICMP echo request", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4), icmp4(8, 0), gopacket.Payload(make([]byte, 32))),
			icmpV4(8 << 8)},
		{"ICMP echo reply", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4), icmp4(0, 0), gopacket.Payload(make([]byte, 32))),
			icmpV4(0)},
		{"ICMP port unreachable quoting UDP", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4), icmp4(3, 3), gopacket.Payload(quoted)),
			icmpV4(3<<8 | 3)},
		{"ICMP time exceeded, IP options", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), icmpOptions, icmp4(11, 0)),
			icmpV4(11 << 8)},
		{"ICMP non-first fragment: no type", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), fragment, gopacket.Payload{8, 0, 1, 2, 3, 4, 5, 6}),
			icmpV4(0)},
		{"ICMPv6 echo request", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolICMPv6), icmp6(128, 0)),
			icmpV6(128 << 8)},
		{"ICMPv6 echo reply", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolICMPv6), icmp6(129, 0)),
			icmpV6(129 << 8)},
		{"ICMPv6 neighbour solicitation", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolICMPv6), icmp6(135, 0)),
			icmpV6(135 << 8)},
		{"ICMPv6 port unreachable", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolICMPv6), icmp6(1, 4)),
			icmpV6(1<<8 | 4)},
		{"ICMP in a raw IPv4 header (protocol 11)", headerIPv4,
			packet(t, ip4(layers.IPProtocolICMPv4), icmp4(8, 0)),
			icmpV4(8 << 8)},
		{"ICMPv6 in a raw IPv6 header (protocol 12)", headerIPv6,
			packet(t, ip6(layers.IPProtocolICMPv6), icmp6(129, 0)),
			icmpV6(129 << 8)},
		{"ICMP after an 802.1Q tag", headerEthernet,
			packet(t, eth(layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 10, Type: layers.EthernetTypeIPv4},
				ip4(layers.IPProtocolICMPv4), icmp4(8, 0)),
			icmpV4(8 << 8)},
		{"ICMP after an MPLS label", headerEthernet,
			packet(t, eth(layers.EthernetTypeMPLSUnicast), &layers.MPLS{Label: 100, StackBottom: true, TTL: 64},
				ip4(layers.IPProtocolICMPv4), icmp4(0, 0)),
			icmpV4(0)},
		{"TCP SYN", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), tcp(true, false)),
			with(tcp4, flow.TCPSyn)},
		{"TCP SYN-ACK", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), tcp(true, true)),
			with(tcp4, flow.TCPSyn|flow.TCPAck)},
		{"TCP SYN, IP options", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ipOptions, tcp(true, false)),
			with(tcp4, flow.TCPSyn)},
		{"TCP SYN-ACK in QinQ", headerEthernet,
			packet(t, eth(layers.EthernetTypeQinQ), &layers.Dot1Q{VLANIdentifier: 100, Type: layers.EthernetTypeDot1Q},
				&layers.Dot1Q{VLANIdentifier: 10, Type: layers.EthernetTypeIPv4}, ip4(layers.IPProtocolTCP), tcp(true, true)),
			with(tcp4, flow.TCPSyn|flow.TCPAck)},
		{"TCP SYN over IPv6", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolTCP), tcp(true, false)),
			sflowFields{sfSrc6, sfDst6, 40000, 25, 6, flow.TCPSyn, 0}},
		{"TCP header cut before the flags: ports only", headerEthernet,
			packet(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), gopacket.Payload{0x9c, 0x40, 0, 25, 0, 0, 0, 1}),
			tcp4},
	}
	from := netip.MustParseAddrPort("192.0.2.20:6343")
	for _, tc := range cases {
		tc.want.Bytes = uint64(len(tc.header) + 4)
		for _, sample := range []struct {
			name string
			make func(...[]byte) []byte
		}{{"flow sample", flowSample}, {"expanded flow sample", expandedFlowSample}} {
			t.Run(tc.name+"/"+sample.name, func(t *testing.T) {
				dg := sflowDatagram(sample.make(rawHeader(tc.protocol, tc.header)))
				flows, _, err := newDecoder(false).Decode(FamilySFlow, from, dg, 1700000000000, nil)
				if err != nil || len(flows) != 1 {
					t.Fatalf("decoded %d flows, %v; want 1", len(flows), err)
				}
				if got := sflowFieldsOf(flows[0]); got != tc.want {
					t.Errorf("got  %+v\nwant %+v", got, tc.want)
				}
				if f := flows[0]; f.SamplingRate != 100 || f.InIf != 4 || f.OutIf != 5 || f.Packets != 1 || f.Type != flow.TypeSFlow5 {
					t.Errorf("rate %d, interfaces %d/%d, %d packets, type %v; want 100, 4/5, 1, sflow5", f.SamplingRate, f.InIf, f.OutIf, f.Packets, f.Type)
				}
			})
		}
	}
}

// BenchmarkDecodeSFlow decodes an sFlow datagram of benchSamples flow
// samples of TCP packet headers, each with an extended switch record as
// switches send them.
func BenchmarkDecodeSFlow(b *testing.B) {
	const benchSamples = 8
	header := packet(b, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), tcp(true, false), gopacket.Payload(make([]byte, 64)))
	extSwitch := sflowSample(1001, nfbuild.U32(10), nfbuild.U32(0), nfbuild.U32(10), nfbuild.U32(0))
	var samples [][]byte
	for range benchSamples {
		samples = append(samples, flowSample(extSwitch, rawHeader(headerEthernet, header)))
	}
	dg := sflowDatagram(samples...)
	d := newDecoder(false)
	from := netip.MustParseAddrPort("192.0.2.20:6343")
	out := make([]flow.Flow, 0, benchSamples)
	var rep Report
	out, err := d.DecodeReport(FamilySFlow, from, dg, 1700000000000, out, &rep)
	if err != nil || len(out) != benchSamples {
		b.Fatalf("decoded %d flows, %v; want %d", len(out), err, benchSamples)
	}
	b.SetBytes(int64(len(dg)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		out, _ = d.DecodeReport(FamilySFlow, from, dg, 1700000000000, out[:0], &rep)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchSamples), "ns/sample")
}
