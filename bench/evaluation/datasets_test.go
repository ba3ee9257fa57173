package evaluation

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/internal/testenv"
)

// The labelled data other than CTU-13 scenario 6 (../shared/datasets/
// stratosphere, see ../shared/testdata/MANIFEST.md), through the same path:
// converted to the IPFIX a router would export, replayed by the wormsign
// binary at the defaults, every rule on that has something to look at
// (darknet and relay_abuse are off by default: none of these data sets
// says which space is dark or which servers are the ISP's relays). Every
// source address is a subscriber, as for an ISP whose subscribers these
// hosts were. The labels come from the MANIFEST and the data sets' READMEs
// (the binetflow Label columns are empty).

type labelledSet struct {
	name, file string
	read       func(path string) ([]Record, error)
	// labelled hosts and what they do
	hosts map[string]string
	// found: the labelled hosts and kinds the defaults find, as measured
	// (docs/detection.md, Evaluation); a regression loses one.
	found []string
	// maxFP: alerted hosts that are not labelled, per kind, as measured.
	maxFP map[string]int
}

func readBinetflowRecs(path string) ([]Record, error) {
	recs, _, err := ReadBinetflow(path)
	return recs, err
}

var labelledSets = []labelledSet{
	{name: "test2-malicious", file: "dataset__test2-malicious.binetflow", read: readBinetflowRecs,
		hosts: map[string]string{"10.8.0.69": "infected (malware capture)"}},
	{name: "test11-portscan", file: "dataset__test11-portscan.binetflow", read: readBinetflowRecs,
		hosts: map[string]string{"10.8.0.69": "port scan, 22 addresses, 21 ports"}},
	{name: "test3-mixed", file: "dataset__test3-mixed.binetflow", read: readBinetflowRecs,
		hosts: map[string]string{"46.166.151.160": "horizontal scan, 28 addresses, 1 port", "216.73.23.146": "horizontal scan, 11 addresses on 445/tcp"}},
	{name: "test12-icmp-portscan", file: "dataset__test12-icmp-portscan.pcap", read: ReadPacketFlows,
		hosts: map[string]string{"192.168.1.109": "ICMP sweep and port scan"}},
	{name: "zeek-port-scanning", file: "002-zeek-scenario-port-scanning__conn.log", read: ReadZeekConn,
		hosts: map[string]string{"172.16.1.11": "nmap scans, 182 addresses, 105 ports"},
		found: []string{"172.16.1.11 smtp_fanout"}},
}

// datasetEnv: defaults, every source a subscriber.
func datasetEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WORMSIGN_") {
			env = append(env, kv)
		}
	}
	return append(env, "WORMSIGN_LOG_LEVEL=info")
}

type setResult struct {
	flows, hosts int
	span         time.Duration
	found        map[string]time.Duration // "host kind" → open's last_seen after the host's first flow
	trigger      map[string]string
	fp           map[string][]string // kind → unlabelled hosts alerted
	alerts       []alert.Alert
}

func runLabelledSet(t *testing.T, ds labelledSet) setResult {
	t.Helper()
	recs, err := ds.read(testenv.Shared(t, filepath.Join("datasets/stratosphere", ds.file)))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatalf("%s: no flows", ds.file)
	}
	ExportOrder(recs)
	first := map[netip.Addr]int64{}
	lo, hi := recs[0].Flow.StartMs, recs[0].Flow.EndMs
	for _, r := range recs {
		if _, ok := first[r.Flow.SrcAddr]; !ok {
			first[r.Flow.SrcAddr] = r.Flow.EndMs
		}
		first[r.Flow.SrcAddr] = min(first[r.Flow.SrcAddr], r.Flow.EndMs)
		lo, hi = min(lo, r.Flow.StartMs), max(hi, r.Flow.EndMs)
	}
	path := filepath.Join(t.TempDir(), ds.name+".pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	if _, err := WriteIPFIXCapture(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	env := datasetEnv()
	// With the default publishers, silences included (test2-malicious
	// has nine hours without a flow): no publisher may run ahead of
	// another and make its flows late.
	run := replayWith(t, env, path)
	checkLate(t, ds.name, run)
	res := setResult{flows: len(recs), hosts: len(first), span: time.Duration(hi-lo) * time.Millisecond,
		found: map[string]time.Duration{}, trigger: map[string]string{}, fp: map[string][]string{}, alerts: run.alerts}
	for _, a := range run.alerts {
		if a.State != alert.StateOpen {
			continue
		}
		if _, ok := ds.hosts[a.SubscriberIP]; ok {
			k := a.SubscriberIP + " " + a.Kind
			if _, seen := res.found[k]; !seen {
				res.found[k] = a.LastSeen.Sub(time.UnixMilli(first[netip.MustParseAddr(a.SubscriberIP)]))
				res.trigger[k] = a.Evidence.Trigger
			}
			continue
		}
		if !slices.Contains(res.fp[a.Kind], a.SubscriberIP) {
			res.fp[a.Kind] = append(res.fp[a.Kind], a.SubscriberIP)
		}
	}
	return res
}

// TestLabelledDatasets runs every rule at its defaults over the labelled
// data sets and fails when a labelled host found before is missed, or
// when a kind alerts on more unlabelled hosts than measured.
func TestLabelledDatasets(t *testing.T) {
	var table strings.Builder
	fmt.Fprintf(&table, "\n| data set | flows | labelled host | found (kind: after its first flow) | false positives |\n|---|---|---|---|---|\n")
	for _, ds := range labelledSets {
		res := runLabelledSet(t, ds)
		hosts := slices.Sorted(func(yield func(string) bool) {
			for h := range ds.hosts {
				if !yield(h) {
					return
				}
			}
		})
		for i, h := range hosts {
			var found []string
			for _, kind := range alert.Kinds {
				if d, ok := res.found[h+" "+kind]; ok {
					found = append(found, fmt.Sprintf("%s (%s): %s", kind, res.trigger[h+" "+kind], d.Round(time.Second)))
				}
			}
			if len(found) == 0 {
				found = []string{"missed"}
			}
			fps := "none"
			if i == 0 {
				var parts []string
				for _, kind := range alert.Kinds {
					if n := len(res.fp[kind]); n > 0 {
						parts = append(parts, fmt.Sprintf("%s %d %v", kind, n, res.fp[kind]))
					}
				}
				if len(parts) > 0 {
					fps = strings.Join(parts, "; ")
				}
			} else {
				fps = "″"
			}
			name := ds.name
			if i > 0 {
				name = "″"
			}
			fmt.Fprintf(&table, "| %s | %d | %s (%s) | %s | %s |\n", name, res.flows, h, ds.hosts[h], strings.Join(found, ", "), fps)
		}
		for _, k := range ds.found {
			if _, ok := res.found[k]; !ok {
				t.Errorf("%s: %s no longer found (alerts: %s)", ds.name, k, kindCounts(res.alerts))
			}
		}
		for _, kind := range alert.Kinds {
			if n := len(res.fp[kind]); n > ds.maxFP[kind] {
				t.Errorf("%s: %d %s false positives %v, measured %d", ds.name, n, kind, res.fp[kind], ds.maxFP[kind])
			}
		}
	}
	t.Log(table.String())
}
