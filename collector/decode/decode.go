// Package decode turns NetFlow v5, NetFlow v9, IPFIX and sFlow v5 export
// datagrams into flows, without sockets: the collector feeds it what it
// reads from UDP, `wormsign replay` what it reads from captures
// (ReadCapture). NetFlow v5 and sFlow v5 are decoded by goflow v3;
// NetFlow v9 and IPFIX by this package's own set walker. Templates,
// learned sampling rates and sequence numbers are kept per exporter,
// bounded and expired, and can be saved to a file and loaded again.
package decode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

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
// behind one address cannot overwrite each other's templates. A Decoder
// is safe for concurrent use.
type Decoder struct {
	correctSkew  bool
	maxTemplates int
	maxExporters int
	templateTTL  int64 // ms
	defaultRates *network.Table[uint32]
	overrides    *network.Table[uint32]

	mu        sync.RWMutex
	exporters map[netip.AddrPort]*exporterState
}

// New returns a decoder following the template, sampling and clock
// settings of c, with no templates learned yet.
func New(c Configuration) *Decoder {
	return &Decoder{
		correctSkew:  c.CorrectClockSkew,
		maxTemplates: max(c.MaxTemplatesPerExporter, 1),
		maxExporters: max(c.MaxExporters, 1),
		templateTTL:  max(c.TemplateTTL.Milliseconds(), 1),
		defaultRates: rateTable(c.DefaultSamplingRate),
		overrides:    rateTable(c.OverrideSamplingRate),
		exporters:    map[netip.AddrPort]*exporterState{},
	}
}

// ErrTooManyExporters is the error (inside a *DecodeError of kind
// too_many_exporters) for a datagram of an exporter beyond
// collector.max_exporters.
var ErrTooManyExporters = errors.New("too many exporters (collector.max_exporters)")

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
			return nil, ErrTooManyExporters
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
func (d *Decoder) DecodeReport(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	rep.Protocol = family
	start := len(out)
	exporterAddr := exporter.Addr().Unmap()
	var err error
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
	if d.overrides == nil && d.defaultRates == nil {
		return
	}
	override, _ := d.overrides.Lookup(exporter)
	def, _ := d.defaultRates.Lookup(exporter)
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

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}
