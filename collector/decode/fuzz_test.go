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
	d := newDecoder(true)
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
		if len(flows) > len(p) {
			t.Fatalf("%d flows from %d bytes", len(flows), len(p))
		}
		// What decodes must survive the trip through the topic encoding.
		if _, err := flow.DecodeBatch(nil, flow.AppendBatch(nil, flows)); err != nil {
			t.Fatalf("flows do not round-trip: %v", err)
		}
	}
}

// fuzzNetFlow seeds pairs (templates datagram, data datagram) of one
// version; the target learns from the first and decodes the second.
func fuzzNetFlow(f *testing.F, version uint16) {
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
