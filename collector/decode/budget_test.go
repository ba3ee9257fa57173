package decode

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/nfbuild"
)

// storm sends template storms from ports ports of each address and
// returns what the decoder refused, by reason.
func storm(d *Decoder, r *rand.Rand, addrs []netip.Addr, ports, perPort int, nowMs int64) [NumRefusals]int {
	var refused [NumRefusals]int
	for _, a := range addrs {
		for p := range ports {
			from := netip.AddrPortFrom(a, uint16(10000+p))
			for range perPort {
				var rep Report
				d.DecodeReport(FamilyNetFlow, from, nfbuild.TemplateStorm(r, uint32(nowMs/1000), 20, 100), nowMs, nil, &rep)
				for i, n := range rep.Refused {
					refused[i] += n
				}
			}
		}
	}
	return refused
}

// TestBudgetBoundsTemplateStorms replays the attack of issue 14 (one
// address on many source ports, random templates in random domains), then
// the same from many addresses: the state stays within the address cap
// and the global budget, refusals are counted by reason, a legitimate
// exporter's templates learned before keep decoding, and everything is
// given back once the attackers are silent for the TTL.
func TestBudgetBoundsTemplateStorms(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.DecoderBudgetBytes, cfg.MaxStatePerAddress = 4<<20, 256<<10
	cfg.TemplateTTL = time.Minute
	d := New(cfg)
	r := rand.New(rand.NewPCG(1, 2))
	nowMs := int64(1700000000000)
	secs := uint32(nowMs / 1000)

	legit := netip.MustParseAddrPort("192.0.2.1:2055")
	tmpl := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256)}}.Bytes()
	data := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: secs, UptimeMs: 100000, Sequence: 1,
		Sets: [][]byte{nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.51.100.1", 25, 99000, 99500))}}.Bytes()
	if _, _, err := d.Decode(FamilyNetFlow, legit, tmpl, nowMs, nil); err != nil {
		t.Fatal(err)
	}

	one := []netip.Addr{netip.MustParseAddr("198.18.0.1")}
	refused := storm(d, r, one, 2000, 1, nowMs)
	if got := d.AddressStateBytes(one[0]); got > cfg.MaxStatePerAddress {
		t.Errorf("one address holds %d bytes, over its cap %d", got, cfg.MaxStatePerAddress)
	}
	if refused[RefusedAddressCap] == 0 {
		t.Errorf("refused %v, want address_cap refusals", refused)
	}

	var many []netip.Addr
	for i := range 64 {
		many = append(many, netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}))
	}
	refused = storm(d, r, many, 20, 3, nowMs)
	if got := d.StateBytes(); got > cfg.DecoderBudgetBytes {
		t.Errorf("state %d bytes, over the budget %d", got, cfg.DecoderBudgetBytes)
	}
	if refused[RefusedGlobalBudget] == 0 {
		t.Errorf("refused %v, want global_budget refusals", refused)
	}
	t.Logf("state %d of %d bytes; refused %v", d.StateBytes(), cfg.DecoderBudgetBytes, refused)

	// The legitimate exporter refreshes its template (same size: free)
	// and its data decodes.
	for i := range 3 {
		nowMs += 20_000
		var rep Report
		d.DecodeReport(FamilyNetFlow, legit, tmpl, nowMs, nil, &rep)
		flows, err := d.DecodeReport(FamilyNetFlow, legit, data, nowMs, nil, &rep)
		if err != nil || len(flows) != 1 || rep.TemplateMisses != 0 || rep.TemplatesRefused != 0 {
			t.Errorf("refresh %d: %d flows, %v, report %+v", i, len(flows), err, rep)
		}
	}
	// The attackers went quiet more than the TTL ago: only the
	// legitimate exporter's state is left.
	nowMs += 5_000
	d.Reclaim(nowMs)
	if n, a := d.Exporters(); n != 1 || a != 1 {
		t.Errorf("after the TTL: %d exporters from %d addresses, want the legitimate one", n, a)
	}
	if got, want := d.StateBytes(), d.AddressStateBytes(legit.Addr()); got != want || got > 4096 {
		t.Errorf("after the TTL: state %d bytes, the legitimate exporter's %d", got, want)
	}
	nowMs += 61_000
	d.Reclaim(nowMs)
	if got := d.StateBytes(); got != 0 {
		t.Errorf("everyone silent: state %d bytes, want 0", got)
	}
}

// TestBudgetBoundsDomainMaps sends sequence-numbered datagrams of a new
// observation domain each: the per-domain maps are capped too.
func TestBudgetBoundsDomainMaps(t *testing.T) {
	cfg := DefaultConfiguration()
	d := New(cfg)
	from := netip.MustParseAddrPort("192.0.2.1:2055")
	var refused [NumRefusals]int
	for dom := range 3 * maxDomainEntries {
		var rep Report
		m := nfbuild.Message{Version: 10, Domain: uint32(dom), UnixSecs: 1700000000}.Bytes()
		if _, err := d.DecodeReport(FamilyNetFlow, from, m, 1700000000000, nil, &rep); err != nil {
			t.Fatal(err)
		}
		for i, n := range rep.Refused {
			refused[i] += n
		}
	}
	if refused[RefusedDomainsPerExporter] != 2*maxDomainEntries {
		t.Errorf("refused %v, want %d domains_per_exporter", refused, 2*maxDomainEntries)
	}
	want := int64(costAddress + costExporter + maxDomainEntries*costSequence)
	if got := d.StateBytes(); got != want {
		t.Errorf("state %d bytes, want %d", got, want)
	}
}

// TestBudgetCost checks that the charged bytes follow the Go heap the
// state really takes, so that the budget bounds memory: template storms
// (templates dominate) and many exporters of a few domains each
// (exporters and per-domain entries dominate).
func TestBudgetCost(t *testing.T) {
	nowMs := int64(1700000000000)
	for _, tc := range []struct {
		name string
		fill func(d *Decoder)
	}{{"templates", func(d *Decoder) {
		var addrs []netip.Addr
		for i := range 200 {
			addrs = append(addrs, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
		}
		storm(d, rand.New(rand.NewPCG(3, 4)), addrs, 20, 2, nowMs)
	}}, {"exporters", func(d *Decoder) {
		for i := range 20000 {
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 2055)
			for dom := range 4 {
				m := nfbuild.Message{Version: 10, Domain: uint32(dom), UnixSecs: uint32(nowMs / 1000)}.Bytes()
				d.Decode(FamilyNetFlow, from, m, nowMs, nil)
			}
		}
	}}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfiguration()
			cfg.DecoderBudgetBytes, cfg.MaxStatePerAddress = 1<<40, 1<<40
			cfg.MaxExporters = 1 << 20
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			d := New(cfg)
			tc.fill(d)
			runtime.GC()
			runtime.ReadMemStats(&after)
			heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			ratio := float64(heap) / float64(d.StateBytes())
			t.Logf("charged %d bytes, heap grew %d bytes: %.2f heap bytes per charged byte", d.StateBytes(), heap, ratio)
			if ratio > 1.5 || ratio < 0.5 {
				t.Errorf("heap per charged byte %.2f, want within 0.5-1.5: recalibrate the costs", ratio)
			}
			runtime.KeepAlive(d)
		})
	}
}
