package flow

import (
	"net/netip"
	"testing"
)

// benchFlows are flows as a collector makes them: IPv4 with every field set.
func benchFlows(n int) []Flow {
	flows := make([]Flow, n)
	for i := range flows {
		flows[i] = Flow{
			TimeReceivedMs: 1700000001000 + int64(i), StartMs: 1700000000000 + int64(i), EndMs: 1700000000500 + int64(i),
			Exporter: netip.MustParseAddr("192.0.2.1"), ObservationDomain: 7, SamplingRate: 100,
			SrcAddr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), DstAddr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
			SrcPort: uint16(40000 + i), DstPort: 25, Proto: ProtoTCP, TCPFlags: TCPSyn | TCPAck, Bytes: 1240 + uint64(i), Packets: 12,
			InIf: 3, OutIf: 4, Type: TypeIPFIX,
		}
	}
	return flows
}

func BenchmarkAppendBatch(b *testing.B) {
	flows := benchFlows(1000)
	buf := AppendBatch(nil, flows)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		buf = AppendBatch(buf[:0], flows)
	}
	b.ReportMetric(float64(b.N*len(flows))/b.Elapsed().Seconds(), "flows/s")
}

func BenchmarkDecodeBatch(b *testing.B) {
	flows := benchFlows(1000)
	buf := AppendBatch(nil, flows)
	out := make([]Flow, 0, len(flows))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		var err error
		if out, err = DecodeBatch(out[:0], buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(flows))/b.Elapsed().Seconds(), "flows/s")
}
