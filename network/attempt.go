package network

import "github.com/wormsign/wormsign/flow"

// What counts as the subscriber's own traffic. Anyone can make a
// subscriber's kernel answer: a spoofed SYN gets a SYN-ACK or a RST-ACK, a
// spoofed ACK a RST, a spoofed ping an echo reply, a spoofed datagram to
// an open UDP service its reply. The source of those answers is the
// subscriber, so every rule would count them as its behaviour, and a
// dozen packets from anywhere could open an incident and block an
// innocent customer. Every rule therefore counts only the outbound flows
// Attempt accepts, and this file is the one place that says which.
//
// In order, for an outbound flow f (its source is the subscriber):
//
//   - TCP with flags. SYN without ACK is an attempt (nobody answered, or
//     a RST did). No SYN (RST, ACK, RST-ACK, FIN-ACK, the data of a
//     long connection exported in pieces) is not: an answer, or the rest
//     of a connection counted when it began. SYN with ACK is a completed
//     handshake, begun by either side: it answers when the remote end
//     sent this very port pair a flow first (an earlier start), or one
//     that never acknowledged anything (a spoofed SYN met by an open
//     port); it is an attempt when the remote's flow began later; when
//     both began in the same millisecond or the remote's flow is unknown,
//     the ports decide (below). "Began" is the exchange's beginning: the
//     earliest start of the subscriber's flows on that port pair, so that
//     the later records of a long exchange (an exporter's active timeout
//     cuts it into pieces) keep the verdict of its first.
//   - ICMP and ICMPv6, by type (the NetFlow convention: type<<8|code in
//     the destination port, which the collector also fills from IPFIX's
//     ICMP elements): echo requests and the other queries are attempts;
//     replies and errors (unreachable, time exceeded, parameter problem,
//     ...) and unknown types are answers.
//   - UDP, other protocols and TCP without flags: an answer when the
//     remote end sent this port pair a flow that began no later than the
//     exchange; an attempt when its flow began later (a flood target that
//     answers now and then does not turn the flood into answers); else
//     the ports decide.
//   - The ports: a flow from a well-known port (below 1024) to a
//     registered or dynamic one (1024 and up) is a server answering; any
//     other is an attempt.
//
// The inbound flows decide before the ports do: they are what the
// subscriber was actually sent. A tie is an answer for flows without
// flags (the spoofed datagram and its reply are exported with one start
// time by many exporters) but not for TCP with flags, whose handshake
// shows a spoofer: only a real peer acknowledges.

// Received is what the detector remembers of one exchange: the flows a
// subscriber received from one remote address and port on one local
// port, the earliest start among them and whether any acknowledged (TCP
// with flags only), and the earliest start of the subscriber's own flows
// on that port pair.
type Received struct {
	Known   bool
	StartMs int64
	// NeverAcked is true when every TCP flow from the remote had flags
	// and none had ACK: the remote never completed a handshake.
	NeverAcked bool
	// SentStartMs is the earliest start of the subscriber's flows on the
	// port pair before this one; 0 when none is known.
	SentStartMs int64
}

// began is when the exchange f belongs to began on the subscriber's side.
func (in Received) began(f *flow.Flow) int64 {
	if in.SentStartMs > 0 {
		return min(in.SentStartMs, f.Start())
	}
	return f.Start()
}

// ICMP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoICMPv6 = 58
	ProtoUDP    = 17
)

// Attempt tells whether the outbound flow f is the subscriber's own
// attempt. in is the inbound flow from f's destination address and port
// to f's source address and port, when one is known.
func Attempt(f *flow.Flow, in Received) bool {
	switch f.Proto {
	case ProtoICMP:
		return icmpQueryV4(uint8(f.DstPort >> 8))
	case ProtoICMPv6:
		return icmpQueryV6(uint8(f.DstPort >> 8))
	case flow.ProtoTCP:
		if f.TCPFlags != 0 {
			syn, ack := f.TCPFlags&flow.TCPSyn != 0, f.TCPFlags&flow.TCPAck != 0
			switch {
			case syn && !ack:
				return true
			case !syn:
				return false
			case in.Known && (in.NeverAcked || in.StartMs < in.began(f)):
				return false
			case in.Known && in.StartMs > in.began(f):
				return true
			}
			return !serverPorts(f.SrcPort, f.DstPort)
		}
	}
	if in.Known {
		return in.StartMs > in.began(f)
	}
	return !serverPorts(f.SrcPort, f.DstPort)
}

// NeedsExchange tells whether Attempt's verdict on f depends on its
// exchange (a flow without flags, a completed handshake), so that the
// detector looks the exchange up only then.
func NeedsExchange(f *flow.Flow) bool {
	switch f.Proto {
	case ProtoICMP, ProtoICMPv6:
		return false
	case flow.ProtoTCP:
		return f.TCPFlags == 0 || f.TCPFlags&(flow.TCPSyn|flow.TCPAck) == flow.TCPSyn|flow.TCPAck
	}
	return true
}

// serverPorts tells a flow from a well-known port to a higher one: a
// server answering its client.
func serverPorts(src, dst uint16) bool { return src < 1024 && dst >= 1024 }

// icmpQueryV4 tells the ICMP types that ask (RFC 792, 950, 1256, 8335):
// echo, router solicitation, timestamp, information, address mask,
// extended echo. Everything else answers or reports.
func icmpQueryV4(typ uint8) bool {
	switch typ {
	case 8, 10, 13, 15, 17, 42:
		return true
	}
	return false
}

// icmpQueryV6 tells the ICMPv6 types that ask (RFC 4443, 4861, 4620,
// 8335): echo request, router and neighbour solicitation, node
// information query, extended echo request.
func icmpQueryV6(typ uint8) bool {
	switch typ {
	case 128, 133, 135, 139, 160:
		return true
	}
	return false
}
