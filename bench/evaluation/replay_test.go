package evaluation

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// The wormsign binary, built once per test process into buildDir (removed
// by TestMain).
var (
	buildOnce    sync.Once
	buildDir     string
	wormsignPath string
	buildErr     error
)

func wormsignBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "wormsign-eval")
		if buildErr != nil {
			return
		}
		wormsignPath = filepath.Join(buildDir, "wormsign")
		// By import path, from the package directory the test runs in:
		// this tree's binary, with or without -trimpath.
		cmd := exec.Command("go", "build", "-o", wormsignPath, "github.com/wormsign/wormsign/cmd/wormsign")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("cannot build wormsign: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return wormsignPath
}

// replayEnv is the environment of a replay: the caller's, without any
// WORMSIGN_ setting (no Kafka, no ClickHouse: replay runs in process), with
// the CTU network as the subscribers.
func replayEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WORMSIGN_") {
			env = append(env, kv)
		}
	}
	return append(env, append([]string{"WORMSIGN_SUBSCRIBER_NETWORKS=" + ctuNet.String(), "WORMSIGN_LOG_LEVEL=info"}, extra...)...)
}

// replayRun is what one `wormsign replay` printed.
type replayRun struct {
	stdout  []byte
	stderr  string
	lines   []string // stdout, one alert per line
	alerts  []alert.Alert
	late    int64 // late_flows of the final log line; -1 when it is absent
	elapsed time.Duration
}

var lateFlows = regexp.MustCompile(`\blate_flows=(\d+)`)

// replay runs `wormsign replay [args] capture` and parses its alerts.
func replay(tb testing.TB, capture string, args ...string) replayRun {
	tb.Helper()
	return replayWith(tb, replayEnv(), capture, args...)
}

// replayWith is replay in the environment env.
func replayWith(tb testing.TB, env []string, capture string, args ...string) replayRun {
	tb.Helper()
	cmd := exec.Command(wormsignBinary(tb), append(append([]string{"replay"}, args...), capture)...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	err := cmd.Run()
	r := replayRun{stdout: stdout.Bytes(), stderr: stderr.String(), late: -1, elapsed: time.Since(began)}
	if err != nil {
		tb.Fatalf("wormsign replay %s: %v\nstderr:\n%s", capture, err, tail(r.stderr, 40))
	}
	if m := lateFlows.FindAllStringSubmatch(r.stderr, -1); m != nil {
		r.late, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64)
	}
	sc := bufio.NewScanner(bytes.NewReader(r.stdout))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var a alert.Alert
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			tb.Fatalf("replay stdout line %d is not an alert: %v: %s", len(r.lines)+1, err, sc.Text())
		}
		r.lines = append(r.lines, sc.Text())
		r.alerts = append(r.alerts, a)
	}
	return r
}

// checkLate fails the test unless the replay reported 0 late flows.
func checkLate(t *testing.T, what string, r replayRun) {
	t.Helper()
	switch {
	case r.late < 0:
		last := "stderr is empty"
		if strings.TrimSpace(r.stderr) != "" {
			last = "its last lines:\n" + tail(r.stderr, 5)
		}
		t.Errorf("%s: replay did not report its late flows: no late_flows=N on stderr (want a final line like `level=INFO msg=\"replay done\" ... late_flows=N`); %s",
			what, last)
	case r.late > 0:
		t.Errorf("%s: the detector dropped %d flows as late", what, r.late)
	}
}

func lateString(n int64) string {
	if n < 0 {
		return "not reported"
	}
	return strconv.FormatInt(n, 10)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kindCounts is "smtp_fanout 3/12/3 dst_entropy 1/5/1" (open/update/resolved).
func kindCounts(as []alert.Alert) string {
	type c struct{ open, update, resolved int }
	counts := map[string]*c{}
	var kinds []string
	for _, a := range as {
		k := counts[a.Kind]
		if k == nil {
			k = &c{}
			counts[a.Kind] = k
			kinds = append(kinds, a.Kind)
		}
		switch a.State {
		case alert.StateOpen:
			k.open++
		case alert.StateUpdate:
			k.update++
		case alert.StateResolved:
			k.resolved++
		}
	}
	slices.Sort(kinds)
	var b strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&b, "%s %d/%d/%d  ", k, counts[k].open, counts[k].update, counts[k].resolved)
	}
	return strings.TrimSpace(b.String())
}

