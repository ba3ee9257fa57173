package decode

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// Fuzz targets for every protocol entry point. Their corpus is seeded at
// run time from ../shared/testdata/flow-captures (nothing is copied into
// the repository); a plain `go test` runs the seeds. To fuzz, one target
// at a time and for a bounded time:
//
//	go test -run '^$' -fuzz '^FuzzIPFIX$' -fuzztime 60s ./collector/decode/
//
// (likewise FuzzNetFlowV5, FuzzNetFlowV9, FuzzSFlow).

// seedDatagrams returns the export datagrams of every shared capture,
// grouped as the conformance test groups them (templates first).
func seedDatagrams(f *testing.F) map[string][]captureDatagram {
	root := testenv.Shared(f, "testdata/flow-captures")
	dirs, err := os.ReadDir(root)
	if err != nil {
		f.Fatal(err)
	}
	out := map[string][]captureDatagram{}
	for _, dir := range dirs {
		if !dir.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, dir.Name()))
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			if filepath.Ext(file.Name()) == ".md" || filepath.Ext(file.Name()) == ".tsv" {
				continue
			}
			g := groupOf(dir.Name(), file.Name())
			out[g] = append(out[g], readDatagrams(f, filepath.Join(root, dir.Name(), file.Name()))...)
		}
	}
	return out
}

// version16 is the NetFlow version field, or 0 for sFlow and runts.
func version16(p []byte) uint16 {
	if len(p) < 2 || Family(p) == FamilySFlow {
		return 0
	}
	return binary.BigEndian.Uint16(p)
}

// checkDecode decodes the datagrams in order with a fresh decoder and
// fails on a decoder panic or an impossible result.
func checkDecode(t *testing.T, family string, datagrams ...[]byte) {
	// Small caps, so that refusals are walked too; a vendor capture's
	// templates fit.
	c := DefaultConfiguration()
	c.DecoderBudgetBytes, c.MaxStatePerAddress, c.MaxTemplatesPerExporter = 64<<10, 64<<10, 64
	d := New(c)
	from := netip.MustParseAddrPort("192.0.2.1:2055")
	for _, p := range datagrams {
		var rep Report
		flows, err := d.DecodeReport(family, from, p, 1700000000000, nil, &rep)
		var de *DecodeError
		if errors.As(err, &de) && de.Kind == "panic" {
			t.Fatalf("decoder panicked: %v", de.Err)
		}
		// Every record takes at least one byte of the datagram (a template
		// of zero-length fields yields one record per set of 4+ bytes).
		if len(flows) > len(p) || len(rep.NAT) > len(p) {
			t.Fatalf("%d flows and %d NAT events from %d bytes", len(flows), len(rep.NAT), len(p))
		}
		for _, e := range rep.NAT {
			if !usable(e.Inside) || !usable(e.Outside) || e.PortEnd < e.PortStart || e.PortStep == 0 {
				t.Fatalf("impossible NAT event %+v", e)
			}
		}
		// What decodes must survive the trip through the topic encoding.
		if _, err := flow.DecodeBatch(nil, flow.AppendBatch(nil, flows)); err != nil {
			t.Fatalf("flows do not round-trip: %v", err)
		}
		checkBudget(t, d)
	}
	// Everything is given back once the exporter is silent for the TTL.
	d.Reclaim(1700000000000 + d.templateTTL + 1)
	if got := d.StateBytes(); got != 0 {
		t.Fatalf("state of %d bytes left after the TTL", got)
	}
}

// checkBudget recounts the decoder's state from its maps: the budget's
// account must match it exactly and stay within the limits.
func checkBudget(t *testing.T, d *Decoder) {
	t.Helper()
	d.mu.RLock()
	defer d.mu.RUnlock()
	want := int64(len(d.addrs)) * costAddress
	perAddr := map[*addrUsage]int64{}
	for _, e := range d.exporters {
		e.mu.Lock()
		n := int64(costExporter) + int64(len(e.rates))*costRate + int64(len(e.sequences))*costSequence + int64(len(e.systemInit))*costInit
		for _, tp := range e.templates {
			n += templateCost(tp)
		}
		if n != e.used {
			t.Fatalf("exporter charged %d bytes, holds %d", e.used, n)
		}
		e.mu.Unlock()
		perAddr[e.addr] += n
		want += n
	}
	for a, n := range perAddr {
		if got := a.used.Load(); got != n+costAddress || got > d.budget.perAddr {
			t.Fatalf("address charged %d bytes, holds %d (cap %d)", got, n+costAddress, d.budget.perAddr)
		}
	}
	if got := d.StateBytes(); got != want || got > d.budget.limit {
		t.Fatalf("decoder charged %d bytes, holds %d (budget %d)", got, want, d.budget.limit)
	}
}

// fuzzNetFlow seeds pairs (templates datagram, data datagram) of one
// version; the target learns from the first and decodes the second.
func fuzzNetFlow(f *testing.F, version uint16) {
	for _, s := range natSeeds(version) {
		f.Add(s[0], s[1])
	}
	for _, dgs := range seedDatagrams(f) {
		var first []byte
		for i, d := range dgs {
			// The long pmacct captures repeat themselves; their first
			// datagrams hold the variety.
			if version16(d.data) != version || i >= maxSeedsPerGroup {
				continue
			}
			if first == nil {
				first = d.data
			}
			f.Add(first, d.data)
		}
	}
	f.Fuzz(func(t *testing.T, templates, data []byte) {
		checkDecode(t, FamilyNetFlow, templates, data)
	})
}

const maxSeedsPerGroup = 24

func FuzzNetFlowV9(f *testing.F) { fuzzNetFlow(f, 9) }
func FuzzIPFIX(f *testing.F)     { fuzzNetFlow(f, 10) }

func FuzzNetFlowV5(f *testing.F) {
	for _, dgs := range seedDatagrams(f) {
		for i, d := range dgs {
			if version16(d.data) == 5 && i < maxSeedsPerGroup {
				f.Add(d.data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, p []byte) { checkDecode(t, FamilyNetFlow, p) })
}

func FuzzSFlow(f *testing.F) {
	for _, dgs := range seedDatagrams(f) {
		for i, d := range dgs {
			if Family(d.data) == FamilySFlow && i < maxSeedsPerGroup {
				f.Add(d.data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, p []byte) { checkDecode(t, FamilySFlow, p) })
}
