package collector

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"

	"github.com/cloudflare/goflow/v3/decoders/netflowlegacy"
	"github.com/cloudflare/goflow/v3/decoders/sflow"
	"github.com/cloudflare/goflow/v3/producer"
	"github.com/sirupsen/logrus"

	"github.com/wormsign/wormsign/flow"
)

func init() {
	// goflow's sFlow producer logs every sampled header it cannot parse
	// through logrus: hostile datagrams would flood the log. Those
	// datagrams are counted in metrics instead.
	logrus.SetOutput(io.Discard)
}

// Protocol families, one per kind of listener.
const (
	FamilyNetFlow = "netflow" // NetFlow v5, v9 and IPFIX share ports
	FamilySFlow   = "sflow"
)

// DecodeError says why a datagram was dropped; Kind labels the metric.
type DecodeError struct {
	Kind string
	Err  error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("%s: %v", e.Kind, e.Err) }
func (e *DecodeError) Unwrap() error { return e.Err }

// Report tells what decoding one datagram found besides its flows; the
// collector turns it into per-exporter metrics.
type Report struct {
	Protocol string
	// TemplateMisses counts data sets skipped because their template is
	// unknown (not yet received, expired or refused).
	TemplateMisses int
	// TemplatesRefused counts templates not stored because the exporter
	// has reached collector.max_templates_per_exporter.
	TemplatesRefused int
	// SetErrors counts malformed sets or records; the datagram's other
	// sets are still decoded.
	SetErrors int
	// OptionsRecords counts NetFlow v9/IPFIX options data records.
	OptionsRecords int
	// EnterpriseRecords and VariableLengthRecords count IPFIX flow
	// records whose template has enterprise-specific or variable-length
	// fields (decoded; enterprise fields themselves are skipped).
	EnterpriseRecords     int
	VariableLengthRecords int
	// LostDatagrams (NetFlow v9, sFlow) and LostRecords (NetFlow v5,
	// IPFIX, whose sequence numbers count records) are sequence gaps.
	LostDatagrams uint64
	LostRecords   uint64
}

// Decoder turns export datagrams into flows. NetFlow v9 and IPFIX
// templates, learned sampling rates and sequence numbers are kept per
// exporter address and port (and observation domain), not per address
// alone as in goflow's own collector, so that two exporting processes
// behind one address cannot overwrite each other's templates.
type Decoder struct {
	correctSkew  bool
	maxTemplates int
	maxExporters int
	templateTTL  int64 // ms
	defaultRates []SamplingRate
	overrides    []SamplingRate

	mu        sync.RWMutex
	exporters map[netip.AddrPort]*exporterState
}

// NewDecoder returns a decoder with the default configuration apart from
// clock skew correction, and no templates learned yet.
func NewDecoder(correctSkew bool) *Decoder {
	c := DefaultConfiguration()
	c.CorrectClockSkew = correctSkew
	return NewDecoderFrom(c)
}

// NewDecoderFrom returns a decoder following the template, sampling and
// clock settings of c.
func NewDecoderFrom(c Configuration) *Decoder {
	return &Decoder{
		correctSkew:  c.CorrectClockSkew,
		maxTemplates: max(c.MaxTemplatesPerExporter, 1),
		maxExporters: max(c.MaxExporters, 1),
		templateTTL:  max(c.TemplateTTL.Milliseconds(), 1),
		defaultRates: c.DefaultSamplingRate,
		overrides:    c.OverrideSamplingRate,
		exporters:    map[netip.AddrPort]*exporterState{},
	}
}

var errTooManyExporters = errors.New("too many exporters (collector.max_exporters)")

