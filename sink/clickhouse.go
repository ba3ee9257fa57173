package sink

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// The rows of the flows and alerts tables as the sink INSERTs them.

// Column lists are spelled out: ClickHouse 18.16 needs named INSERT columns
// over the native protocol. Those of flows come from flow.Columns.
var flowColumns = func() string {
	names := make([]string, len(flow.Columns))
	for i, c := range flow.Columns {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}()

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
// spares clickhouse-go a reflection step per value. Its fields and add
// are written out rather than driven by flow.Columns at run time, which
// took twice as long per row; columns puts them in the table's order and
// TestFlowBlockFollowsColumns holds add to the table's values.
type flowBlock struct {
	date, received, start, end []time.Time
	subscriber, customer       []string
	exporter, src, dst, inside []netip.Addr
	exporterS, srcS, dstS      []string
	insideS                    []string
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
	clear(b.customer)
	clear(b.exporterS)
	clear(b.srcS)
	clear(b.dstS)
	clear(b.insideS)
	b.subscriber, b.exporterS, b.srcS, b.dstS = b.subscriber[:0], b.exporterS[:0], b.srcS[:0], b.dstS[:0]
	b.customer, b.inside, b.insideS = b.customer[:0], b.inside[:0], b.insideS[:0]
	b.exporter, b.src, b.dst = b.exporter[:0], b.src[:0], b.dst[:0]
	b.obsDomain, b.sampling, b.srcPort, b.dstPort = b.obsDomain[:0], b.sampling[:0], b.srcPort[:0], b.dstPort[:0]
	b.proto, b.flags, b.typ, b.bytes, b.packets = b.proto[:0], b.flags[:0], b.typ[:0], b.bytes[:0], b.packets[:0]
	b.inIf, b.outIf, b.partition, b.offset = b.inIf[:0], b.outIf[:0], b.partition[:0], b.offset[:0]
}

// reserve makes room for n more rows, so that appending does not copy.
func (b *flowBlock) reserve(n int, ipv6 bool) {
	grow := func(s []time.Time) []time.Time { return slices.Grow(s, n) }
	b.date, b.received, b.start, b.end = grow(b.date), grow(b.received), grow(b.start), grow(b.end)
	b.subscriber, b.customer = slices.Grow(b.subscriber, n), slices.Grow(b.customer, n)
	if ipv6 {
		b.exporter, b.src, b.dst = slices.Grow(b.exporter, n), slices.Grow(b.src, n), slices.Grow(b.dst, n)
		b.inside = slices.Grow(b.inside, n)
	} else {
		b.exporterS, b.srcS, b.dstS = slices.Grow(b.exporterS, n), slices.Grow(b.srcS, n), slices.Grow(b.dstS, n)
		b.insideS = slices.Grow(b.insideS, n)
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
		b.inside = append(b.inside, orUnspecified(f.Inside))
	} else {
		b.exporterS = append(b.exporterS, addrText(f.Exporter))
		b.srcS, b.dstS = append(b.srcS, addrText(f.SrcAddr)), append(b.dstS, addrText(f.DstAddr))
		b.insideS = append(b.insideS, addrText(f.Inside))
	}
	b.customer = append(b.customer, f.Customer)
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

// columns returns the block's columns in the order of flow.Columns.
func (b *flowBlock) columns(ipv6 bool) []any {
	out := make([]any, len(flow.Columns))
	for i, c := range flow.Columns {
		out[i] = b.column(c.Name, ipv6)
	}
	return out
}

// column returns the values of the named column.
func (b *flowBlock) column(name string, ipv6 bool) any {
	switch name {
	case "date":
		return b.date
	case "time_received":
		return b.received
	case "time_start":
		return b.start
	case "time_end":
		return b.end
	case "subscriber_ip":
		return b.subscriber
	case "exporter":
		if ipv6 {
			return b.exporter
		}
		return b.exporterS
	case "observation_domain":
		return b.obsDomain
	case "sampling_rate":
		return b.sampling
	case "src_addr":
		if ipv6 {
			return b.src
		}
		return b.srcS
	case "dst_addr":
		if ipv6 {
			return b.dst
		}
		return b.dstS
	case "src_port":
		return b.srcPort
	case "dst_port":
		return b.dstPort
	case "proto":
		return b.proto
	case "tcp_flags":
		return b.flags
	case "bytes":
		return b.bytes
	case "packets":
		return b.packets
	case "in_if":
		return b.inIf
	case "out_if":
		return b.outIf
	case "flow_type":
		return b.typ
	case "customer":
		return b.customer
	case "inside_addr":
		if ipv6 {
			return b.inside
		}
		return b.insideS
	case "sink_partition":
		return b.partition
	case "sink_offset":
		return b.offset
	}
	// A column added to flow.Columns without a place here: the tests
	// catch it before any INSERT would.
	panic("sink: no block column for flows." + name)
}

// alertRow is an alert with the bus coordinates of its message.
type alertRow struct {
	Alert     alert.Alert
	Partition uint32
	Offset    uint64
}
