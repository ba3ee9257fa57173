package decode

import (
	"net/netip"

	"github.com/wormsign/wormsign/flow"
)

// A carrier-grade NAT logs, over NetFlow v9 or IPFIX (RFC 8158), each
// session or port block it allocates or releases: the only record of
// which subscriber an outside address and port stood for. Such records
// carry no traffic (no counters), so they are reported apart from flows,
// in Report.NAT. Firewalls and NAT routers (Cisco ASA, FortiGate,
// MikroTik) put the translation in their flow records instead: those stay
// flows and also yield a NATEvent when they tell a source translation.

// NATEvent is one NAT logging record (RFC 8158): a port block or a session
// a carrier-grade NAT allocated or released.
type NATEvent struct {
	Exporter netip.Addr
	// TimeMs is observationTimeMilliseconds (323, or its seconds,
	// microseconds and nanoseconds 322, 324, 325), else the flow start
	// (150, 152, 154, 156), else the export header time; Unix ms,
	// skew-corrected like flows. A translation told by a flow record has
	// the flow's start.
	TimeMs int64
	// Event is natEvent (230) as given: see the NAT* constants.
	// Translations told by flow records are NATTranslationCreate.
	Event uint8
	Proto uint8  // protocolIdentifier (4), 0 when absent
	VRF   uint32 // ingressVRFID (234): inside addresses may repeat across VRFs
	// Inside is sourceIPv6Address (27) when present, else
	// sourceIPv4Address (8): a DS-Lite AFTR logs both, and there the
	// B4's IPv6 address tells subscribers apart, their inside IPv4
	// address being the same (192.0.0.2). A flow record's is the flow's
	// source.
	Inside     netip.Addr
	InsidePort uint16 // sourceTransportPort (7), 0 when absent
	// Outside is postNATSourceIPv4Address (225), else
	// postNATSourceIPv6Address (281).
	Outside     netip.Addr
	OutsidePort uint16 // postNAPTSourceTransportPort (227), 0 when absent
	// PortStart, PortEnd and PortStep are the outside ports bound: those
	// from PortStart to PortEnd, PortStep apart. A port block has
	// portRangeStart (361) and portRangeEnd (362), or instead
	// portRangeNumPorts (364) ports portRangeStepSize (363) apart; a
	// session binds OutsidePort alone (both bounds OutsidePort, step 1).
	PortStart, PortEnd, PortStep uint16
}

// natEvent values (IANA "NAT Event Type", RFC 8158 section 4.1) that
// create or end a binding; the others (3 addresses exhausted, 12 ports
// exhausted, 13 quota exceeded, 18 threshold reached) name no binding.
const (
	// NATTranslationCreate and NATTranslationDelete are historic but
	// still sent (akvorado's nat.pcap has them), and a translation told
	// by a flow record is reported as NATTranslationCreate.
	NATTranslationCreate  = 1
	NATTranslationDelete  = 2
	NAT44SessionCreate    = 4
	NAT44SessionDelete    = 5
	NAT64SessionCreate    = 6
	NAT64SessionDelete    = 7
	NAT44BIBCreate        = 8
	NAT44BIBDelete        = 9
	NAT64BIBCreate        = 10
	NAT64BIBDelete        = 11
	AddressBindingCreate  = 14
	AddressBindingDelete  = 15
	PortBlockAllocation   = 16
	PortBlockDeallocation = 17
)

// Information elements of NAT logging (IANA IPFIX numbers).
const (
	iePostNATSrcIPv4  = 225
	iePostNAPTSrcPort = 227
	ieNATEvent        = 230
	ieIngressVRFID    = 234
	iePostNATSrcIPv6  = 281
	ieObsSeconds      = 322
	ieObsMilliseconds = 323
	ieObsMicroseconds = 324
	ieObsNanoseconds  = 325
	iePortRangeStart  = 361
	iePortRangeEnd    = 362
	iePortRangeStep   = 363
	iePortRangeNum    = 364
)

// natRecord accumulates the NAT fields of one record while its template
// is walked.
type natRecord struct {
	event, proto               uint8
	vrf                        uint32
	in4, in6, out4, out6       netip.Addr
	inPort, outPort            uint16
	rangeStart, rangeEnd       uint16
	rangeStep, rangeNum        uint16
	hasRangeStart, hasRangeEnd bool
	obsMs, startMs             int64 // Unix ms, 0 when absent
}

// set takes the value v of the template field tf.
func (n *natRecord) set(tf *templateField, v []byte) {
	if tf.PEN != 0 {
		return
	}
	switch tf.Type {
	case ieNATEvent:
		n.event = uint8(uintOf(v))
	case ieProtocol:
		n.proto = uint8(uintOf(v))
	case ieIngressVRFID:
		n.vrf = uint32(uintOf(v))
	case ieSrcIPv4:
		if len(v) == 4 {
			n.in4 = netip.AddrFrom4([4]byte(v))
		}
	case ieSrcIPv6:
		if len(v) == 16 {
			n.in6 = netip.AddrFrom16([16]byte(v))
		}
	case iePostNATSrcIPv4:
		if len(v) == 4 {
			n.out4 = netip.AddrFrom4([4]byte(v))
		}
	case iePostNATSrcIPv6:
		if len(v) == 16 {
			n.out6 = netip.AddrFrom16([16]byte(v))
		}
	case ieSrcPort:
		n.inPort = uint16(uintOf(v))
	case iePostNAPTSrcPort:
		n.outPort = uint16(uintOf(v))
	case iePortRangeStart:
		n.rangeStart, n.hasRangeStart = uint16(uintOf(v)), true
	case iePortRangeEnd:
		n.rangeEnd, n.hasRangeEnd = uint16(uintOf(v)), true
	case iePortRangeStep:
		n.rangeStep = uint16(uintOf(v))
	case iePortRangeNum:
		n.rangeNum = uint16(uintOf(v))
	case ieObsSeconds:
		n.obsMs = int64(uintOf(v)) * 1000
	case ieObsMilliseconds:
		n.obsMs = int64(uintOf(v))
	case ieObsMicroseconds, ieObsNanoseconds:
		if len(v) == 8 {
			n.obsMs = ntpToMs(uintOf(v), tf.Type == ieObsMicroseconds)
		}
	case ieStartSeconds:
		n.startMs = int64(uintOf(v)) * 1000
	case ieStartMilliseconds:
		n.startMs = int64(uintOf(v))
	case ieStartMicroseconds, ieStartNanoseconds:
		if len(v) == 8 {
			n.startMs = ntpToMs(uintOf(v), tf.Type == ieStartMicroseconds)
		}
	}
}

// usable tells an address a binding can be made of: present and not
// 0.0.0.0 or ::, which exporters send for "none".
func usable(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() }

func (n *natRecord) outside() netip.Addr {
	if usable(n.out4) {
		return n.out4
	}
	return n.out6
}

// natEvent returns the NATEvent of a NAT logging record, false when it
// lacks an inside or an outside address.
func (n *natRecord) natEvent(dc *flowContext) (NATEvent, bool) {
	inside := n.in4
	if usable(n.in6) {
		inside = n.in6
	}
	outside := n.outside()
	if !usable(inside) || !usable(outside) {
		return NATEvent{}, false
	}
	e := NATEvent{
		Exporter: dc.exporter, Event: n.event, Proto: n.proto, VRF: n.vrf,
		Inside: inside, InsidePort: n.inPort, Outside: outside, OutsidePort: n.outPort,
		PortStart: n.outPort, PortEnd: n.outPort, PortStep: 1,
	}
	if n.hasRangeStart {
		e.PortStart, e.PortEnd = n.rangeStart, n.rangeStart
		if n.rangeStep > 0 {
			e.PortStep = n.rangeStep
		}
		switch {
		case n.hasRangeEnd:
			e.PortEnd = n.rangeEnd
		case n.rangeNum > 0:
			e.PortEnd = uint16(min(uint32(n.rangeStart)+uint32(n.rangeNum-1)*uint32(e.PortStep), 0xffff))
		}
	}
	switch {
	case n.obsMs != 0:
		e.TimeMs = n.obsMs + dc.skewMs
	case n.startMs != 0:
		e.TimeMs = n.startMs + dc.skewMs
	case dc.h.unixSecs != 0:
		e.TimeMs = int64(dc.h.unixSecs)*1000 + dc.skewMs
	default:
		e.TimeMs = dc.receivedMs
	}
	return e, true
}

// decodeNAT decodes a data set of NAT logging records into rep.NAT and
// returns how many records it held.
func decodeNAT(dc *flowContext, t *template, data []byte, rep *Report) int {
	n := 0
	for len(data) >= t.minSize {
		var r natRecord
		l := walkRecord(t, data, r.set)
		if l < 0 {
			rep.SetErrors++
			return n
		}
		data = data[l:]
		n++
		switch e, ok := r.natEvent(dc); {
		case !ok:
			rep.NATSkipped++
		case e.PortEnd < e.PortStart:
			rep.SetErrors++
		default:
			rep.NAT = append(rep.NAT, e)
		}
		if l == 0 {
			break // a template of zero-length fields would loop forever
		}
	}
	return n
}

// natOfFlow returns the source translation that the flow record rec
// (decoded into f) tells, false when it tells none: most records of
// templates with post-NAT fields are of traffic the exporter did not
// translate, whose post-NAT source is the source itself or unspecified.
func natOfFlow(dc *flowContext, t *template, rec []byte, f *flow.Flow) (NATEvent, bool) {
	var r natRecord
	walkRecord(t, rec, r.set)
	outside := r.outside()
	if !usable(f.SrcAddr) || !usable(outside) || outside == f.SrcAddr {
		return NATEvent{}, false
	}
	return NATEvent{
		Exporter: dc.exporter, TimeMs: f.StartMs, Event: NATTranslationCreate, Proto: f.Proto, VRF: r.vrf,
		Inside: f.SrcAddr, InsidePort: r.inPort, Outside: outside, OutsidePort: r.outPort,
		PortStart: r.outPort, PortEnd: r.outPort, PortStep: 1,
	}, true
}