// exporter returns the state of addr, creating it within the cap. At the
// cap, exporters silent for longer than the template TTL are forgotten
// first.
func (d *Decoder) exporter(addr netip.AddrPort, nowMs int64) (*exporterState, error) {
	d.mu.RLock()
	s := d.exporters[addr]
	d.mu.RUnlock()
	if s != nil {
		return s, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s = d.exporters[addr]; s != nil {
		return s, nil
	}
	if len(d.exporters) >= d.maxExporters {
		for a, e := range d.exporters {
			e.mu.Lock()
			idle := nowMs-e.lastSeenMs > d.templateTTL
			e.mu.Unlock()
			if idle {
				delete(d.exporters, a)
			}
		}
		if len(d.exporters) >= d.maxExporters {
			return nil, errTooManyExporters
		}
	}
	s = newExporterState()
	s.lastSeenMs, s.lastSweepMs = nowMs, nowMs
	d.exporters[addr] = s
	return s, nil
}

// Decode appends the flows in payload, received from exporter at receivedMs
// (Unix ms), to out. The protocol is told by family and the version field.
// Hostile input yields a *DecodeError, never a panic.
func (d *Decoder) Decode(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow) ([]flow.Flow, string, error) {
	var rep Report
	flows, err := d.DecodeReport(family, exporter, payload, receivedMs, out, &rep)
	return flows, rep.Protocol, err
}

// DecodeReport is Decode that also fills rep.
func (d *Decoder) DecodeReport(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow, rep *Report) (flows []flow.Flow, err error) {
	rep.Protocol = family
	start := len(out)
	defer func() {
		// goflow's decoders index into buffers whose lengths come from the
		// wire; a crafted datagram must cost one counted drop, not the process.
		if r := recover(); r != nil {
			flows, err = out[:start], &DecodeError{Kind: "panic", Err: fmt.Errorf("decoder panic: %v", r)}
		}
	}()
	exporterAddr := exporter.Addr().Unmap()
	switch family {
	case FamilySFlow:
		rep.Protocol = "sflow5"
		out, err = d.decodeSFlow(payload, exporter, exporterAddr, receivedMs, out, rep)
	case FamilyNetFlow:
		if len(payload) < 2 {
			return out, &DecodeError{Kind: "truncated", Err: errors.New("datagram shorter than a version field")}
		}
		switch version := binary.BigEndian.Uint16(payload); version {
		case 5:
			rep.Protocol = "netflow5"
			out, err = d.decodeNetFlowV5(payload, exporter, exporterAddr, receivedMs, out, rep)
		case 9, 10:
			rep.Protocol = "netflow9"
			if version == 10 {
				rep.Protocol = "ipfix"
			}
			exp, xerr := d.exporter(exporter, receivedMs)
			if xerr != nil {
				return out, &DecodeError{Kind: "too_many_exporters", Err: xerr}
			}
			out, _, err = d.decodeNetFlowV9(payload, exp, exporterAddr, receivedMs, out, rep)
		default:
			return out, &DecodeError{Kind: "version", Err: fmt.Errorf("unsupported NetFlow version %d", version)}
		}
	default:
		return out, fmt.Errorf("unknown protocol family %q", family)
	}
	if err != nil {
		return out[:start], err
	}
	d.applySampling(exporterAddr, out[start:])
	return out, nil
}

// applySampling applies the configured override, else keeps what the
// exporter said, else the configured default.
func (d *Decoder) applySampling(exporter netip.Addr, flows []flow.Flow) {
	if len(d.overrides) == 0 && len(d.defaultRates) == 0 {
		return
	}
	override, def := lookupRate(d.overrides, exporter), lookupRate(d.defaultRates, exporter)
	for i := range flows {
		switch {
		case override != 0:
			flows[i].SamplingRate = override
		case flows[i].SamplingRate == 0:
			flows[i].SamplingRate = def
		}
	}
}

// skew is how far the collector's clock is ahead of the exporter's, when
// that is more than the one-second resolution of the export header.
func (d *Decoder) skew(receivedMs int64, headerSecs uint32) int64 {
	if !d.correctSkew || headerSecs == 0 {
		return 0
	}
	if skew := receivedMs - int64(headerSecs)*1000; skew > 2000 || skew < -1000 {
		return skew
	}
	return 0
}

// sflowSeq is the seqKey version of sFlow datagram sequence numbers.
const sflowSeq = 0xff05

// checkSFlow bounds every count read from the wire by the bytes left,
// before goflow allocates slices of those sizes (an expanded flow sample
// claiming 4 billion records would otherwise allocate ~200 GB). It
// returns the sub-agent ID and sequence number.
func checkSFlow(p []byte) (subAgent, seq uint32, err error) {
	bad := func(format string, args ...any) (uint32, uint32, error) {
		return 0, 0, &DecodeError{Kind: "malformed", Err: fmt.Errorf(format, args...)}
	}
	if len(p) < 8 || be32(p) != 5 {
		return bad("not an sFlow v5 datagram")
	}
	off := 8
	switch be32(p[4:]) {
	case 1:
		off += 4
	case 2:
		off += 16
	default:
		return bad("agent address type %d", be32(p[4:]))
	}
	if len(p) < off+16 {
		return bad("sFlow header truncated")
	}
	subAgent, seq = be32(p[off:]), be32(p[off+4:])
	samples := int(be32(p[off+12:]))
	off += 16
	if samples > (len(p)-off)/8 {
		return bad("%d samples in %d bytes", samples, len(p)-off)
	}
	for range samples {
		if len(p)-off < 8 {
			return bad("sample header truncated")
		}
		format, length := be32(p[off:]), int(be32(p[off+4:]))
		off += 8
		if length > len(p)-off {
			return bad("sample of %d bytes in %d", length, len(p)-off)
		}
		s := p[off : off+length]
		off += length
		var countAt int
		switch format {
		case 1: // flow sample
			countAt = 28
		case 2: // counter sample
			countAt = 8
		case 3: // expanded flow sample
			countAt = 40
		case 4: // expanded counter sample
			countAt = 12
		default:
			continue // goflow skips formats it does not know
		}
		if len(s) < countAt+4 {
			return bad("sample format %d truncated", format)
		}
		records := int(be32(s[countAt:]))
		if records > (len(s)-countAt-4)/8 {
			return bad("%d records in a sample of %d bytes", records, len(s))
		}
	}
	return subAgent, seq, nil
}

func (d *Decoder) decodeSFlow(payload []byte, from netip.AddrPort, exporter netip.Addr, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	subAgent, seq, err := checkSFlow(payload)
	if err != nil {
		return out, err
	}
	msg, err := sflow.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return out, &DecodeError{Kind: "malformed", Err: err}
	}
	msgs, err := producer.ProcessMessageSFlow(msg)
	if err != nil {
		return out, &DecodeError{Kind: "malformed", Err: err}
	}
	if exp, err := d.exporter(from, receivedMs); err == nil {
		exp.mu.Lock()
		exp.lastSeenMs = receivedMs
		rep.LostDatagrams += exp.sequenceGap(seqKey{sflowSeq, subAgent}, seq, 1)
		exp.mu.Unlock()
	}
	for _, m := range msgs {
		out = append(out, flow.Flow{
			// sFlow samples packets: no flow times, the sample is "now".
			TimeReceivedMs: receivedMs, StartMs: receivedMs, EndMs: receivedMs,
			Exporter: exporter, ObservationDomain: subAgent,
			SamplingRate: uint32(m.SamplingRate),
			SrcAddr:      addrFrom(m.SrcAddr), DstAddr: addrFrom(m.DstAddr),
			SrcPort: uint16(m.SrcPort), DstPort: uint16(m.DstPort),
			Proto: uint8(m.Proto), TCPFlags: uint8(m.TCPFlags),
			Bytes: m.Bytes, Packets: m.Packets, InIf: m.InIf, OutIf: m.OutIf,
			Type: flow.TypeSFlow5,
		})
	}
	return out, nil
}