// firstDifference describes where two outputs part: the line, both
// alerts and the fields that differ.
func firstDifference(a, b []string) string {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return fmt.Sprintf("line %d differs in %s:\n  %s\n  %s", i+1, fieldDifference(a[i], b[i]), briefLine(a[i]), briefLine(b[i]))
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("one output is a prefix of the other: %d and %d lines", len(a), len(b))
	}
	return "identical"
}

// fieldDifference names the top-level JSON fields in which two alert lines
// differ, with both values: "last_seen (\"...\" vs \"...\"), ...".
func fieldDifference(a, b string) string {
	var ma, mb map[string]json.RawMessage
	if json.Unmarshal([]byte(a), &ma) != nil || json.Unmarshal([]byte(b), &mb) != nil {
		return "their text"
	}
	keys := slices.Sorted(maps.Keys(ma))
	for k := range mb {
		if _, ok := ma[k]; !ok {
			keys = append(keys, k)
		}
	}
	var diffs []string
	for _, k := range keys {
		if !bytes.Equal(ma[k], mb[k]) {
			if k == "evidence" {
				diffs = append(diffs, k)
				continue
			}
			diffs = append(diffs, fmt.Sprintf("%s (%s vs %s)", k, ma[k], mb[k]))
		}
	}
	return strings.Join(diffs, ", ")
}

// multisetDifference lists the lines only in a and only in b, ignoring
// their order.
func multisetDifference(a, b []string) (onlyA, onlyB []string) {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	for _, l := range a {
		if count[l] > 0 {
			onlyA = append(onlyA, l)
			count[l]--
		}
	}
	for _, l := range b {
		if count[l] < 0 {
			onlyB = append(onlyB, l)
			count[l]++
		}
	}
	return onlyA, onlyB
}

// sample shows the first n of lines as brief alerts.
func sample(lines []string, n int) string {
	var b strings.Builder
	for i, l := range lines {
		if i == n {
			fmt.Fprintf(&b, "\n  ... %d more", len(lines)-n)
			break
		}
		b.WriteString("\n  " + briefLine(l))
	}
	return b.String()
}

func briefLine(l string) string {
	var a alert.Alert
	if err := json.Unmarshal([]byte(l), &a); err != nil {
		return clip(l)
	}
	return brief(a)
}

func clip(s string) string {
	if len(s) > 260 {
		return s[:260] + "..."
	}
	return s
}

// brief is an alert in a failure message: kind, state, host, id, times.
func brief(a alert.Alert) string {
	id := a.ID
	if len(id) > 8 {
		id = id[:8]
	}
	return fmt.Sprintf("%s %-8s %s id=%s window_end=%s first_seen=%s last_seen=%s dsts=%d flows=%d", a.Kind, a.State, a.SubscriberIP, id,
		a.WindowEnd.Format("15:04:05"), a.FirstSeen.Format("15:04:05.000"), a.LastSeen.Format("15:04:05.000"), a.DistinctDsts, a.Flows)
}

// writeCapture writes datagrams as a pcap file.
func writeCapture(tb testing.TB, path string, dgs []Datagram) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := WritePcap(w, dgs); err != nil {
		tb.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// Two exporters for TestReplayHeldBackExporter.
var (
	exporterA = netip.MustParseAddrPort("192.0.2.1:50001")
	exporterB = netip.MustParseAddrPort("192.0.2.2:50002")
)

// twoExporters splits recs (in export order) by the parity of the source
// address, even ones to exporter A and odd ones to B, so that every
// subscriber's flows go through one exporter in their own order, and
// returns their datagrams as they arrive at the collector when B's are
// held back by holdB.
func twoExporters(recs []Record, holdB time.Duration) []Datagram {
	var even, odd []Record
	for _, r := range recs {
		if s := r.Flow.SrcAddr; s.Is4() && s.As4()[3]%2 == 1 {
			odd = append(odd, r)
		} else {
			even = append(even, r)
		}
	}
	a := NewIPFIXExporter(exporterA, DefaultCollector, 1, IPFIXOptions{}).Export(even)
	b := NewIPFIXExporter(exporterB, DefaultCollector, 1, IPFIXOptions{Delay: holdB}).Export(odd)
	all := append(a, b...)
	SortByTime(all)
	return all
}
