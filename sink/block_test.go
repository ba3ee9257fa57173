package sink

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/schemas"
)

// The flows INSERT names flow.Columns in order, and the block fills each
// with the value the table defines, on both server generations.
func TestFlowBlockFollowsColumns(t *testing.T) {
	if got, want := flowColumns, strings.Join(columnNames(), ", "); got != want {
		t.Errorf("INSERT columns = %q, want %q", got, want)
	}
	flows := []flow.Flow{
		{
			TimeReceivedMs: 1700000001234, StartMs: 1700000000000, EndMs: 1700000000500,
			Exporter: netip.MustParseAddr("192.0.2.1"), ObservationDomain: 7, SamplingRate: 100,
			SrcAddr: netip.MustParseAddr("203.0.113.10"), DstAddr: netip.MustParseAddr("2001:db8::25"),
			SrcPort: 40000, DstPort: 25, Proto: flow.ProtoTCP, TCPFlags: flow.TCPSyn, Bytes: 1240, Packets: 12,
			InIf: 3, OutIf: 4, Type: flow.TypeIPFIX,
		},
		{EndMs: 1}, // absent addresses
	}
	const subscriber, partition, offset = "203.0.113.10", uint32(5<<16 | 3), uint64(42)
	for _, features := range []schemas.Features{{}, {IPv6: true, LowCardinality: true, TTL: true}} {
		var b flowBlock
		b.reserve(len(flows), features.IPv6)
		for i := range flows {
			b.add(subscriber, &flows[i], partition, offset, features.IPv6)
		}
		cols := b.columns(features.IPv6)
		if len(cols) != len(flow.Columns) {
			t.Fatalf("%d block columns, %d in flow.Columns", len(cols), len(flow.Columns))
		}
		for i, c := range flow.Columns {
			values := reflect.ValueOf(cols[i])
			if values.Len() != len(flows) {
				t.Errorf("with %+v: column %s has %d values, want %d", features, c.Name, values.Len(), len(flows))
				continue
			}
			for row := range flows {
				want := c.Value(&flows[row], features)
				switch c.Name {
				case "subscriber_ip":
					want = subscriber
				case "sink_partition":
					want = partition
				case "sink_offset":
					want = offset
				}
				got := values.Index(row).Interface()
				if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("with %+v: column %s, row %d (-flow.Columns +block):\n%s", features, c.Name, row, diff)
				}
			}
		}
	}
}

func columnNames() []string {
	var out []string
	for _, c := range flow.Columns {
		out = append(out, c.Name)
	}
	return out
}
