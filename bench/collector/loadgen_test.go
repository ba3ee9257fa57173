package collectorbench

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/collector/decode"
)

// TestGeneratedLoadDecodes checks that wormsign's decoder reads every
// generated flow, with sane times and no sequence gaps: the benchmark's
// loss figures would mean nothing otherwise.
func TestGeneratedLoadDecodes(t *testing.T) {
	const nowMs = 1_700_000_000_000
	load := Generate(5000, 2, 1000, nowMs)
	cfg := decode.DefaultConfiguration()
	cfg.CorrectClockSkew = false
	d := decode.New(cfg)
	got := map[string]int{}
	want := map[string]int{}
	for _, dg := range load.Datagrams {
		family := decode.FamilyNetFlow
		if dg.Protocol == SFlow {
			family = decode.FamilySFlow
		}
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+dg.Exporter))
		var rep decode.Report
		flows, err := d.DecodeReport(family, from, dg.Payload, nowMs, nil, &rep)
		if err != nil {
			t.Fatalf("%s datagram: %v", dg.Protocol, err)
		}
		if rep.LostDatagrams+rep.LostRecords != 0 || rep.TemplateMisses != 0 {
			t.Fatalf("%s datagram: report %+v", dg.Protocol, rep)
		}
		for _, f := range flows {
			if dg.Protocol != SFlow && (f.EndMs > nowMs || f.EndMs < nowMs-1000 || f.StartMs != nowMs-5000) {
				t.Fatalf("%s flow times %d..%d, want %d..[%d, %d]", dg.Protocol, f.StartMs, f.EndMs, nowMs-5000, nowMs-1000, nowMs)
			}
			if !f.SrcAddr.Is4() || f.Proto != 6 || f.Packets == 0 {
				t.Fatalf("%s flow %+v", dg.Protocol, f)
			}
		}
		got[dg.Protocol] += len(flows)
		want[dg.Protocol] += dg.Flows
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded flows per protocol (-generated +decoded):\n%s", diff)
	}
}