func (d *Decoder) decodeNetFlowV5(payload []byte, from netip.AddrPort, exporter netip.Addr, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	// goflow reads `count` records without checking the length and would
	// invent zeroed flows from a short datagram.
	const header, record = 24, 48
	if len(payload) < header {
		return out, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes", len(payload))}
	}
	count := int(binary.BigEndian.Uint16(payload[2:]))
	if len(payload) < header+count*record {
		return out, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes for %d records", len(payload), count)}
	}
	msg, err := netflowlegacy.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return out, &DecodeError{Kind: "malformed", Err: err}
	}
	packet := msg.(netflowlegacy.PacketNetFlowV5)
	msgs, err := producer.ProcessMessageNetFlowLegacy(packet)
	if err != nil {
		return out, &DecodeError{Kind: "malformed", Err: err}
	}
	if len(msgs) != count {
		return out, &DecodeError{Kind: "malformed", Err: fmt.Errorf("decoded %d of %d records", len(msgs), count)}
	}
	// The top two bits of the sampling field are the sampling mode.
	rate := uint32(packet.SamplingInterval & 0x3fff)
	// goflow gives whole seconds; the header has the export time to the
	// nanosecond and records their times in uptime ms.
	uptime := packet.SysUptime
	exportMs := int64(packet.UnixSecs)*1000 + int64(packet.UnixNSecs/1e6)
	skewMs := d.skew(receivedMs, packet.UnixSecs)
	if exp, err := d.exporter(from, receivedMs); err == nil {
		exp.mu.Lock()
		exp.lastSeenMs = receivedMs
		domain := uint32(packet.EngineType)<<8 | uint32(packet.EngineId)
		rep.LostRecords += exp.sequenceGap(seqKey{5, domain}, packet.FlowSequence, uint32(count))
		exp.mu.Unlock()
	}
	for i, m := range msgs {
		r := payload[header+i*record:]
		first, last := be32(r[24:]), be32(r[28:])
		out = append(out, flow.Flow{
			TimeReceivedMs:    receivedMs,
			StartMs:           exportMs - int64(uptime-first) + skewMs,
			EndMs:             exportMs - int64(uptime-last) + skewMs,
			Exporter:          exporter,
			ObservationDomain: uint32(packet.EngineType)<<8 | uint32(packet.EngineId),
			SamplingRate:      rate,
			SrcAddr:           addrFrom(m.SrcAddr), DstAddr: addrFrom(m.DstAddr),
			SrcPort: uint16(m.SrcPort), DstPort: uint16(m.DstPort),
			Proto: uint8(m.Proto), TCPFlags: uint8(m.TCPFlags),
			Bytes: m.Bytes, Packets: m.Packets, InIf: m.InIf, OutIf: m.OutIf,
			Type: flow.TypeNetFlowV5,
		})
	}
	return out, nil
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}
