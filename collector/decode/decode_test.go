package decode

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/internal/testenv"
)

// newDecoder returns a decoder of the default configuration apart from
// clock skew correction.
func newDecoder(correctSkew bool) *Decoder {
	c := DefaultConfiguration()
	c.CorrectClockSkew = correctSkew
	return New(c)
}

func decodeCapture(t *testing.T, d *Decoder, path string) int {
	t.Helper()
	total := 0
	err := ReadCapture(path, func(dg Datagram) error {
		flows, _, err := d.Decode(Family(dg.Payload), dg.From, dg.Payload, dg.TimeMs, nil)
		if err != nil {
			t.Logf("%s: %v", filepath.Base(path), err)
		}
		total += len(flows)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func TestDecodeCaptures(t *testing.T) {
	dir := testenv.Shared(t, "testdata/flow-captures/akvorado")
	cases := []struct {
		files []string // decoded in order with one decoder: templates first
		want  int
	}{
		{[]string{"outlet__flow__decoder__netflow__testdata__nfv5.pcap"}, 29},
		{[]string{"outlet__flow__decoder__netflow__testdata__template.pcap", "outlet__flow__decoder__netflow__testdata__data.pcap"}, 4},
		{[]string{"outlet__flow__decoder__sflow__testdata__data-1140.pcap"}, 5},
		// A data set of 11 records comes before its template in this
		// datagram, a set of 10 after it: all 21 decode.
		{[]string{"outlet__flow__decoder__netflow__testdata__data+templates.pcap"}, 21},
	}
	for _, tc := range cases {
		t.Run(tc.files[len(tc.files)-1], func(t *testing.T) {
			d := newDecoder(false)
			got := 0
			for _, f := range tc.files {
				got += decodeCapture(t, d, filepath.Join(dir, f))
			}
			if got != tc.want {
				t.Errorf("decoded %d flows, want %d", got, tc.want)
			}
		})
	}
}

func TestDecodeHostileInput(t *testing.T) {
	d := newDecoder(true)
	from := netip.MustParseAddrPort("192.0.2.1:9999")
	for name, payload := range map[string][]byte{
		"empty":           {},
		"one byte":        {0},
		"unknown version": {0, 7, 0, 0},
		"v5 truncated":    {0, 5, 0, 30, 0, 0, 0, 0},
		"v9 header only":  {0, 9, 0, 1, 0, 0},
		"ipfix too long":  {0, 10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"sflow huge sample count": append([]byte{0, 0, 0, 5, 0, 0, 0, 1, 10, 0, 0, 1,
			0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, 0xff, 0xff, 0xff, 0xff),
		"sflow huge record count": {0, 0, 0, 5, 0, 0, 0, 1, 10, 0, 0, 1,
			0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // one sample
			0, 0, 0, 3, 0, 0, 0, 44, // expanded flow sample of 44 bytes
			0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			0xff, 0xff, 0xff, 0xff},
	} {
		t.Run(name, func(t *testing.T) {
			family := Family(payload)
			flows, _, err := d.Decode(family, from, payload, 1, nil)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode() = %d flows, err %v; want a *DecodeError", len(flows), err)
			}
		})
	}
}

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestNetFlowV9Sets(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	exporter := from.Addr()
	const secs = 1700000000
	want := func(dst string, dport uint16, startMs, endMs int64, rate uint32) flow.Flow {
		return flow.Flow{
			TimeReceivedMs: secs * 1000, StartMs: startMs, EndMs: endMs, Exporter: exporter,
			ObservationDomain: 7, SamplingRate: rate,
			SrcAddr: netip.MustParseAddr("203.0.113.5"), DstAddr: netip.MustParseAddr(dst),
			SrcPort: 40000, DstPort: dport, Proto: 6, Bytes: 124, Packets: 2, Type: flow.TypeNetFlowV9,
		}
	}
	// Uptime 100000 ms at secs: first 98500 ms is 1.5 s before export.
	data := nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 98500, 99750))
	cases := []struct {
		name       string
		datagrams  [][]byte
		want       []flow.Flow
		wantReport Report
	}{
		{
			name: "data before its template in one datagram",
			datagrams: [][]byte{nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000,
				Sets: [][]byte{data, nfbuild.Set(0, nfbuild.Template256)}}.Bytes()},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-1500, secs*1000-250, 0)},
			wantReport: Report{Protocol: "netflow9"},
		},
		{
			// The header's Unix time is whole seconds: a flow that ended
			// in the export's second ends after it, its end uptime past
			// the header's. Read modulo 2^32 it would be 49.7 days old.
			name: "flow ended after the header's whole second",
			datagrams: [][]byte{nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000,
				Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 99900, 100300))}}.Bytes()},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-100, secs*1000+300, 0)},
			wantReport: Report{Protocol: "netflow9"},
		},
		{
			name: "exporter uptime wrapped between the flow's start and the export",
			datagrams: [][]byte{nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 200,
				Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 4294967000, 100))}}.Bytes()},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-496, secs*1000-100, 0)},
			wantReport: Report{Protocol: "netflow9"},
		},
		{
			name: "unknown template costs only its own set",
			datagrams: [][]byte{nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000,
				Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(300, make([]byte, 20)), data}}.Bytes()},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-1500, secs*1000-250, 0)},
			wantReport: Report{Protocol: "netflow9", TemplateMisses: 1},
		},
		{
			name: "templates are per observation domain",
			datagrams: [][]byte{
				nfbuild.Message{Version: 9, Domain: 8, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256)}}.Bytes(),
				nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{data}}.Bytes(),
			},
			wantReport: Report{Protocol: "netflow9", TemplateMisses: 1},
		},
		{
			name: "options sampling with a one-byte sampling interval",
			datagrams: [][]byte{nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{
				nfbuild.Set(0, nfbuild.Template256),
				// options template 257: scope system (1) of 4 bytes; option
				// sampling interval (34) in one byte, padded.
				nfbuild.Set(1, nfbuild.U16(257), nfbuild.U16(4), nfbuild.U16(4), nfbuild.U16(1), nfbuild.U16(4), nfbuild.U16(ieSamplingInterval), nfbuild.U16(1)),
				nfbuild.Set(257, nfbuild.U32(0), []byte{100}, []byte{0, 0, 0}),
				data,
			}}.Bytes()},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-1500, secs*1000-250, 100)},
			wantReport: Report{Protocol: "netflow9", OptionsRecords: 1},
		},
		{
			name: "sequence gap counts lost datagrams",
			datagrams: [][]byte{
				nfbuild.Message{Version: 9, Domain: 7, Sequence: 10, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256)}}.Bytes(),
				nfbuild.Message{Version: 9, Domain: 7, Sequence: 14, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{data}}.Bytes(),
			},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-1500, secs*1000-250, 0)},
			wantReport: Report{Protocol: "netflow9", LostDatagrams: 3},
		},
		{
			name: "zero padding after the last set",
			datagrams: [][]byte{nfbuild.Cat(nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000,
				Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), data}}.Bytes(), make([]byte, 40))},
			want:       []flow.Flow{want("198.18.0.1", 25, secs*1000-1500, secs*1000-250, 0)},
			wantReport: Report{Protocol: "netflow9"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newDecoder(false)
			var got []flow.Flow
			var rep Report
			for _, dg := range tc.datagrams {
				var err error
				got, err = d.DecodeReport(FamilyNetFlow, from, dg, secs*1000, got, &rep)
				if err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(tc.want, got, cmpAddr); diff != "" {
				t.Errorf("flows (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantReport, rep); diff != "" {
				t.Errorf("report (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIPFIXEnterpriseAndVariableLength(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.2:4739")
	const secs = 1700000000
	// Template 400: src v4, an enterprise field (PEN 29305) of 4 bytes, a
	// variable-length IANA field (application name, 96), dst port, and
	// flowEndMilliseconds.
	tpl := nfbuild.Cat(nfbuild.U16(400), nfbuild.U16(5),
		nfbuild.U16(ieSrcIPv4), nfbuild.U16(4),
		nfbuild.U16(0x8000|12), nfbuild.U16(4), nfbuild.U32(29305),
		nfbuild.U16(96), nfbuild.U16(variableLength),
		nfbuild.U16(ieDstPort), nfbuild.U16(2),
		nfbuild.U16(ieEndMilliseconds), nfbuild.U16(8))
	src := netip.MustParseAddr("203.0.113.9").As4()
	endMs := uint64(secs*1000 - 1234)
	rec := func(name string) []byte {
		return nfbuild.Cat(src[:], nfbuild.U32(0xdeadbeef), []byte{byte(len(name))}, []byte(name), nfbuild.U16(25), binary.BigEndian.AppendUint64(nil, endMs))
	}
	long := string(make([]byte, 300))
	longRec := nfbuild.Cat(src[:], nfbuild.U32(1), []byte{255}, nfbuild.U16(300), []byte(long), nfbuild.U16(25), binary.BigEndian.AppendUint64(nil, endMs))
	msg := nfbuild.Message{Version: 10, Domain: 1, Sequence: 0, UnixSecs: secs, Sets: [][]byte{
		nfbuild.Set(2, tpl), nfbuild.Set(400, rec("smtp"), rec(""), longRec),
	}}.Bytes()
	d := newDecoder(false)
	var rep Report
	got, err := d.DecodeReport(FamilyNetFlow, from, msg, secs*1000, nil, &rep)
	if err != nil {
		t.Fatal(err)
	}
	one := flow.Flow{TimeReceivedMs: secs * 1000, StartMs: int64(endMs), EndMs: int64(endMs),
		Exporter: from.Addr(), ObservationDomain: 1, SrcAddr: netip.AddrFrom4(src), DstPort: 25, Type: flow.TypeIPFIX}
	if diff := cmp.Diff([]flow.Flow{one, one, one}, got, cmpAddr); diff != "" {
		t.Errorf("flows (-want +got):\n%s", diff)
	}
	wantRep := Report{Protocol: "ipfix", EnterpriseRecords: 3, VariableLengthRecords: 3}
	if diff := cmp.Diff(wantRep, rep); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	// The next message's sequence number should be 3: 2 is one lost record.
	rep = Report{}
	next := nfbuild.Message{Version: 10, Domain: 1, Sequence: 4, UnixSecs: secs, Sets: [][]byte{nfbuild.Set(400, rec("x"))}}.Bytes()
	if _, err := d.DecodeReport(FamilyNetFlow, from, next, secs*1000, nil, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.LostRecords != 1 {
		t.Errorf("lost records = %d, want 1", rep.LostRecords)
	}
}

func TestTemplateCapExpiryAndPersistence(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.MaxTemplatesPerExporter = 2
	cfg.TemplateTTL = time.Minute
	from := netip.MustParseAddrPort("192.0.2.3:2055")
	other := netip.MustParseAddrPort("192.0.2.3:2056")
	const t0 = int64(1700000000000)
	templates := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: 1700000000, Sets: [][]byte{
		nfbuild.Set(0, nfbuild.Template256, nfbuild.Template(257, ieSrcIPv4, 4), nfbuild.Template(258, ieDstIPv4, 4)),
	}}.Bytes()
	data := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: 1700000000, UptimeMs: 100000, Sets: [][]byte{
		nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 1, 2)),
		nfbuild.Set(258, []byte{198, 18, 0, 2}),
	}}.Bytes()
	decode := func(d *Decoder, from netip.AddrPort, dg []byte, now int64) (int, Report) {
		t.Helper()
		var rep Report
		flows, err := d.DecodeReport(FamilyNetFlow, from, dg, now, nil, &rep)
		if err != nil {
			t.Fatal(err)
		}
		return len(flows), rep
	}
	d := New(cfg)
	if _, rep := decode(d, from, templates, t0); rep.TemplatesRefused != 1 {
		t.Errorf("templates refused = %d, want 1 (cap 2)", rep.TemplatesRefused)
	}
	if n, rep := decode(d, from, data, t0+1000); n != 1 || rep.TemplateMisses != 1 {
		t.Errorf("decoded %d flows with %d misses, want 1 and 1 (258 was refused)", n, rep.TemplateMisses)
	}
	// Another exporter port on the same address has no templates.
	if n, rep := decode(d, other, data, t0+1000); n != 0 || rep.TemplateMisses != 2 {
		t.Errorf("other port decoded %d flows with %d misses, want 0 and 2", n, rep.TemplateMisses)
	}

	path := filepath.Join(t.TempDir(), "templates.json")
	if err := d.SaveTemplates(path); err != nil {
		t.Fatal(err)
	}
	restarted := New(cfg)
	if n, err := restarted.LoadTemplates(path, t0+2000); err != nil || n != 2 {
		t.Fatalf("LoadTemplates = %d, %v; want 2 templates", n, err)
	}
	if n, _ := decode(restarted, from, data, t0+3000); n != 1 {
		t.Errorf("after restart decoded %d flows, want 1 at once", n)
	}
	// Past the TTL the templates are gone, loaded or not.
	if n, rep := decode(restarted, from, data, t0+61*1000); n != 0 || rep.TemplateMisses != 2 {
		t.Errorf("after TTL decoded %d flows with %d misses, want 0 and 2", n, rep.TemplateMisses)
	}
	stale := New(cfg)
	if n, err := stale.LoadTemplates(path, t0+61*1000); err != nil || n != 0 {
		t.Errorf("loading expired templates = %d, %v; want 0", n, err)
	}
	if n, err := stale.LoadTemplates(filepath.Join(t.TempDir(), "missing.json"), t0); err != nil || n != 0 {
		t.Errorf("loading a missing file = %d, %v; want 0, nil", n, err)
	}
}

