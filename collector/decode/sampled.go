package decode

import "github.com/wormsign/wormsign/flow"

// The packet header of an sFlow flow sample is read here rather than by
// goflow's producer, which assumes a 20-byte IPv4 header (reading the
// ports, TCP flags and ICMP type of a packet with IP options from the
// options), reads the data of a non-first fragment as a transport header,
// skips raw IPv4/IPv6 headers (header protocols 11 and 12) and QinQ
// frames, and leaves ICMP's type and code out of the destination port.

// sFlow header protocols (sFlow v5, sampled_header).
const (
	headerEthernet = 1
	headerIPv4     = 11
	headerIPv6     = 12
)

// EtherTypes on the way from an Ethernet header to the IP packet.
const (
	etherIPv4   = 0x0800
	etherIPv6   = 0x86dd
	etherVLAN   = 0x8100 // 802.1Q
	etherQinQ   = 0x88a8 // 802.1ad
	etherQinQv1 = 0x9100 // pre-802.1ad QinQ
	etherMPLS   = 0x8847
)

// readSampledHeader sets f's addresses, protocol, ports and TCP flags from
// a sampled packet header h of the given sFlow header protocol. Anything
// it cannot read leaves f as it is.
func readSampledHeader(f *flow.Flow, protocol uint32, h []byte) {
	switch protocol {
	case headerEthernet:
		readIP(f, ethernetPayload(h))
	case headerIPv4, headerIPv6:
		readIP(f, h)
	}
}

// ethernetPayload returns the IP packet of an Ethernet frame, after its
// VLAN tags and MPLS labels, or nil.
func ethernetPayload(h []byte) []byte {
	if len(h) < 14 {
		return nil
	}
	etherType, p := be16(h[12:]), h[14:]
	for (etherType == etherVLAN || etherType == etherQinQ || etherType == etherQinQv1) && len(p) >= 4 {
		etherType, p = be16(p[2:]), p[4:]
	}
	switch etherType {
	case etherIPv4, etherIPv6:
		return p
	case etherMPLS:
		// Labels up to the one with the bottom-of-stack bit; readIP
		// checks that an IP packet follows.
		for len(p) >= 4 {
			bottom := p[2]&1 == 1
			p = p[4:]
			if bottom {
				return p
			}
		}
	}
	return nil
}

// readIP sets f from the IPv4 or IPv6 packet p. IPv6 extension headers are
// not followed: the protocol is the first next header, as goflow had it.
func readIP(f *flow.Flow, p []byte) {
	var l4 []byte
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		f.SrcAddr, f.DstAddr = addrFrom(p[12:16]), addrFrom(p[16:20])
		f.Proto = p[9]
		headerLen := int(p[0]&0x0f) * 4
		// Only the first fragment (offset 0) starts with the transport
		// header; the others carry data.
		if headerLen >= 20 && headerLen <= len(p) && be16(p[6:])&0x1fff == 0 {
			l4 = p[headerLen:]
		}
	case len(p) >= 40 && p[0]>>4 == 6:
		f.SrcAddr, f.DstAddr = addrFrom(p[8:24]), addrFrom(p[24:40])
		f.Proto = p[6]
		l4 = p[40:]
	default:
		return
	}
	f.SrcPort, f.DstPort, f.TCPFlags = 0, 0, 0
	switch f.Proto {
	case flow.ProtoTCP:
		if len(l4) >= 14 {
			f.TCPFlags = l4[13]
		}
		fallthrough
	case protoUDP:
		if len(l4) >= 4 {
			f.SrcPort, f.DstPort = be16(l4), be16(l4[2:])
		}
	case protoICMP, protoICMPv6:
		// The NetFlow convention the detector reads: type<<8|code in the
		// destination port.
		if len(l4) >= 2 {
			f.DstPort = uint16(l4[0])<<8 | uint16(l4[1])
		}
	}
}
