package sink

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// The rows of the flows and alerts tables as the sink INSERTs them.

// Column lists are spelled out: ClickHouse 18.16 needs named INSERT columns
// over the native protocol.
const flowColumns = "date, time_received, time_start, time_end, subscriber_ip, exporter, observation_domain, " +
	"sampling_rate, src_addr, dst_addr, src_port, dst_port, proto, tcp_flags, bytes, packets, in_if, out_if, flow_type, " +
	"sink_partition, sink_offset"

const alertColumns = "date, id, kind, state, subscriber_ip, subscriber_id, window_start, window_end, " +
	"first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence, sink_partition, sink_offset"

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func day(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }

// flowBlock holds one INSERT column by column: appending whole columns
// spares clickhouse-go a reflection step per value.
type flowBlock struct {
	date, received, start, end []time.Time
	subscriber                 []string
	exporter, src, dst         []netip.Addr
	exporterS, srcS, dstS      []string
	obsDomain, sampling        []uint32
	srcPort, dstPort           []uint16
	proto, flags, typ          []uint8
	bytes, packets             []uint64
	inIf, outIf, partition     []uint32
	offset                     []uint64
}

// flowBlocks recycles blocks between batches: a batch's columns are tens
// of megabytes, and allocating them afresh costs more than filling them.
var flowBlocks = sync.Pool{New: func() any { return new(flowBlock) }}

// reset empties b, keeping its memory.
func (b *flowBlock) reset() {
	b.date, b.received, b.start, b.end = b.date[:0], b.received[:0], b.start[:0], b.end[:0]
	clear(b.subscriber)
	clear(b.exporterS)
	clear(b.srcS)
	clear(b.dstS)
	b.subscriber, b.exporterS, b.srcS, b.dstS = b.subscriber[:0], b.exporterS[:0], b.srcS[:0], b.dstS[:0]
	b.exporter, b.src, b.dst = b.exporter[:0], b.src[:0], b.dst[:0]
	b.obsDomain, b.sampling, b.srcPort, b.dstPort = b.obsDomain[:0], b.sampling[:0], b.srcPort[:0], b.dstPort[:0]
	b.proto, b.flags, b.typ, b.bytes, b.packets = b.proto[:0], b.flags[:0], b.typ[:0], b.bytes[:0], b.packets[:0]
	b.inIf, b.outIf, b.partition, b.offset = b.inIf[:0], b.outIf[:0], b.partition[:0], b.offset[:0]
}

// reserve makes room for n more rows, so that appending does not copy.
func (b *flowBlock) reserve(n int, ipv6 bool) {
	grow := func(s []time.Time) []time.Time { return slices.Grow(s, n) }
	b.date, b.received, b.start, b.end = grow(b.date), grow(b.received), grow(b.start), grow(b.end)
	b.subscriber = slices.Grow(b.subscriber, n)
	if ipv6 {
		b.exporter, b.src, b.dst = slices.Grow(b.exporter, n), slices.Grow(b.src, n), slices.Grow(b.dst, n)
	} else {
		b.exporterS, b.srcS, b.dstS = slices.Grow(b.exporterS, n), slices.Grow(b.srcS, n), slices.Grow(b.dstS, n)
	}
	b.obsDomain, b.sampling = slices.Grow(b.obsDomain, n), slices.Grow(b.sampling, n)
	b.srcPort, b.dstPort = slices.Grow(b.srcPort, n), slices.Grow(b.dstPort, n)
	b.proto, b.flags, b.typ = slices.Grow(b.proto, n), slices.Grow(b.flags, n), slices.Grow(b.typ, n)
	b.bytes, b.packets = slices.Grow(b.bytes, n), slices.Grow(b.packets, n)
	b.inIf, b.outIf, b.partition = slices.Grow(b.inIf, n), slices.Grow(b.outIf, n), slices.Grow(b.partition, n)
	b.offset = slices.Grow(b.offset, n)
}

// add appends one flow.
func (b *flowBlock) add(subscriber string, f *flow.Flow, partition uint32, offset uint64, ipv6 bool) {
	end := time.UnixMilli(f.EndMs).UTC()
	b.date, b.end = append(b.date, day(end)), append(b.end, end)
	b.received = append(b.received, time.UnixMilli(f.TimeReceivedMs).UTC())
	b.start = append(b.start, time.UnixMilli(f.StartMs).UTC())
	b.subscriber = append(b.subscriber, subscriber)
	if ipv6 {
		// An absent address is stored as :: (the column's default).
		b.exporter = append(b.exporter, orUnspecified(f.Exporter))
		b.src, b.dst = append(b.src, orUnspecified(f.SrcAddr)), append(b.dst, orUnspecified(f.DstAddr))
	} else {
		b.exporterS = append(b.exporterS, addrText(f.Exporter))
		b.srcS, b.dstS = append(b.srcS, addrText(f.SrcAddr)), append(b.dstS, addrText(f.DstAddr))
	}
	b.obsDomain, b.sampling = append(b.obsDomain, f.ObservationDomain), append(b.sampling, f.SamplingRate)
	b.srcPort, b.dstPort = append(b.srcPort, f.SrcPort), append(b.dstPort, f.DstPort)
	b.proto, b.flags, b.typ = append(b.proto, f.Proto), append(b.flags, f.TCPFlags), append(b.typ, uint8(f.Type))
	b.bytes, b.packets = append(b.bytes, f.Bytes), append(b.packets, f.Packets)
	b.inIf, b.outIf = append(b.inIf, f.InIf), append(b.outIf, f.OutIf)
	b.partition, b.offset = append(b.partition, partition), append(b.offset, offset)
}

func (b *flowBlock) rows() int { return len(b.date) }

func orUnspecified(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return netip.IPv6Unspecified()
	}
	return a
}

func (b *flowBlock) columns(ipv6 bool) []any {
	var exporter, src, dst any = b.exporterS, b.srcS, b.dstS
	if ipv6 {
		exporter, src, dst = b.exporter, b.src, b.dst
	}
	return []any{b.date, b.received, b.start, b.end, b.subscriber, exporter, b.obsDomain,
		b.sampling, src, dst, b.srcPort, b.dstPort, b.proto, b.flags, b.bytes, b.packets, b.inIf, b.outIf, b.typ,
		b.partition, b.offset}
}

// alertRow is an alert with the bus coordinates of its message.
type alertRow struct {
	Alert     alert.Alert
	Partition uint32
	Offset    uint64
}
