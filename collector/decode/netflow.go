package decode

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/wormsign/wormsign/flow"
)

// NetFlow v9 and IPFIX are walked set by set here rather than by goflow's
// netflow.DecodeMessage, which stops at the first data set whose template
// it does not know (losing every later set of the datagram), reads IPFIX
// enterprise fields as two fields (shifting the rest of the template),
// cannot decode variable-length fields, keeps templates without expiry and
// decodes each record through reflection (binary.Read) at about 0.85M
// records/s per core. Templates are learned in a first pass over the
// datagram and data sets decoded in a second, so a datagram carrying its
// data before its templates (seen from some exporters) decodes whole.

// Set IDs.
const (
	v9TemplateSet        = 0
	v9OptionsTemplateSet = 1
	ipfixTemplateSet     = 2
	ipfixOptionsTemplate = 3
	firstDataSet         = 256
)

// Information elements wormsign reads (IANA IPFIX numbers, equal to the
// NetFlow v9 field types below 128).
const (
	ieOctetDelta         = 1
	iePacketDelta        = 2
	ieProtocol           = 4
	ieTCPFlags           = 6
	ieSrcPort            = 7
	ieSrcIPv4            = 8
	ieInputIf            = 10
	ieDstPort            = 11
	ieDstIPv4            = 12
	ieOutputIf           = 14
	ieEndSysUpTime       = 21
	ieStartSysUpTime     = 22
	iePostOctetDelta     = 23
	iePostPacketDelta    = 24
	ieSrcIPv6            = 27
	ieDstIPv6            = 28
	ieICMPTypeCodeIPv4   = 32 // NetFlow v9 ICMP_TYPE: type<<8|code
	ieSamplingInterval   = 34
	ieSamplerID          = 48
	ieSamplerInterval    = 50
	ieOctetTotal         = 85
	iePacketTotal        = 86
	ieICMPTypeCodeIPv6   = 139
	ieStartSeconds       = 150
	ieEndSeconds         = 151
	ieStartMilliseconds  = 152
	ieEndMilliseconds    = 153
	ieStartMicroseconds  = 154
	ieEndMicroseconds    = 155
	ieStartNanoseconds   = 156
	ieEndNanoseconds     = 157
	ieStartDeltaMicros   = 158
	ieEndDeltaMicros     = 159
	ieSystemInitMillis   = 160
	ieICMPTypeIPv4       = 176
	ieICMPCodeIPv4       = 177
	ieICMPTypeIPv6       = 178
	ieICMPCodeIPv6       = 179
	ieSelectorID         = 302
	ieSamplingPacketIntv = 305
	ieSamplingPacketSpc  = 306
)

// IP protocol numbers (flow.ProtoTCP is TCP's).
const (
	protoICMP   = 1
	protoUDP    = 17
	protoICMPv6 = 58
)

// variableLength is the template length of an IPFIX variable-length field.
const variableLength = 0xffff

// ntpEpochOffset is the seconds from 1900 (NTP) to 1970 (Unix).
const ntpEpochOffset = 2208988800