func TestSamplingConfiguration(t *testing.T) {
	parse := func(s string) SamplingRate {
		var r SamplingRate
		if err := r.UnmarshalText([]byte(s)); err != nil {
			t.Fatal(err)
		}
		return r
	}
	cfg := DefaultConfiguration()
	cfg.DefaultSamplingRate = []SamplingRate{parse("192.0.2.0/24=1000"), parse("192.0.2.7=10")}
	cfg.OverrideSamplingRate = []SamplingRate{parse("192.0.2.9/32=4096")}
	d := New(cfg)
	// A NetFlow v5 datagram with one record and sampling interval 0 or 50.
	v5 := func(sampling uint16) []byte {
		hdr := nfbuild.Cat(nfbuild.U16(5), nfbuild.U16(1), nfbuild.U32(100000), nfbuild.U32(1700000000), nfbuild.U32(0), nfbuild.U32(0), []byte{0, 0}, nfbuild.U16(sampling))
		return nfbuild.Cat(hdr, make([]byte, 48))
	}
	cases := []struct {
		exporter string
		sampling uint16
		want     uint32
	}{
		{"192.0.2.1:1", 0, 1000},       // network default
		{"192.0.2.7:1", 0, 10},         // longer prefix wins
		{"192.0.2.7:1", 50, 50},        // the exporter says it: default unused
		{"192.0.2.9:1", 50, 4096},      // override beats the exporter
		{"198.51.100.1:1", 0, 0},       // nothing configured, nothing said
		{"192.0.2.1:1", 0x4000 | 7, 7}, // mode bits are not the rate
	}
	for _, tc := range cases {
		flows, _, err := d.Decode(FamilyNetFlow, netip.MustParseAddrPort(tc.exporter), v5(tc.sampling), 1700000000000, nil)
		if err != nil || len(flows) != 1 {
			t.Fatalf("%s: %d flows, %v", tc.exporter, len(flows), err)
		}
		if got := flows[0].SamplingRate; got != tc.want {
			t.Errorf("%s with header sampling %#x: rate %d, want %d", tc.exporter, tc.sampling, got, tc.want)
		}
	}
	var bad SamplingRate
	for _, s := range []string{"192.0.2.0/24", "x=1", "192.0.2.0/24=0", "192.0.2.0/24=-1"} {
		if err := bad.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded, want an error", s)
		}
	}
}

