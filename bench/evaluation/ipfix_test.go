package evaluation

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
)

// TestIPFIXExporter checks the messages on synthetic records: sizes,
// template placement, sequence numbers, export times, IPv6 skipped, and
// that the collector's decoder reads back what was written.
func TestIPFIXExporter(t *testing.T) {
	const n = 10000
	t0 := time.Date(2011, 8, 16, 10, 0, 0, 0, time.UTC).UnixMilli()
	var recs []Record
	for i := range n {
		end := t0 + int64(i)*37 // several records per second, one message holds under 1 s
		if i >= 5000 {
			end += 10_000 // a pause: the pending message leaves before it
		}
		f := flow.Flow{StartMs: end - int64(i%3000), EndMs: end, SrcAddr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}),
			DstAddr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), SrcPort: uint16(1024 + i), DstPort: 25,
			Proto: 6, TCPFlags: flow.TCPSyn, Bytes: uint64(60 * (i + 1)), Packets: uint64(i + 1)}
		recs = append(recs, Record{Flow: f})
		if i%1000 == 0 {
			v6 := f
			v6.SrcAddr, v6.DstAddr = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
			recs = append(recs, Record{Flow: v6})
		}
	}
	x := NewIPFIXExporter(DefaultExporter, DefaultCollector, 7, IPFIXOptions{TemplateEvery: 10})
	dgs := x.Export(recs)
	if x.SkippedIPv6 != 10 {
		t.Errorf("%d IPv6 records skipped, want 10", x.SkippedIPv6)
	}
	dec := decode.New(decode.DefaultConfiguration())
	var seq uint32
	var decoded []flow.Flow
	for i, d := range dgs {
		p := d.Payload
		if len(p) > 1400 {
			t.Fatalf("message %d is %d bytes", i, len(p))
		}
		if v, l := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]); v != 10 || int(l) != len(p) {
			t.Fatalf("message %d: version %d length %d of %d bytes", i, v, l, len(p))
		}
		if et := binary.BigEndian.Uint32(p[4:]); int64(et) != d.TimeMs/1000 {
			t.Errorf("message %d: export time %d, sent at %d ms", i, et, d.TimeMs)
		}
		if s := binary.BigEndian.Uint32(p[8:]); s != seq {
			t.Errorf("message %d: sequence %d, want %d (records before it)", i, s, seq)
		}
		if od := binary.BigEndian.Uint32(p[12:]); od != 7 {
			t.Errorf("message %d: observation domain %d", i, od)
		}
		hasTemplate := binary.BigEndian.Uint16(p[16:]) == 2
		if hasTemplate != (i%10 == 0) {
			t.Errorf("message %d: template set %v, want one in every 10th message from the first", i, hasTemplate)
		}
		flows, _, err := dec.Decode(decode.FamilyNetFlow, netip.AddrPortFrom(d.Src.Addr(), d.Src.Port()), p, d.TimeMs, nil)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if len(flows) != d.Records {
			t.Fatalf("message %d: %d flows decoded, %d records written", i, len(flows), d.Records)
		}
		for _, f := range flows {
			if f.EndMs > d.TimeMs {
				t.Errorf("message %d sent at %d holds a flow ending at %d", i, d.TimeMs, f.EndMs)
			}
		}
		if first := flows[0].EndMs; d.TimeMs-first > time.Second.Milliseconds() {
			t.Errorf("message %d held its first flow %d ms", i, d.TimeMs-first)
		}
		decoded = append(decoded, flows...)
		seq += uint32(d.Records)
	}
	if len(decoded) != n {
		t.Fatalf("%d flows decoded, %d written", len(decoded), n)
	}
	j := 0
	for _, r := range recs {
		w := r.Flow
		if !w.SrcAddr.Is4() {
			continue
		}
		g := decoded[j]
		j++
		if g.StartMs != w.StartMs || g.EndMs != w.EndMs || g.SrcAddr != w.SrcAddr || g.DstAddr != w.DstAddr ||
			g.SrcPort != w.SrcPort || g.DstPort != w.DstPort || g.Proto != w.Proto || g.TCPFlags != w.TCPFlags ||
			g.Bytes != w.Bytes || g.Packets != w.Packets {
			t.Fatalf("flow %d decoded as %+v, written %+v", j, g, w)
		}
	}

	var buf bytes.Buffer
	if err := WritePcap(&buf, dgs); err != nil {
		t.Fatal(err)
	}
	if buf.Len() == 0 {
		t.Fatal("empty pcap")
	}
}
