package sink

import (
	"net/netip"
	"testing"

	"github.com/wormsign/wormsign/flow"
)

// BenchmarkFlowBlockFill fills the INSERT's column block from decoded flows,
// as writeFlows does for every row, for both address column types.
func BenchmarkFlowBlockFill(b *testing.B) {
	flows := make([]flow.Flow, 1000)
	for i := range flows {
		flows[i] = flow.Flow{
			TimeReceivedMs: 1700000001000 + int64(i), StartMs: 1700000000000 + int64(i), EndMs: 1700000000500 + int64(i),
			Exporter: netip.MustParseAddr("192.0.2.1"), ObservationDomain: 7, SamplingRate: 100,
			SrcAddr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), DstAddr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
			SrcPort: uint16(40000 + i), DstPort: 25, Proto: flow.ProtoTCP, TCPFlags: flow.TCPSyn, Bytes: 1240, Packets: 12,
			InIf: 3, OutIf: 4, Type: flow.TypeIPFIX,
		}
	}
	for _, ipv6 := range []bool{false, true} {
		name := "String"
		if ipv6 {
			name = "IPv6"
		}
		b.Run(name, func(b *testing.B) {
			block := new(flowBlock)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				block.reset()
				block.reserve(len(flows), ipv6)
				for i := range flows {
					block.add("203.0.113.10", &flows[i], 1, uint64(i), ipv6)
				}
				if len(block.columns(ipv6)) == 0 {
					b.Fatal("no columns")
				}
			}
			b.ReportMetric(float64(b.N*len(flows))/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
