package decode

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/cloudflare/goflow/v3/decoders/sflow"

	"github.com/wormsign/wormsign/flow"
)

// sFlow v5 datagrams are decoded by goflow v3, after checkSFlow has
// bounded what goflow would allocate; wormsign turns the flow samples into
// flows (sampled.go reads the sampled packet headers).

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

// goflowSFlow runs goflow's sFlow decoder on a datagram that checkSFlow
// accepted.
func goflowSFlow(payload []byte) (packet sflow.Packet, err error) {
	defer func() {
		// goflow indexes into buffers whose lengths come from the wire; a
		// crafted datagram must cost one counted drop, not the process.
		if r := recover(); r != nil {
			err = &DecodeError{Kind: "panic", Err: fmt.Errorf("decoder panic: %v", r)}
		}
	}()
	msg, err := sflow.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return packet, &DecodeError{Kind: "malformed", Err: err}
	}
	packet, ok := msg.(sflow.Packet)
	if !ok {
		return packet, &DecodeError{Kind: "malformed", Err: fmt.Errorf("goflow decoded a %T", msg)}
	}
	return packet, nil
}

func (d *Decoder) decodeSFlow(payload []byte, from netip.AddrPort, exporter netip.Addr, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	subAgent, seq, err := checkSFlow(payload)
	if err != nil {
		return out, err
	}
	packet, err := goflowSFlow(payload)
	if err != nil {
		return out, err
	}
	// Without room for the exporter's state its flows still decode; only
	// its sequence numbers are not followed.
	if exp, r, ok := d.exporter(from, receivedMs); ok {
		exp.mu.Lock()
		exp.lastSeenMs = receivedMs
		exp.sweep(receivedMs, d.templateTTL)
		rep.LostDatagrams += exp.sequenceGap(seqKey{sflowSeq, subAgent}, seq, 1, receivedMs, rep)
		exp.mu.Unlock()
	} else {
		rep.Refused[r]++
	}
	for _, s := range packet.Samples {
		f := flow.Flow{
			// sFlow samples packets: no flow times, the sample is "now".
			TimeReceivedMs: receivedMs, StartMs: receivedMs, EndMs: receivedMs,
			Exporter: exporter, ObservationDomain: subAgent,
			Packets: 1, Type: flow.TypeSFlow5,
		}
		var records []sflow.FlowRecord
		switch s := s.(type) {
		case sflow.FlowSample:
			f.SamplingRate, f.InIf, f.OutIf, records = s.SamplingRate, s.Input, s.Output, s.Records
		case sflow.ExpandedFlowSample:
			f.SamplingRate, f.InIf, f.OutIf, records = s.SamplingRate, s.InputIfValue, s.OutputIfValue, s.Records
		default:
			continue // counter samples
		}
		// One flow per sample, as goflow's producer made it, with the
		// packet's fields read by readSampledHeader (sampled.go says why
		// not by the producer). goflow cannot decode sampled IPv4/IPv6
		// records (binary.Read of a struct with slices fails): only
		// sampled headers give a flow its packet's fields.
		for _, r := range records {
			if h, ok := r.Data.(sflow.SampledHeader); ok {
				f.Bytes = uint64(h.FrameLength)
				data := h.HeaderData
				if int(h.OriginalLength) < len(data) {
					data = data[:h.OriginalLength] // the rest is padding
				}
				readSampledHeader(&f, h.Protocol, data)
			}
		}
		out = append(out, f)
	}
	return out, nil
}
