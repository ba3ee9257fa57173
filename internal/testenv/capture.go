package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Capture records the UDP datagrams sent to a loopback port with dumpcap,
// so that a test can compare what it decoded with what an exporter really
// sent, as decoded by tshark.
type Capture struct {
	Path string
	port int
	cmd  *exec.Cmd
}

// CaptureUDP starts capturing datagrams to 127.0.0.1:port and returns once
// the capture runs. It stops at cleanup at the latest.
func CaptureUDP(t testing.TB, port int) *Capture {
	t.Helper()
	c := startDumpcap(t, "lo", fmt.Sprintf("udp dst port %d", port), "export.pcapng")
	c.port = port
	return c
}

// startDumpcap captures the packets on iface that match filter into a file
// of that name, and returns once the capture runs.
func startDumpcap(t testing.TB, iface, filter, name string) *Capture {
	t.Helper()
	c := &Capture{Path: filepath.Join(t.TempDir(), name)}
	c.cmd = exec.Command(Tool(t, "dumpcap"), "-i", iface, "-f", filter, "-w", c.Path)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("cannot start dumpcap: %v", err)
	}
	t.Cleanup(func() { c.Stop(t) })
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if strings.HasPrefix(sc.Text(), "Capturing on") {
				started <- ""
			}
		}
		started <- strings.Join(lines, "\n")
	}()
	select {
	case msg := <-started:
		if msg != "" {
			t.Fatalf("dumpcap failed:\n%s", msg)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("dumpcap did not start")
	}
	return c
}

// Stop ends the capture and flushes the file.
func (c *Capture) Stop(t testing.TB) {
	if c.cmd.Process == nil || c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	c.cmd.Wait()
}

// NetFlowRecords stops the capture and returns how many flow records
// tshark decodes in it (NetFlow v5/v9 and IPFIX data records; templates
// are learned from the capture itself).
func (c *Capture) NetFlowRecords(t testing.TB) int {
	t.Helper()
	c.Stop(t)
	tshark := Tool(t, "tshark")
	var stderr strings.Builder
	cmd := exec.Command(tshark, "-r", c.Path, "-d", fmt.Sprintf("udp.port==%d,cflow", c.port),
		"-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,", "-E", "separator=,",
		"-e", "cflow.srcaddr", "-e", "cflow.srcaddrv6")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark on %s: %v\n%s", c.Path, err, stderr.String())
	}
	// One line per datagram: the IPv4 and IPv6 source addresses of all its
	// records, comma separated (an absent field leaves an empty item).
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		for _, item := range strings.Split(line, ",") {
			if strings.TrimSpace(item) != "" {
				n++
			}
		}
	}
	if _, err := os.Stat(c.Path); err != nil {
		t.Fatal(err)
	}
	return n
}
