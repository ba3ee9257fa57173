// Package flow holds the flow record that every stage of wormsign shares and
// its wire encoding on Kafka (schemas/flow.proto).
package flow

import (
	"encoding/json"
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
}

// End returns the flow's end time, the event time windows are built on.
func (f *Flow) End() time.Time { return time.UnixMilli(f.EndMs).UTC() }

// Scale returns the sampling multiplier to apply to counts: a flow exported
// at 1:N stands for N flows. Unknown (0) counts as 1.
func (f *Flow) Scale() uint64 {
	if f.SamplingRate == 0 {
		return 1
	}
	return uint64(f.SamplingRate)
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
