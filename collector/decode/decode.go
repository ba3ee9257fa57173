// Package decode turns NetFlow v5, NetFlow v9, IPFIX and sFlow v5 export
// datagrams into flows, without sockets: the collector feeds it what it
// reads from UDP, `wormsign replay` what it reads from captures
// (ReadCapture). NetFlow v5 and sFlow v5 are decoded by goflow v3;
// NetFlow v9 and IPFIX by this package's own set walker. Templates,
// learned sampling rates and sequence numbers are kept per exporter,
// bounded and expired, and can be saved to a file and loaded again.
// NAT logging records (RFC 8158), which are not flows, are reported apart
// (Report.NAT).
package decode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

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
	// TemplatesRefused counts templates not stored, for any of the
	// reasons in Refused.
	TemplatesRefused int
	// Refused counts state the decoder did not keep (templates,
	// exporters, per-domain entries), by reason.
	Refused [NumRefusals]int
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
	// NAT receives the NAT logging records (RFC 8158) of NetFlow v9 and
	// IPFIX, which are not flows, and the source translations that flow
	// records tell (nat.go). DecodeReport appends to it: the caller
	// resets it between datagrams and can reuse its array.
	NAT []NATEvent
	// NATSkipped counts NAT logging records without an inside or an
	// outside address: address or port exhaustion, quota and threshold
	// events carry none.
	NATSkipped int
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

	budget         budget
	reclaimEveryMs int64
	lastReclaimMs  atomic.Int64

	mu        sync.RWMutex
	exporters map[netip.AddrPort]*exporterState
	addrs     map[netip.Addr]*addrUsage // under mu
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
		addrs:        map[netip.Addr]*addrUsage{},
		budget: budget{
			limit:   max(c.DecoderBudgetBytes, 1),
			perAddr: max(c.MaxStatePerAddress, 1),
		},
		// Exporters sweep their own expired state when they send; what
		// went silent is reclaimed this often.
		reclaimEveryMs: max(min(c.TemplateTTL.Milliseconds()/8, 60_000), 1),
	}
}

// ErrTooManyExporters is the error (inside a *DecodeError of kind
// too_many_exporters) for a datagram of an exporter beyond
// collector.max_exporters.
var ErrTooManyExporters = errors.New("too many exporters (collector.max_exporters)")

// exporter returns the state of addr, creating it within the caps and the
// budget. At max_exporters, exporters silent for longer than the template
// TTL are forgotten first.
func (d *Decoder) exporter(addr netip.AddrPort, nowMs int64) (*exporterState, Refusal, bool) {
	d.mu.RLock()
	s := d.exporters[addr]
	d.mu.RUnlock()
	if s != nil {
		return s, 0, true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s = d.exporters[addr]; s != nil {
		return s, 0, true
	}
	if len(d.exporters) >= d.maxExporters {
		for a := range d.exporters {
			d.removeIdleLocked(a, nowMs)
		}
		if len(d.exporters) >= d.maxExporters {
			return nil, RefusedTooManyExporters, false
		}
	}
	ip := addr.Addr().Unmap()
	a := d.addrs[ip]
	cost := int64(costExporter)
	if a == nil {
		a = &addrUsage{}
		cost += costAddress
	}
	if r, ok := d.budget.charge(a, cost); !ok {
		return nil, r, false
	}
	if a.exporters == 0 {
		d.addrs[ip] = a
		// The address's own cost is credited with its last exporter.
		cost -= costAddress
	}
	a.exporters++
	s = newExporterState(&d.budget, a)
	s.used = cost
	s.lastSeenMs, s.lastSweepMs = nowMs, nowMs
	d.exporters[addr] = s
	return s, 0, true
}

// refusedExporter is the error of a datagram whose exporter the decoder
// cannot keep state for.
func refusedExporter(r Refusal) error {
	if r == RefusedTooManyExporters {
		return &DecodeError{Kind: r.String(), Err: ErrTooManyExporters}
	}
	return &DecodeError{Kind: r.String(), Err: fmt.Errorf("%w: %s", ErrRefused, r)}
}

// ErrRefused is the error (inside a *DecodeError whose kind is the
// reason) for a NetFlow v9/IPFIX datagram of an exporter the budget or
// its address's cap has no room for.
var ErrRefused = errors.New("decoder state refused")

// Decode appends the flows in payload, received from exporter at receivedMs
// (Unix ms), to out. The protocol is told by family and the version field.
// Hostile input yields a *DecodeError, never a panic. NAT events are
// left out: DecodeReport has them.
func (d *Decoder) Decode(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow) ([]flow.Flow, string, error) {
	var rep Report
	flows, err := d.DecodeReport(family, exporter, payload, receivedMs, out, &rep)
	return flows, rep.Protocol, err
}

// DecodeReport is Decode that also fills rep, and appends to rep.NAT the
// NAT events of the datagram.
func (d *Decoder) DecodeReport(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	rep.Protocol = family
	d.maybeReclaim(receivedMs)
	start, natStart := len(out), len(rep.NAT)
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
			h, body, herr := parseNFHeader(payload)
			if herr != nil {
				return out, herr
			}
			exp, r, ok := d.exporter(exporter, receivedMs)
			if !ok {
				rep.Refused[r]++
				return out, refusedExporter(r)
			}
			out, _, err = d.decodeNetFlowV9(h, body, exp, exporterAddr, receivedMs, out, rep)
		default:
			return out, &DecodeError{Kind: "version", Err: fmt.Errorf("unsupported NetFlow version %d", version)}
		}
	default:
		return out, fmt.Errorf("unknown protocol family %q", family)
	}
	if err != nil {
		rep.NAT = rep.NAT[:natStart]
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