func TestNetFlowV5MillisecondTimes(t *testing.T) {
	// Export at 1700000000.250 s with uptime 100000 ms; the record started
	// at uptime 98000 and ended at 99900.
	hdr := nfbuild.Cat(nfbuild.U16(5), nfbuild.U16(1), nfbuild.U32(100000), nfbuild.U32(1700000000), nfbuild.U32(250_000_000), nfbuild.U32(0), []byte{0, 0}, nfbuild.U16(0))
	rec := make([]byte, 48)
	binary.BigEndian.PutUint32(rec[24:], 98000)
	binary.BigEndian.PutUint32(rec[28:], 99900)
	flows, _, err := newDecoder(false).Decode(FamilyNetFlow, netip.MustParseAddrPort("192.0.2.1:1"), nfbuild.Cat(hdr, rec), 1, nil)
	if err != nil || len(flows) != 1 {
		t.Fatalf("%d flows, %v", len(flows), err)
	}
	if got, want := [2]int64{flows[0].StartMs, flows[0].EndMs}, [2]int64{1700000000250 - 2000, 1700000000250 - 100}; got != want {
		t.Errorf("start, end = %v, want %v", got, want)
	}
}

// TestSamplingFromVendorOptions checks sampling rates learned from real
// options data: per sampler ID (Akvorado's multiplesamplingrates capture,
// whose first two records it expects at 1:4000 and 1:2000) and per domain.
func TestSamplingFromVendorOptions(t *testing.T) {
	dir := testenv.Shared(t, "testdata/flow-captures/akvorado")
	cases := []struct {
		files []string
		want  []uint32 // rates of the first flows
		all   int      // flows decoded
	}{
		{[]string{"multiplesamplingrates-options-template", "multiplesamplingrates-options-data",
			"multiplesamplingrates-template", "multiplesamplingrates-data"}, []uint32{4000, 2000}, 12},
		{[]string{"samplingrate-template", "samplingrate-data"}, []uint32{2048, 2048, 2048, 2048, 2048, 2048}, 6},
	}
	for _, tc := range cases {
		t.Run(tc.files[0], func(t *testing.T) {
			d := newDecoder(false)
			var rates []uint32
			for _, f := range tc.files {
				err := ReadCapture(filepath.Join(dir, "outlet__flow__decoder__netflow__testdata__"+f+".pcap"), func(dg Datagram) error {
					flows, _, err := d.Decode(Family(dg.Payload), dg.From, dg.Payload, dg.TimeMs, nil)
					for _, f := range flows {
						rates = append(rates, f.SamplingRate)
					}
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if len(rates) != tc.all {
				t.Fatalf("decoded %d flows, want %d", len(rates), tc.all)
			}
			if diff := cmp.Diff(tc.want, rates[:len(tc.want)]); diff != "" {
				t.Errorf("sampling rates (-want +got):\n%s", diff)
			}
		})
	}
}
