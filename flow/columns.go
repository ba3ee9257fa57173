package flow

import (
	"net/netip"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/wormsign/wormsign/schemas"
)

// Protobuf field numbers of Flow in schemas/flow.proto, for the codec.
// Columns ties each to its column; the tests hold the codec, flow.proto
// and the ClickHouse DDL to Columns.
const (
	fieldTimeReceived protowire.Number = 1
	fieldStart        protowire.Number = 2
	fieldEnd          protowire.Number = 3
	fieldExporter     protowire.Number = 4
	fieldObsDomain    protowire.Number = 5
	fieldSampling     protowire.Number = 6
	fieldSrcAddr      protowire.Number = 7
	fieldDstAddr      protowire.Number = 8
	fieldSrcPort      protowire.Number = 9
	fieldDstPort      protowire.Number = 10
	fieldProto        protowire.Number = 11
	fieldTCPFlags     protowire.Number = 12
	fieldBytes        protowire.Number = 13
	fieldPackets      protowire.Number = 14
	fieldInIf         protowire.Number = 15
	fieldOutIf        protowire.Number = 16
	fieldType         protowire.Number = 17
	fieldCustomer     protowire.Number = 18
	fieldInside       protowire.Number = 19
)

// Kind is how a column is stored in ClickHouse.
type Kind uint8

// Column kinds.
const (
	KindDate     Kind = iota + 1 // Date: the UTC day
	KindDateTime                 // DateTime, from Unix milliseconds (the server keeps seconds)
	KindString
	// KindAddress is IPv6 where the server has the type (19.3 and later;
	// IPv4 as ::ffff:a.b.c.d, an absent address as ::), else the
	// address text (18.16; an absent address as "").
	KindAddress
	KindUInt8
	KindUInt16
	KindUInt32
	KindUInt64
)

// Column is one column of the ClickHouse table flows.
type Column struct {
	// Name is the column's name in ClickHouse.
	Name string
	Kind Kind
	// Proto and Field are the field's name and number in
	// schemas/flow.proto; empty and 0 for the columns the sink fills from
	// the bus message rather than the flow (IsFromMessage).
	Proto string
	Field protowire.Number
	// value reads the column from a flow, nil where IsFromMessage.
	value func(*Flow) any
}

// Columns are the columns of the flows table in table order: the order of
// the DDL (schemas/clickhouse/001_flows_alerts.sql) and of the sink's
// INSERT. The hot paths (the codec, the sink's column block) are written
// out by hand for speed and held to this table by tests.
var Columns = []Column{
	{Name: "date", Kind: KindDate, value: func(f *Flow) any { return day(f.End()) }},
	{Name: "time_received", Kind: KindDateTime, Proto: "time_received_ms", Field: fieldTimeReceived,
		value: func(f *Flow) any { return time.UnixMilli(f.TimeReceivedMs).UTC() }},
	{Name: "time_start", Kind: KindDateTime, Proto: "start_ms", Field: fieldStart,
		value: func(f *Flow) any { return time.UnixMilli(f.StartMs).UTC() }},
	{Name: "time_end", Kind: KindDateTime, Proto: "end_ms", Field: fieldEnd, value: func(f *Flow) any { return f.End() }},
	// The message key: every flow of a message has the same subscriber.
	{Name: "subscriber_ip", Kind: KindString},
	{Name: "exporter", Kind: KindAddress, Proto: "exporter", Field: fieldExporter, value: func(f *Flow) any { return f.Exporter }},
	{Name: "observation_domain", Kind: KindUInt32, Proto: "observation_domain", Field: fieldObsDomain,
		value: func(f *Flow) any { return f.ObservationDomain }},
	{Name: "sampling_rate", Kind: KindUInt32, Proto: "sampling_rate", Field: fieldSampling, value: func(f *Flow) any { return f.SamplingRate }},
	{Name: "src_addr", Kind: KindAddress, Proto: "src_addr", Field: fieldSrcAddr, value: func(f *Flow) any { return f.SrcAddr }},
	{Name: "dst_addr", Kind: KindAddress, Proto: "dst_addr", Field: fieldDstAddr, value: func(f *Flow) any { return f.DstAddr }},
	{Name: "src_port", Kind: KindUInt16, Proto: "src_port", Field: fieldSrcPort, value: func(f *Flow) any { return f.SrcPort }},
	{Name: "dst_port", Kind: KindUInt16, Proto: "dst_port", Field: fieldDstPort, value: func(f *Flow) any { return f.DstPort }},
	{Name: "proto", Kind: KindUInt8, Proto: "proto", Field: fieldProto, value: func(f *Flow) any { return f.Proto }},
	{Name: "tcp_flags", Kind: KindUInt8, Proto: "tcp_flags", Field: fieldTCPFlags, value: func(f *Flow) any { return f.TCPFlags }},
	{Name: "bytes", Kind: KindUInt64, Proto: "bytes", Field: fieldBytes, value: func(f *Flow) any { return f.Bytes }},
	{Name: "packets", Kind: KindUInt64, Proto: "packets", Field: fieldPackets, value: func(f *Flow) any { return f.Packets }},
	{Name: "in_if", Kind: KindUInt32, Proto: "in_if", Field: fieldInIf, value: func(f *Flow) any { return f.InIf }},
	{Name: "out_if", Kind: KindUInt32, Proto: "out_if", Field: fieldOutIf, value: func(f *Flow) any { return f.OutIf }},
	{Name: "flow_type", Kind: KindUInt8, Proto: "type", Field: fieldType, value: func(f *Flow) any { return uint8(f.Type) }},
	{Name: "customer", Kind: KindString, Proto: "customer", Field: fieldCustomer, value: func(f *Flow) any { return f.Customer }},
	{Name: "inside_addr", Kind: KindAddress, Proto: "inside_addr", Field: fieldInside, value: func(f *Flow) any { return f.Inside }},
	// The coordinates of the bus message, the sink ledger's key.
	{Name: "sink_partition", Kind: KindUInt32},
	{Name: "sink_offset", Kind: KindUInt64},
}

// IsFromMessage tells whether the sink fills the column from the bus
// message (its key and coordinates) rather than from the flow.
func (c Column) IsFromMessage() bool { return c.value == nil }

// Type is the column's ClickHouse type on a server with features.
func (c Column) Type(features schemas.Features) string {
	switch c.Kind {
	case KindDate:
		return "Date"
	case KindDateTime:
		return "DateTime"
	case KindString:
		return "String"
	case KindAddress:
		return features.IPType()
	case KindUInt8:
		return "UInt8"
	case KindUInt16:
		return "UInt16"
	case KindUInt32:
		return "UInt32"
	case KindUInt64:
		return "UInt64"
	}
	return ""
}

// Value is what the sink INSERTs in the column for f on a server with
// features, as the Go value clickhouse-go takes for Type; nil where
// IsFromMessage.
func (c Column) Value(f *Flow, features schemas.Features) any {
	if c.value == nil {
		return nil
	}
	v := c.value(f)
	if a, ok := v.(netip.Addr); ok {
		switch {
		case !features.IPv6 && !a.IsValid():
			return ""
		case !features.IPv6:
			return a.String()
		case !a.IsValid():
			return netip.IPv6Unspecified() // the column's default
		}
	}
	return v
}

func day(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }
