package collector

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cloudflare/goflow/v3/decoders/netflow"
	"github.com/cloudflare/goflow/v3/decoders/netflowlegacy"
	"github.com/cloudflare/goflow/v3/decoders/sflow"
	flowmessage "github.com/cloudflare/goflow/v3/pb"
	"github.com/cloudflare/goflow/v3/producer"

	"github.com/wormsign/wormsign/flow"
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

// Decoder turns export datagrams into flows. NetFlow v9 and IPFIX templates
// and sampling rates are kept per exporter address and port, not per address
// alone as in goflow's own collector, so that two exporting processes behind
// one address cannot overwrite each other's templates.
type Decoder struct {
	correctSkew bool

	mu        sync.Mutex
	exporters map[netip.AddrPort]*exporterState
}

type exporterState struct {
	templates *netflow.BasicTemplateSystem
	sampling  producer.SamplingRateSystem
}

// NewDecoder returns a decoder with no templates learned yet.
func NewDecoder(correctSkew bool) *Decoder {
	return &Decoder{correctSkew: correctSkew, exporters: map[netip.AddrPort]*exporterState{}}
}

func (d *Decoder) exporter(addr netip.AddrPort) *exporterState {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.exporters[addr]
	if s == nil {
		s = &exporterState{templates: netflow.CreateTemplateSystem(), sampling: producer.CreateSamplingSystem()}
		d.exporters[addr] = s
	}
	return s
}

// Decode appends the flows in payload, received from exporter at receivedMs
// (Unix ms), to out. The protocol is told by family and the version field.
// Hostile input yields a *DecodeError, never a panic.
func (d *Decoder) Decode(family string, exporter netip.AddrPort, payload []byte, receivedMs int64, out []flow.Flow) (flows []flow.Flow, protocol string, err error) {
	protocol = family
	defer func() {
		// goflow's decoders index into buffers whose lengths come from the
		// wire; a crafted datagram must cost one counted drop, not the process.
		if r := recover(); r != nil {
			flows, err = out, &DecodeError{Kind: "panic", Err: fmt.Errorf("decoder panic: %v", r)}
		}
	}()
	var msgs []*flowmessage.FlowMessage
	var headerSecs uint32
	switch family {
	case FamilySFlow:
		msgs, err = decodeSFlow(payload)
	case FamilyNetFlow:
		if len(payload) < 2 {
			return out, protocol, &DecodeError{Kind: "truncated", Err: errors.New("datagram shorter than a version field")}
		}
		switch version := binary.BigEndian.Uint16(payload); version {
		case 5:
			protocol = "netflow5"
			msgs, headerSecs, err = decodeNetFlowV5(payload)
		case 9, 10:
			protocol = "netflow9"
			if version == 10 {
				protocol = "ipfix"
			}
			msgs, headerSecs, err = decodeNetFlowV9(payload, d.exporter(exporter))
		default:
			return out, protocol, &DecodeError{Kind: "version", Err: fmt.Errorf("unsupported NetFlow version %d", version)}
		}
	default:
		return out, protocol, fmt.Errorf("unknown protocol family %q", family)
	}
	if err != nil {
		return out, protocol, err
	}
	var skewMs int64
	if d.correctSkew && headerSecs != 0 {
		// The header clock has a resolution of one second; only a larger
		// gap is the exporter's clock being wrong.
		if skew := receivedMs - int64(headerSecs)*1000; skew > 2000 || skew < -1000 {
			skewMs = skew
		}
	}
	exporterAddr := exporter.Addr().Unmap()
	for _, m := range msgs {
		out = append(out, convert(m, exporterAddr, receivedMs, skewMs))
	}
	return out, protocol, nil
}

func decodeSFlow(payload []byte) ([]*flowmessage.FlowMessage, error) {
	msg, err := sflow.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return nil, &DecodeError{Kind: "malformed", Err: err}
	}
	msgs, err := producer.ProcessMessageSFlow(msg)
	if err != nil {
		return nil, &DecodeError{Kind: "malformed", Err: err}
	}
	return msgs, nil
}

func decodeNetFlowV5(payload []byte) ([]*flowmessage.FlowMessage, uint32, error) {
	// goflow reads `count` records without checking the length and would
	// invent zeroed flows from a short datagram.
	const header, record = 24, 48
	if len(payload) < header {
		return nil, 0, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes", len(payload))}
	}
	if count := int(binary.BigEndian.Uint16(payload[2:])); len(payload) < header+count*record {
		return nil, 0, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes for %d records", len(payload), count)}
	}
	msg, err := netflowlegacy.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return nil, 0, &DecodeError{Kind: "malformed", Err: err}
	}
	packet := msg.(netflowlegacy.PacketNetFlowV5)
	msgs, err := producer.ProcessMessageNetFlowLegacy(packet)
	if err != nil {
		return nil, 0, &DecodeError{Kind: "malformed", Err: err}
	}
	// The top two bits of the sampling field are the sampling mode.
	rate := uint64(packet.SamplingInterval & 0x3fff)
	for _, m := range msgs {
		m.SamplingRate = rate
	}
	return msgs, packet.UnixSecs, nil
}

func decodeNetFlowV9(payload []byte, exp *exporterState) ([]*flowmessage.FlowMessage, uint32, error) {
	msg, err := netflow.DecodeMessage(bytes.NewBuffer(payload), exp.templates)
	if err != nil {
		var notFound *netflow.ErrorTemplateNotFound
		if errors.As(err, &notFound) {
			return nil, 0, &DecodeError{Kind: "template_missing", Err: err}
		}
		return nil, 0, &DecodeError{Kind: "malformed", Err: err}
	}
	var headerSecs uint32
	switch p := msg.(type) {
	case netflow.NFv9Packet:
		headerSecs = p.UnixSeconds
	case netflow.IPFIXPacket:
		headerSecs = p.ExportTime
	}
	msgs, err := producer.ProcessMessageNetFlow(msg, exp.sampling)
	if err != nil {
		return nil, 0, &DecodeError{Kind: "malformed", Err: err}
	}
	return msgs, headerSecs, nil
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

func convert(m *flowmessage.FlowMessage, exporter netip.Addr, receivedMs, skewMs int64) flow.Flow {
	f := flow.Flow{
		TimeReceivedMs: receivedMs,
		Exporter:       exporter,
		SamplingRate:   uint32(m.SamplingRate),
		SrcAddr:        addrFrom(m.SrcAddr),
		DstAddr:        addrFrom(m.DstAddr),
		SrcPort:        uint16(m.SrcPort),
		DstPort:        uint16(m.DstPort),
		Proto:          uint8(m.Proto),
		TCPFlags:       uint8(m.TCPFlags),
		Bytes:          m.Bytes,
		Packets:        m.Packets,
		InIf:           m.InIf,
		OutIf:          m.OutIf,
		Type:           flow.Type(m.Type),
	}
	if m.TimeFlowEnd == 0 {
		// sFlow samples packets: no flow times, the sample is "now".
		f.StartMs, f.EndMs = receivedMs, receivedMs
		return f
	}
	f.StartMs = int64(m.TimeFlowStart)*1000 + skewMs
	f.EndMs = int64(m.TimeFlowEnd)*1000 + skewMs
	return f
}
