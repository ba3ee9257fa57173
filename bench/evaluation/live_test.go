package evaluation

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestCTU13LiveEqualsReplay sends the CTU-13 capture's datagrams over UDP,
// paced, to a live `wormsign run` (clock-skew correction off, as the
// capture's export times are years old), and compares its alerts with
// those of `wormsign replay` of the same capture: the same ids, states,
// counts and windows. Only the exporter differs (the live one is the UDP
// sender, 127.0.0.1), and replay resolves what is still open when its
// captures end, where the live run, stopped, leaves it open.
func TestCTU13LiveEqualsReplay(t *testing.T) {
	d := load(t)
	path, _ := d.capture(t, t.TempDir())
	want := replay(t, path)
	dgs := NewIPFIXExporter(DefaultExporter, DefaultCollector, 1, IPFIXOptions{}).Export(d.recs)

	port := testenv.FreeUDPPort(t)
	cmd := exec.Command(wormsignBinary(t), "run")
	cmd.Env = replayEnv(
		fmt.Sprintf("WORMSIGN_COLLECTOR_NETFLOW_LISTEN=127.0.0.1:%d", port),
		"WORMSIGN_COLLECTOR_SFLOW_LISTEN=",
		"WORMSIGN_COLLECTOR_CORRECT_CLOCK_SKEW=false",
		"WORMSIGN_HTTP_LISTEN=127.0.0.1:0",
	)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	started := make(chan struct{})
	var logs strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "wormsign started") {
				once = true
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatalf("wormsign run did not start:\n%s", logs.String())
	}
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// About 4,000 datagrams (110,000 flows) a second: paced, well below
	// what the collector takes without loss.
	began := time.Now()
	for i, dg := range dgs {
		if _, err := conn.Write(dg.Payload); err != nil {
			t.Fatal(err)
		}
		if i%40 == 39 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("sent %d datagrams in %s", len(dgs), time.Since(began).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wormsign run: %v\n%s", err, logs.String())
	}
	if strings.Contains(logs.String(), "dropped") {
		t.Logf("run logs:\n%s", tail(logs.String(), 20))
	}

	live := withoutExporter(t, strings.Split(strings.TrimSpace(stdout.String()), "\n"))
	replayed := withoutExporter(t, want.lines)
	openAtEnd := map[string]bool{} // incidents the live run did not resolve
	for _, a := range live {
		openAtEnd[a.id] = a.state != "resolved"
	}
	var missing, extra []string
	for _, a := range replayed {
		if !slices.ContainsFunc(live, func(b keyedAlert) bool { return b.text == a.text }) &&
			!(a.state == "resolved" && openAtEnd[a.id]) {
			missing = append(missing, a.text)
		}
	}
	for _, a := range live {
		if !slices.ContainsFunc(replayed, func(b keyedAlert) bool { return b.text == a.text }) {
			extra = append(extra, a.text)
		}
	}
	t.Logf("live: %d alerts, replay: %d", len(live), len(replayed))
	if len(live) < 10 {
		t.Errorf("the live run printed %d alerts, want the replay's %d", len(live), len(replayed))
	}
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("live and replay differ:\n%d only in replay:%s\n%d only live:%s", len(missing), sample(missing, 5), len(extra), sample(extra, 5))
	}
}

type keyedAlert struct{ id, state, text string }

// withoutExporter returns each alert line as canonical JSON without its
// exporter field.
func withoutExporter(t *testing.T, lines []string) []keyedAlert {
	t.Helper()
	var out []keyedAlert
	for _, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not an alert: %v: %s", err, line)
		}
		delete(m, "exporter")
		b, _ := json.Marshal(m)
		out = append(out, keyedAlert{fmt.Sprint(m["id"]), fmt.Sprint(m["state"]), string(b)})
	}
	return out
}
