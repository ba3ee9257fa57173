package decode

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cloudflare/goflow/v3/decoders/netflowlegacy"
	flowmessage "github.com/cloudflare/goflow/v3/pb"
	"github.com/cloudflare/goflow/v3/producer"

	"github.com/wormsign/wormsign/flow"
)

// NetFlow v5 is decoded by goflow v3, after a length check it lacks; the
// flow times are read again from the raw records, since goflow rounds
// them to whole seconds.

const (
	v5HeaderSize = 24
	v5RecordSize = 48
)

// goflowNetFlowV5 runs goflow's NetFlow v5 decoder and producer.
func goflowNetFlowV5(payload []byte) (packet netflowlegacy.PacketNetFlowV5, msgs []*flowmessage.FlowMessage, err error) {
	defer func() {
		// goflow indexes into buffers whose lengths come from the wire; a
		// crafted datagram must cost one counted drop, not the process.
		if r := recover(); r != nil {
			msgs, err = nil, &DecodeError{Kind: "panic", Err: fmt.Errorf("decoder panic: %v", r)}
		}
	}()
	msg, err := netflowlegacy.DecodeMessage(bytes.NewBuffer(payload))
	if err != nil {
		return packet, nil, &DecodeError{Kind: "malformed", Err: err}
	}
	packet = msg.(netflowlegacy.PacketNetFlowV5)
	msgs, err = producer.ProcessMessageNetFlowLegacy(packet)
	if err != nil {
		return packet, nil, &DecodeError{Kind: "malformed", Err: err}
	}
	return packet, msgs, nil
}

func (d *Decoder) decodeNetFlowV5(payload []byte, from netip.AddrPort, exporter netip.Addr, receivedMs int64, out []flow.Flow, rep *Report) ([]flow.Flow, error) {
	// goflow reads `count` records without checking the length and would
	// invent zeroed flows from a short datagram.
	if len(payload) < v5HeaderSize {
		return out, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes", len(payload))}
	}
	count := int(binary.BigEndian.Uint16(payload[2:]))
	if len(payload) < v5HeaderSize+count*v5RecordSize {
		return out, &DecodeError{Kind: "truncated", Err: fmt.Errorf("NetFlow v5 datagram of %d bytes for %d records", len(payload), count)}
	}
	packet, msgs, err := goflowNetFlowV5(payload)
	if err != nil {
		return out, err
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
	// Without room for the exporter's state its flows still decode; only
	// its sequence numbers are not followed.
	if exp, r, ok := d.exporter(from, receivedMs); ok {
		exp.mu.Lock()
		exp.lastSeenMs = receivedMs
		exp.sweep(receivedMs, d.templateTTL)
		domain := uint32(packet.EngineType)<<8 | uint32(packet.EngineId)
		rep.LostRecords += exp.sequenceGap(seqKey{5, domain}, packet.FlowSequence, uint32(count), receivedMs, rep)
		exp.mu.Unlock()
	} else {
		rep.Refused[r]++
	}
	for i, m := range msgs {
		r := payload[v5HeaderSize+i*v5RecordSize:]
		first, last := be32(r[24:]), be32(r[28:])
		out = append(out, flow.Flow{
			TimeReceivedMs:    receivedMs,
			StartMs:           exportMs - uptimeBefore(uptime, first) + skewMs,
			EndMs:             exportMs - uptimeBefore(uptime, last) + skewMs,
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