// uintOf reads a big-endian unsigned number of 1 to 8 bytes; exporters
// use "reduced-size encoding" freely (RFC 7011 6.2).
func uintOf(b []byte) uint64 {
	switch len(b) {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(be16(b))
	case 4:
		return uint64(be32(b))
	case 8:
		return binary.BigEndian.Uint64(b)
	}
	if len(b) > 8 {
		return 0
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// nfHeader is what the NetFlow v9 / IPFIX header tells.
type nfHeader struct {
	version    uint16
	uptimeMs   uint32 // v9 only
	unixSecs   uint32 // v9 UnixSecs, IPFIX export time
	sequence   uint32
	domain     uint32
	headerSize int
}

type dataSet struct {
	id   uint16
	data []byte
}

// parseNFHeader reads a NetFlow v9 or IPFIX header and returns the
// message (an IPFIX message may be shorter than its datagram). It runs
// before any state is kept for the exporter: a truncated datagram costs
// nothing.
func parseNFHeader(payload []byte) (nfHeader, []byte, error) {
	var h nfHeader
	h.version = be16(payload)
	body := payload
	switch h.version {
	case 9:
		if len(payload) < 20 {
			return h, nil, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v9 datagram of %d bytes", len(payload))}
		}
		h.uptimeMs, h.unixSecs, h.sequence, h.domain = be32(payload[4:]), be32(payload[8:]), be32(payload[12:]), be32(payload[16:])
		h.headerSize = 20
	case 10:
		if len(payload) < 16 {
			return h, nil, &DecodeError{Kind: "truncated", Err: fmt.Errorf("IPFIX message of %d bytes", len(payload))}
		}
		length := int(be16(payload[2:]))
		if length < 16 || length > len(payload) {
			return h, nil, &DecodeError{Kind: "truncated", Err: fmt.Errorf("IPFIX message length %d in a datagram of %d bytes", length, len(payload))}
		}
		body = payload[:length]
		h.unixSecs, h.sequence, h.domain = be32(payload[4:]), be32(payload[8:]), be32(payload[12:])
		h.headerSize = 16
	}
	return h, body, nil
}

// decodeNetFlowV9 decodes one NetFlow v9 or IPFIX message whose header
// parseNFHeader read.
func (d *Decoder) decodeNetFlowV9(h nfHeader, body []byte, exp *exporterState, exporter netip.Addr, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, uint32, error) {
	exp.mu.Lock()
	defer exp.mu.Unlock()
	exp.lastSeenMs = receivedMs
	exp.sweep(receivedMs, d.templateTTL)

	// First pass: templates, and where the data sets are.
	var setsBuf [32]dataSet
	sets := setsBuf[:0]
	rest := body[h.headerSize:]
	for len(rest) >= 4 {
		id, length := be16(rest), int(be16(rest[2:]))
		if length < 4 || length > len(rest) {
			if id == 0 && length == 0 && allZero(rest) {
				break // zero padding to the end of the datagram
			}
			rep.SetErrors++
			break
		}
		data := rest[4:length]
		rest = rest[length:]
		switch {
		case h.version == 9 && id == v9TemplateSet, h.version == 10 && id == ipfixTemplateSet:
			d.learnTemplates(exp, &h, data, false, receivedMs, rep)
		case h.version == 9 && id == v9OptionsTemplateSet, h.version == 10 && id == ipfixOptionsTemplate:
			d.learnTemplates(exp, &h, data, true, receivedMs, rep)
		case id >= firstDataSet:
			sets = append(sets, dataSet{id, data})
		default:
			rep.SetErrors++
		}
	}

	missesBefore := rep.TemplateMisses
	// Second pass: options data first (sampling rates, system init time
	// that the flows of this very datagram may need), then flows.
	records := 0
	for _, s := range sets {
		t := exp.template(tmplKey{h.version, h.domain, s.id}, receivedMs, d.templateTTL)
		if t != nil && t.Options {
			records += d.decodeOptions(exp, &h, t, s.data, receivedMs, rep)
		}
	}
	dc := flowContext{h: h, exp: exp, exporter: exporter, receivedMs: receivedMs, ttlMs: d.templateTTL,
		skewMs: d.skew(receivedMs, h.unixSecs)}
	dc.domainRate = exp.rate(samplerKey{h.version, h.domain, 0}, receivedMs, d.templateTTL)
	dc.systemInitMs = exp.systemInit[domainKey{h.version, h.domain}].ms
	for _, s := range sets {
		t := exp.template(tmplKey{h.version, h.domain, s.id}, receivedMs, d.templateTTL)
		switch {
		case t == nil:
			rep.TemplateMisses++
		case t.Options:
			// decoded above
		case t.nat:
			records += decodeNAT(&dc, t, s.data, rep)
		default:
			before := len(out)
			out = d.decodeFlows(&dc, t, s.data, out, rep)
			records += len(out) - before
		}
	}

	switch {
	case h.version == 9:
		rep.LostDatagrams += exp.sequenceGap(seqKey{9, h.domain}, h.sequence, 1, receivedMs, rep)
	case rep.TemplateMisses > missesBefore:
		// IPFIX sequence numbers count data records, and the records of
		// a set without template are unknown: start over with the next
		// message rather than count them as lost.
		exp.resetSequence(seqKey{10, h.domain})
	default:
		rep.LostRecords += exp.sequenceGap(seqKey{10, h.domain}, h.sequence, uint32(records), receivedMs, rep)
	}
	return out, h.unixSecs, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// learnTemplates parses a (options) template set and stores its templates.
func (d *Decoder) learnTemplates(exp *exporterState, h *nfHeader, data []byte, options bool, receivedMs int64, rep *Report) {
	for len(data) >= 4 {
		id := be16(data)
		if id == 0 {
			return // padding
		}
		var t template
		var nFields int
		t.Options = options
		switch {
		case !options:
			nFields = int(be16(data[2:]))
			data = data[4:]
		case h.version == 9:
			if len(data) < 6 {
				rep.SetErrors++
				return
			}
			scopeLen, optLen := int(be16(data[2:])), int(be16(data[4:]))
			if scopeLen%4 != 0 || optLen%4 != 0 {
				rep.SetErrors++
				return
			}
			t.ScopeCount, nFields = scopeLen/4, (scopeLen+optLen)/4
			data = data[6:]
		default:
			if len(data) < 6 && be16(data[2:]) != 0 {
				rep.SetErrors++
				return
			}
			nFields = int(be16(data[2:]))
			if nFields > 0 {
				t.ScopeCount = int(be16(data[4:]))
				data = data[6:]
			} else {
				data = data[4:]
			}
		}
		key := tmplKey{h.version, h.domain, id}
		if nFields == 0 {
			if h.version == 10 {
				exp.withdraw(key) // RFC 7011 8.1
				continue
			}
			rep.SetErrors++
			return
		}
		if id < firstDataSet || t.ScopeCount > nFields {
			rep.SetErrors++
			return
		}
		t.Fields = make([]templateField, 0, nFields)
		for range nFields {
			if len(data) < 4 {
				rep.SetErrors++
				return
			}
			f := templateField{Type: be16(data), Length: be16(data[2:])}
			data = data[4:]
			if h.version == 10 && f.Type&0x8000 != 0 {
				if len(data) < 4 {
					rep.SetErrors++
					return
				}
				f.Type &^= 0x8000
				f.PEN = be32(data)
				data = data[4:]
			}
			t.Fields = append(t.Fields, f)
		}
		t.ReceivedMs = receivedMs
		t.prepare()
		if r, ok := exp.addTemplate(key, &t, d.maxTemplates); !ok {
			rep.TemplatesRefused++
			rep.Refused[r]++
		}
	}
}

// walkRecord calls fn with each field's value of the record at the start
// of data and returns the record's length, or -1 when it overruns data.
func walkRecord(t *template, data []byte, fn func(f *templateField, v []byte)) int {
	off := 0
	for i := range t.Fields {
		f := &t.Fields[i]
		l := int(f.Length)
		if f.Length == variableLength && t.varlen {
			if off >= len(data) {
				return -1
			}
			l = int(data[off])
			off++
			if l == 255 {
				if off+2 > len(data) {
					return -1
				}
				l = int(be16(data[off:]))
				off += 2
			}
		}
		if off+l > len(data) {
			return -1
		}
		fn(f, data[off:off+l])
		off += l
	}
	return off
}

// decodeOptions learns sampling rates and system init times from an
// options data set and returns how many records it held.
func (d *Decoder) decodeOptions(exp *exporterState, h *nfHeader, t *template, data []byte, receivedMs int64, rep *Report) int {
	n := 0
	for len(data) >= t.minSize {
		var rate, interval, space uint64
		var sampler uint64
		var initMs uint64
		l := walkRecord(t, data, func(f *templateField, v []byte) {
			if f.PEN != 0 {
				return
			}
			switch f.Type {
			case ieSamplingInterval, ieSamplerInterval:
				rate = uintOf(v)
			case ieSamplingPacketIntv:
				interval = uintOf(v)
			case ieSamplingPacketSpc:
				space = uintOf(v)
			case ieSamplerID, ieSelectorID:
				sampler = uintOf(v)
			case ieSystemInitMillis:
				initMs = uintOf(v)
			}
		})
		if l < 0 {
			rep.SetErrors++
			return n
		}
		data = data[l:]
		n++
		rep.OptionsRecords++
		if l == 0 {
			// A template of zero-length fields would loop forever (found
			// by FuzzIPFIX): one record per set.
			break
		}
		if rate == 0 && interval > 0 {
			// Systematic count-based sampling: interval packets taken,
			// space packets skipped (RFC 5477).
			rate = (interval + space) / interval
		}
		if rate > 0 && rate <= 1<<32-1 {
			if r, ok := exp.setRate(samplerKey{h.version, h.domain, sampler}, uint32(rate), receivedMs); !ok {
				rep.Refused[r]++
			}
		}
		if initMs > 0 && initMs < 1<<62 {
			if r, ok := exp.setSystemInit(domainKey{h.version, h.domain}, int64(initMs), receivedMs); !ok {
				rep.Refused[r]++
			}
		}
	}
	return n
}

// flowContext is what decoding a data set needs besides the template.
// It holds the header by value: with a pointer, the header escaped to
// the heap (one allocation per datagram), as escape analysis follows the
// context's exporter address into the flows.
type flowContext struct {
	h            nfHeader
	exp          *exporterState
	exporter     netip.Addr
	receivedMs   int64
	ttlMs        int64
	domainRate   uint32
	systemInitMs int64
	skewMs       int64
}

func ntpToMs(v uint64, micro bool) int64 {
	secs := int64(v>>32) - ntpEpochOffset
	frac := v & 0xffffffff
	if micro {
		// dateTimeMicroseconds: the low 11 bits of the fraction are zero.
		frac &^= 0x7ff
	}
	return secs*1000 + int64(frac*1000>>32)
}

func (d *Decoder) decodeFlows(dc *flowContext, t *template, data []byte, out []flow.Flow, rep *Report) []flow.Flow {
	typ := flow.TypeNetFlowV9
	if dc.h.version == 10 {
		typ = flow.TypeIPFIX
	}
	for len(data) >= t.minSize {
		r := record{flow: flow.Flow{
			TimeReceivedMs: dc.receivedMs, Exporter: dc.exporter,
			ObservationDomain: dc.h.domain, Type: typ,
		}}
		var l int
		if t.varlen {
			l = walkRecord(t, data, r.set)
			if l < 0 {
				rep.SetErrors++
				return out
			}
		} else {
			// Fixed layout: no closure, this is the hot path.
			off := 0
			for i := range t.Fields {
				tf := &t.Fields[i]
				next := off + int(tf.Length)
				r.set(tf, data[off:next])
				off = next
			}
			l = off
		}
		rec := data[:l]
		data = data[l:]
		if t.varlen {
			rep.VariableLengthRecords++
		}
		if t.enterprise {
			rep.EnterpriseRecords++
		}
		r.finish(dc)
		out = append(out, r.flow)
		if t.postNAT {
			// Rare templates (firewalls, NAT routers): walked again
			// rather than making every flow record carry NAT fields.
			if e, ok := natOfFlow(dc, t, rec, &out[len(out)-1]); ok {
				rep.NAT = append(rep.NAT, e)
			}
		}
		if l == 0 {
			break // a template of zero-length fields would loop forever
		}
	}
	return out
}

// record accumulates one flow record while its template is walked: set
// takes each field, finish then chooses among the fields that can stand
// for one another (counters, IPv4 and IPv6 addresses, sampling, times)
// and completes the flow.
type record struct {
	// flow is the flow under construction; set fills the fields that
	// need no choice.
	flow flow.Flow
	// Counters in order of preference: deltas, post-NAT/policy deltas,
	// totals.
	octets, packets         uint64
	postOctets, postPackets uint64
	totOctets, totPackets   uint64
	// rate is the record's own sampling interval; sampler names the
	// sampler whose learned rate applies otherwise.
	rate, sampler uint64
	// src6 and dst6 stand in for absent or unspecified IPv4 addresses.
	src6, dst6 netip.Addr
	// Times: absolute (Unix ms), in exporter uptime ms, in microseconds
	// before export (IPFIX), and the exporter's system init time.
	startMs, endMs             int64
	startUp, endUp             uint32
	hasStartUp, hasEndUp       bool
	startDelta, endDelta       uint64
	hasStartDelta, hasEndDelta bool
	initMs                     int64
	// ICMP type<<8|code from the IPv4 and the IPv6 ICMP elements, the
	// combined (32, 139) or the separate ones (176-179), and whether the
	// record had any of each family.
	icmp4, icmp6       uint16
	hasICMP4, hasICMP6 bool
}

// set takes the value v of the template field tf.
func (r *record) set(tf *templateField, v []byte) {
	if tf.PEN != 0 {
		return
	}
	switch tf.Type {
	case ieOctetDelta:
		r.octets = uintOf(v)
	case iePacketDelta:
		r.packets = uintOf(v)
	case iePostOctetDelta:
		r.postOctets = uintOf(v)
	case iePostPacketDelta:
		r.postPackets = uintOf(v)
	case ieOctetTotal:
		r.totOctets = uintOf(v)
	case iePacketTotal:
		r.totPackets = uintOf(v)
	case ieProtocol:
		r.flow.Proto = uint8(uintOf(v))
	case ieTCPFlags:
		// 1 byte in NetFlow v9, 2 in IPFIX: the flags are the low byte.
		r.flow.TCPFlags = uint8(uintOf(v))
	case ieSrcPort:
		r.flow.SrcPort = uint16(uintOf(v))
	case ieDstPort:
		r.flow.DstPort = uint16(uintOf(v))
	case ieSrcIPv4:
		if len(v) == 4 {
			r.flow.SrcAddr = netip.AddrFrom4([4]byte(v))
		}
	case ieDstIPv4:
		if len(v) == 4 {
			r.flow.DstAddr = netip.AddrFrom4([4]byte(v))
		}
	case ieSrcIPv6:
		if len(v) == 16 {
			r.src6 = netip.AddrFrom16([16]byte(v))
		}
	case ieDstIPv6:
		if len(v) == 16 {
			r.dst6 = netip.AddrFrom16([16]byte(v))
		}
	case ieInputIf:
		r.flow.InIf = uint32(uintOf(v))
	case ieOutputIf:
		r.flow.OutIf = uint32(uintOf(v))
	case ieStartSysUpTime:
		r.startUp, r.hasStartUp = uint32(uintOf(v)), true
	case ieEndSysUpTime:
		r.endUp, r.hasEndUp = uint32(uintOf(v)), true
	case ieStartSeconds:
		r.startMs = int64(uintOf(v)) * 1000
	case ieEndSeconds:
		r.endMs = int64(uintOf(v)) * 1000
	case ieStartMilliseconds:
		r.startMs = int64(uintOf(v))
	case ieEndMilliseconds:
		r.endMs = int64(uintOf(v))
	case ieStartMicroseconds, ieStartNanoseconds:
		if len(v) == 8 {
			r.startMs = ntpToMs(uintOf(v), tf.Type == ieStartMicroseconds)
		}
	case ieEndMicroseconds, ieEndNanoseconds:
		if len(v) == 8 {
			r.endMs = ntpToMs(uintOf(v), tf.Type == ieEndMicroseconds)
		}
	case ieStartDeltaMicros:
		r.startDelta, r.hasStartDelta = uintOf(v), true
	case ieEndDeltaMicros:
		r.endDelta, r.hasEndDelta = uintOf(v), true
	case ieSystemInitMillis:
		r.initMs = int64(uintOf(v))
	case ieSamplingInterval, ieSamplerInterval, ieSamplingPacketIntv:
		r.rate = uintOf(v)
	case ieSamplerID, ieSelectorID:
		r.sampler = uintOf(v)
	case ieICMPTypeCodeIPv4:
		r.icmp4, r.hasICMP4 = uint16(uintOf(v)), true
	case ieICMPTypeIPv4:
		r.icmp4, r.hasICMP4 = r.icmp4&0x00ff|uint16(uintOf(v))<<8, true
	case ieICMPCodeIPv4:
		r.icmp4, r.hasICMP4 = r.icmp4&0xff00|uint16(uintOf(v))&0xff, true
	case ieICMPTypeCodeIPv6:
		r.icmp6, r.hasICMP6 = uint16(uintOf(v)), true
	case ieICMPTypeIPv6:
		r.icmp6, r.hasICMP6 = r.icmp6&0x00ff|uint16(uintOf(v))<<8, true
	case ieICMPCodeIPv6:
		r.icmp6, r.hasICMP6 = r.icmp6&0xff00|uint16(uintOf(v))&0xff, true
	}
}

// finish completes r.flow once every field is set: bytes and packets,
// addresses, sampling rate and times.
func (r *record) finish(dc *flowContext) {
	f := &r.flow
	switch {
	case r.octets != 0 || r.packets != 0:
		f.Bytes, f.Packets = r.octets, r.packets
	case r.postOctets != 0 || r.postPackets != 0:
		f.Bytes, f.Packets = r.postOctets, r.postPackets
	default:
		f.Bytes, f.Packets = r.totOctets, r.totPackets
	}
	if (!f.SrcAddr.IsValid() || f.SrcAddr.IsUnspecified()) && r.src6.IsValid() {
		f.SrcAddr = r.src6
	}
	if (!f.DstAddr.IsValid() || f.DstAddr.IsUnspecified()) && r.dst6.IsValid() {
		f.DstAddr = r.dst6
	}
	rate := r.rate
	if rate == 0 {
		rate = uint64(dc.domainRate)
		if r.sampler != 0 {
			if sr := dc.exp.rate(samplerKey{dc.h.version, dc.h.domain, r.sampler}, dc.receivedMs, dc.ttlMs); sr != 0 {
				rate = uint64(sr)
			}
		}
	}
	if rate <= 1<<32-1 {
		f.SamplingRate = uint32(rate)
	}
	if f.Proto == protoICMP || f.Proto == protoICMPv6 {
		if tc, ok := r.icmpTypeCode(f.Proto); ok {
			// ICMP has no ports: by the NetFlow convention its type and
			// code go in the destination port, where the detector reads
			// them. What the port fields hold next to ICMP elements is
			// something else (a Cisco ASA sends the echo identifier).
			f.SrcPort, f.DstPort = 0, tc
		}
		// Without ICMP elements the exporter may have put type<<8|code
		// in the destination port itself: it is kept.
	}
	r.finishTimes(dc)
}

// icmpTypeCode returns type<<8|code from the ICMP elements of the record's
// family, else from the other family's when not zero: some exporters send
// one family's elements for both, and a zero in the other family's is an
// element left empty rather than an echo reply.
func (r *record) icmpTypeCode(proto uint8) (uint16, bool) {
	own, hasOwn, other := r.icmp4, r.hasICMP4, r.icmp6
	if proto == protoICMPv6 {
		own, hasOwn, other = r.icmp6, r.hasICMP6, r.icmp4
	}
	switch {
	case hasOwn:
		return own, true
	case other != 0:
		return other, true
	}
	return 0, false
}

// uptimeBefore is how many ms before the export uptime at is: modulo 2^32,
// so that an uptime that wrapped in between (after 49.7 days) still gives
// the right distance, and signed, so that a flow ending in the export's
// second after the header's whole second (at past the export uptime) ends
// a few hundred ms after the header's time instead of 49.7 days before.
// No exporter holds a flow for 24.8 days.
func uptimeBefore(export, at uint32) int64 { return int64(int32(export - at)) }

// finishTimes sets the flow's start and end in Unix ms from whichever
// time fields the record has.
func (r *record) finishTimes(dc *flowContext) {
	headerMs := int64(dc.h.unixSecs) * 1000
	if dc.h.version == 9 {
		// Uptime offsets are ms; the header's Unix time is whole seconds,
		// so flow times keep ms resolution relative to each other.
		if r.hasStartUp {
			r.startMs = headerMs - uptimeBefore(dc.h.uptimeMs, r.startUp)
		}
		if r.hasEndUp {
			r.endMs = headerMs - uptimeBefore(dc.h.uptimeMs, r.endUp)
		}
	} else {
		initMs := r.initMs
		if initMs == 0 {
			initMs = dc.systemInitMs
		}
		if initMs != 0 {
			if r.hasStartUp && r.startMs == 0 {
				r.startMs = initMs + int64(r.startUp)
			}
			if r.hasEndUp && r.endMs == 0 {
				r.endMs = initMs + int64(r.endUp)
			}
		}
		if r.hasStartDelta && r.startMs == 0 {
			r.startMs = headerMs - int64(r.startDelta/1000)
		}
		if r.hasEndDelta && r.endMs == 0 {
			r.endMs = headerMs - int64(r.endDelta/1000)
		}
	}
	f := &r.flow
	switch {
	case r.endMs == 0 && r.startMs == 0:
		// No usable time: the flow ended when its record was exported.
		f.StartMs, f.EndMs = dc.receivedMs, dc.receivedMs
		return
	case r.endMs == 0:
		r.endMs = r.startMs
	case r.startMs == 0:
		r.startMs = r.endMs
	}
	f.StartMs, f.EndMs = r.startMs+dc.skewMs, r.endMs+dc.skewMs
}
