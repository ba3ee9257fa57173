// Package flow holds the flow record that every stage of wormsign shares and
// its wire encoding on Kafka (schemas/flow.proto).
package flow

import (
	"encoding/json"
	"math"
	"math/bits"
	"net/netip"
	"time"
)

// Type is the export protocol a flow arrived in.
type Type uint8

// Export protocols, numbered as in schemas/flow.proto.
const (
	TypeUnknown Type = iota
	TypeSFlow5
	TypeNetFlowV5
	TypeNetFlowV9
	TypeIPFIX
)

func (t Type) String() string {
	switch t {
	case TypeSFlow5:
		return "sflow5"
	case TypeNetFlowV5:
		return "netflow5"
	case TypeNetFlowV9:
		return "netflow9"
	case TypeIPFIX:
		return "ipfix"
	}
	return "unknown"
}

// TCP flag bits as exported in NetFlow/IPFIX tcpControlBits.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// ProtoTCP is the IANA protocol number of TCP.
const ProtoTCP = 6

// Flow is one unidirectional flow record.
type Flow struct {
	TimeReceivedMs    int64
	StartMs           int64
	EndMs             int64
	Exporter          netip.Addr
	ObservationDomain uint32
	SamplingRate      uint32
	SrcAddr           netip.Addr
	DstAddr           netip.Addr
	SrcPort           uint16
	DstPort           uint16
	Proto             uint8
	TCPFlags          uint8
	Bytes             uint64
	Packets           uint64
	InIf              uint32
	OutIf             uint32
	Type              Type
	// Customer is who held the subscriber's address at the flow's time,
	// as the collector resolved it (identity); "" when no source knew.
	Customer string
	// Inside is the inside address behind a carrier-grade NAT: the
	// subscriber of a flow seen with a public address and port.
	Inside netip.Addr
}

// End returns the flow's end time, the event time windows are built on.
func (f *Flow) End() time.Time { return time.UnixMilli(f.EndMs).UTC() }

// Start returns the flow's start time, Unix ms, or its end when the
// exporter gave none or one after the end.
func (f *Flow) Start() int64 {
	if f.StartMs <= 0 || f.StartMs > f.EndMs {
		return f.EndMs
	}
	return f.StartMs
}

// Scale returns the sampling multiplier: a record exported at 1:N stands
// for N times its packets and bytes, and, when it is a connection attempt
// (a sampled SYN, a sampled first datagram), for N attempts: each attempt
// had a chance of 1/N to be sampled. It is not N flows of every kind: a
// long connection sampled at 1:N shows up as about packets/N records.
// Unknown (0) counts as 1.
func (f *Flow) Scale() uint64 {
	if f.SamplingRate == 0 {
		return 1
	}
	return uint64(f.SamplingRate)
}

// ScaledPackets is the packets the record stands for (at least one),
// saturating instead of wrapping on an exporter's absurd count.
func (f *Flow) ScaledPackets() uint64 { return SaturatingMul(max(f.Packets, 1), f.Scale()) }

// ScaledBytes is the bytes the record stands for, saturating.
func (f *Flow) ScaledBytes() uint64 { return SaturatingMul(f.Bytes, f.Scale()) }

// SaturatingMul is a*b, or the largest uint64 when that overflows: counts
// come from exporters, and a wrapped product would turn a flood into a
// trickle.
func SaturatingMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

// SaturatingAdd is a+b, or the largest uint64 when that overflows.
func SaturatingAdd(a, b uint64) uint64 {
	sum, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return sum
}

// jsonFlow is the one-object-per-line form `wormsign replay --flows` prints.
type jsonFlow struct {
	TimeReceived      string `json:"time_received"`
	Start             string `json:"start"`
	End               string `json:"end"`
	Type              string `json:"type"`
	Exporter          string `json:"exporter"`
	ObservationDomain uint32 `json:"observation_domain"`
	SamplingRate      uint32 `json:"sampling_rate"`
	SrcAddr           string `json:"src_addr"`
	DstAddr           string `json:"dst_addr"`
	SrcPort           uint16 `json:"src_port"`
	DstPort           uint16 `json:"dst_port"`
	Proto             uint8  `json:"proto"`
	TCPFlags          uint8  `json:"tcp_flags"`
	Bytes             uint64 `json:"bytes"`
	Packets           uint64 `json:"packets"`
	InIf              uint32 `json:"in_if"`
	OutIf             uint32 `json:"out_if"`
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func msString(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// MarshalJSON encodes the flow with RFC 3339 times and textual addresses.
func (f Flow) MarshalJSON() ([]byte, error) {
	return json.Marshal(jsonFlow{
		TimeReceived: msString(f.TimeReceivedMs), Start: msString(f.StartMs), End: msString(f.EndMs),
		Type: f.Type.String(), Exporter: addrString(f.Exporter), ObservationDomain: f.ObservationDomain,
		SamplingRate: f.SamplingRate, SrcAddr: addrString(f.SrcAddr), DstAddr: addrString(f.DstAddr),
		SrcPort: f.SrcPort, DstPort: f.DstPort, Proto: f.Proto, TCPFlags: f.TCPFlags,
		Bytes: f.Bytes, Packets: f.Packets, InIf: f.InIf, OutIf: f.OutIf,
	})
}
