package collector

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

func TestMain(m *testing.M) {
	// The lab's SMTP peers are copies of this test binary.
	testenv.RunPeer()
	os.Exit(m.Run())
}

// liveRecord is what both tshark and wormsign say about one exported flow.
type liveRecord struct {
	Src, Dst         string
	SrcPort, DstPort uint16
	Proto            uint8
	Packets, Bytes   uint64
}

// startCollector runs the collector component on 127.0.0.1:port with an
// in-process bus and returns a channel of the flows it publishes.
func startCollector(t *testing.T, family string, port int) (*prometheus.Registry, <-chan flow.Flow) {
	t.Helper()
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if family == decode.FamilySFlow {
		cfg.SFlowListen = []string{addr}
	} else {
		cfg.NetFlowListen = []string{addr}
	}
	cfg.Linger = 10 * time.Millisecond
	mem := bus.NewMemory(1 << 16)
	consumer, err := mem.Consumer("flows", "test")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Dependencies{
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registry: reg, Bus: mem, Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	flows := make(chan flow.Flow, 1<<16)
	go func() {
		for {
			m, err := consumer.Fetch(context.Background())
			if err != nil {
				return
			}
			batch, err := flow.DecodeBatch(nil, m.Value)
			if err != nil {
				t.Errorf("bad batch on the bus: %v", err)
				return
			}
			for _, f := range batch {
				flows <- f
			}
		}
	}()
	t.Cleanup(func() {
		c.Stop()
		mem.Close()
	})
	return reg, flows
}

// checkNoLoss fails when the collector counted sequence gaps, decode
// errors or template misses: a real exporter on loopback loses nothing,
// so any would be a misreading of its sequence numbers or templates.
func checkNoLoss(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "wormsign_collector_lost_datagrams_total", "wormsign_collector_lost_records_total",
			"wormsign_collector_decode_errors_total", "wormsign_collector_template_misses_total",
			"wormsign_collector_dropped_flows_total":
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("%s%v = %v, want 0", mf.GetName(), m.GetLabel(), v)
				}
			}
		}
	}
}

var (
	reLiveFlow  = regexp.MustCompile(`^\s+(?:Flow \d+|pdu \d+/\d+)(?: \(.*\))?$`)
	reLiveField = regexp.MustCompile(`^\s+(SrcAddr|DstAddr|SrcPort|DstPort|Protocol|Packets|Octets|ICMP Type|IPv4 ICMP Type|IPv4 ICMP Code|IPv6 ICMP Type|IPv6 ICMP Code): (\S+)(?: \((\d+)\))?`)
)

// liveICMP is what a record's ICMP elements said, per family: type and
// code, and whether there were any.
type liveICMP struct {
	typ, code [2]uint16 // IPv4, IPv6
	has       [2]bool
}

// tsharkRecords decodes the flow records of a NetFlow/IPFIX capture. The
// ICMP elements (32 "ICMP Type: 0x0800"; 176-179 and 139 as type and
// code) make an ICMP record's destination port, type<<8|code, as the
// collector fills it: its own family's, else the other's when not zero.
func tsharkRecords(t *testing.T, path string, port int) []liveRecord {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, "tshark"), "-r", path, "-V",
		"-d", fmt.Sprintf("udp.port==%d,cflow", port)).Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	var recs []liveRecord
	var icmp []liveICMP // of recs
	var cur *liveRecord
	inCflow := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' {
			// A new protocol layer (or frame): only NetFlow's count.
			inCflow, cur = line == "Cisco NetFlow/IPFIX", nil
			continue
		}
		if !inCflow {
			continue
		}
		if reLiveFlow.MatchString(line) {
			recs, icmp = append(recs, liveRecord{}), append(icmp, liveICMP{})
			cur = &recs[len(recs)-1]
			continue
		}
		m := reLiveField.FindStringSubmatch(line)
		if m == nil || cur == nil {
			continue
		}
		num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
		switch m[1] {
		case "SrcAddr":
			cur.Src = m[2]
		case "DstAddr":
			cur.Dst = m[2]
		case "SrcPort":
			cur.SrcPort = uint16(num(m[2]))
		case "DstPort":
			cur.DstPort = uint16(num(m[2]))
		case "Protocol":
			cur.Proto = uint8(num(m[3]))
		case "Packets":
			cur.Packets = num(m[2])
		case "Octets":
			cur.Bytes = num(m[2])
		case "ICMP Type":
			tc, _ := strconv.ParseUint(m[2], 0, 16)
			e := &icmp[len(icmp)-1]
			e.typ[0], e.code[0], e.has[0] = uint16(tc>>8), uint16(tc&0xff), true
		case "IPv4 ICMP Type", "IPv6 ICMP Type", "IPv4 ICMP Code", "IPv6 ICMP Code":
			e, fam := &icmp[len(icmp)-1], 0
			if strings.HasPrefix(m[1], "IPv6") {
				fam = 1
			}
			if strings.HasSuffix(m[1], "Type") {
				e.typ[fam] = uint16(num(m[2]))
			} else {
				e.code[fam] = uint16(num(m[2]))
			}
			e.has[fam] = true
		}
	}
	for i := range recs {
		r, e := &recs[i], icmp[i]
		own := 0
		switch r.Proto {
		case 1:
		case 58:
			own = 1
		default:
			continue
		}
		other := 1 - own
		switch {
		case e.has[own]:
			r.SrcPort, r.DstPort = 0, e.typ[own]<<8|e.code[own]
		case e.has[other] && e.typ[other]<<8|e.code[other] != 0:
			r.SrcPort, r.DstPort = 0, e.typ[other]<<8|e.code[other]
		}
	}
	// Options records (softflowd's sampling and uptime) are no flows.
	return slices.DeleteFunc(recs, func(r liveRecord) bool { return r.Src == "" })
}

func sortRecords(r []liveRecord) {
	slices.SortFunc(r, func(a, b liveRecord) int {
		return strings.Compare(fmt.Sprintf("%+v", a), fmt.Sprintf("%+v", b))
	})
}

// collect reads flows until n arrived or nothing came for a while, and
// checks their event times: the traffic happened within the last minute.
func collect(t *testing.T, flows <-chan flow.Flow, n int) []liveRecord {
	t.Helper()
	var got []liveRecord
	now := time.Now().UnixMilli()
	wait := 5 * time.Second
	for {
		select {
		case f := <-flows:
			got = append(got, liveRecord{
				Src: f.SrcAddr.String(), Dst: f.DstAddr.String(), SrcPort: f.SrcPort, DstPort: f.DstPort,
				Proto: f.Proto, Packets: f.Packets, Bytes: f.Bytes,
			})
			if f.StartMs > f.EndMs || f.EndMs < now-60_000 || f.EndMs > now+2000 {
				t.Errorf("flow %s:%d > %s:%d has start %d, end %d; want within the last minute of %d",
					f.SrcAddr, f.SrcPort, f.DstAddr, f.DstPort, f.StartMs, f.EndMs, now)
			}
			if len(got) >= n {
				// Anything beyond n is a flow tshark did not see.
				wait = 500 * time.Millisecond
			}
		case <-time.After(wait):
			return got
		}
	}
}

// TestSoftflowdLive has softflowd export live traffic of the lab as
// NetFlow v5, v9 and IPFIX, and checks that the collector publishes
// exactly the records tshark decodes in a capture of the export port.
func TestSoftflowdLive(t *testing.T) {
	for _, version := range []int{5, 9, 10} {
		t.Run(fmt.Sprintf("version %d", version), func(t *testing.T) {
			lab := testenv.NewLab(t, 2, 12)
			port := testenv.FreeUDPPort(t)
			reg, flows := startCollector(t, decode.FamilyNetFlow, port)
			capture := testenv.CaptureUDP(t, port)
			sf := lab.StartSoftflowd(t, version, port)
			lab.StartSMTPServers(t, lab.Servers[:8])
			if n := lab.SMTPSessions(t, lab.Subscribers[0], lab.Servers[:12]); n != 8 {
				t.Fatalf("%d SMTP sessions answered, want 8", n)
			}
			lab.SMTPSessions(t, lab.Subscribers[1], lab.Servers[:2])
			sf.ExpireAll(t)
			time.Sleep(2 * time.Second) // let the export datagrams land
			capture.Stop(t)
			want := tsharkRecords(t, capture.Path, port)
			// 12 attempts and their answers or refusals, 2 sessions both ways.
			if len(want) < 28 {
				t.Fatalf("tshark decoded %d records in the export, want at least 28", len(want))
			}
			got := collect(t, flows, len(want))
			sortRecords(want)
			sortRecords(got)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("collector flows differ from tshark's decode of the export (-tshark +wormsign):\n%s", diff)
			}
			var zombie int
			for _, r := range got {
				if r.Src == lab.Subscribers[0].String() && r.DstPort == 25 {
					zombie++
				}
			}
			if zombie != 12 {
				t.Errorf("%d flows from the zombie to port 25, want 12", zombie)
			}
			checkNoLoss(t, reg)
		})
	}
}

var (
	reSFlowSample = regexp.MustCompile(`^    (?:Expanded flow|Flow) sample, seq`)
	reSFlowField  = regexp.MustCompile(`^\s+(Frame Length|Source Address|Destination Address|Source Port|Destination Port|Protocol|Next Header|Type|Code): (\S+)(?: \((\d+)\))?`)
	reSFlowICMP   = regexp.MustCompile(`^\s+Internet Control Message Protocol(?: v6)?$`)
	// "Type: 8 (Echo (ping) request)", but "Type: Neighbor Solicitation (135)".
	reICMPType = regexp.MustCompile(`^\s+Type: (?:(\d+) .*|.* \((\d+)\))$`)
	// tshark dumps undissected data (an ICMP echo's) at the left margin
	// in the middle of a sample.
	reHexDump = regexp.MustCompile(`^[0-9a-f]{4}  `)
)

// tsharkSamples decodes the flow samples of an sFlow capture: one flow
// each, from the sampled packet header. ICMP's type and code make the
// destination port (type<<8|code), as the collector fills it; what
// follows them is the message body (an error's quoted packet), not the
// sample's packet.
func tsharkSamples(t *testing.T, path string, port int) []liveRecord {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, "tshark"), "-r", path, "-V",
		"-d", fmt.Sprintf("udp.port==%d,sflow", port)).Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	var recs []liveRecord
	var cur *liveRecord
	inSFlow, protoSet := false, false
	// icmp: in the sample's ICMP header; body: past it.
	icmp, body := false, false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' && !reHexDump.MatchString(line) {
			inSFlow, cur = line == "InMon sFlow", nil
			continue
		}
		if !inSFlow {
			continue
		}
		if reSFlowSample.MatchString(line) {
			protoSet, icmp, body = false, false, false
			recs = append(recs, liveRecord{Packets: 1})
			cur = &recs[len(recs)-1]
			continue
		}
		if strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     ") {
			cur = nil // a counter sample or another top-level item
		}
		if cur == nil || body {
			continue
		}
		if reSFlowICMP.MatchString(line) {
			// Only where ICMP is the packet's protocol: the collector
			// does not follow IPv6 extension headers.
			icmp = cur.Proto == 1 || cur.Proto == 58
			continue
		}
		m := reSFlowField.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
		switch m[1] {
		case "Frame Length":
			if cur.Bytes == 0 { // the sampled frame's, not an inner length
				cur.Bytes = num(m[2])
			}
		case "Source Address":
			cur.Src = m[2]
		case "Destination Address":
			cur.Dst = m[2]
		case "Source Port":
			cur.SrcPort = uint16(num(m[2]))
		case "Destination Port":
			cur.DstPort = uint16(num(m[2]))
		case "Type":
			if typ := reICMPType.FindStringSubmatch(line); icmp && typ != nil {
				cur.DstPort = uint16(num(typ[1]+typ[2])) << 8
			}
		case "Code":
			if icmp {
				cur.DstPort |= uint16(num(m[2]))
				icmp, body = false, true
			}
		case "Protocol", "Next Header":
			// IPv6: the first next header, as the collector reads it.
			if !protoSet {
				cur.Proto, protoSet = uint8(num(m[3])), true
			}
		}
	}
	return recs
}

// TestPmacctSFlowLive has pmacctd's sfprobe plugin sample every packet
// of the lab's live traffic as sFlow v5, and checks that the collector
// publishes exactly the samples tshark decodes in a capture of the
// export port.
func TestPmacctSFlowLive(t *testing.T) {
	bin := testenv.Tool(t, "pmacctd")
	lab := testenv.NewLab(t, 2, 6)
	port := testenv.FreeUDPPort(t)
	reg, flows := startCollector(t, decode.FamilySFlow, port)
	capture := testenv.CaptureUDP(t, port)
	conf := filepath.Join(t.TempDir(), "pmacctd.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`daemonize: false
pcap_interface: %s
plugins: sfprobe
sfprobe_receiver: 127.0.0.1:%d
sfprobe_agentip: 127.0.0.1
sfprobe_sampling_rate: 1
`, lab.RouterIf, port)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", conf)
	logPath := filepath.Join(t.TempDir(), "pmacctd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// pmacctd forks its plugins: give them a process group to end together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start pmacctd: %v", err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			logs, _ := os.ReadFile(logPath)
			t.Logf("pmacctd output:\n%s", logs)
		}
	})
	time.Sleep(2 * time.Second) // pmacctd opens the capture and its plugin
	lab.StartSMTPServers(t, lab.Servers[:4])
	if n := lab.SMTPSessions(t, lab.Subscribers[0], lab.Servers[:6]); n != 4 {
		t.Fatalf("%d SMTP sessions answered, want 4", n)
	}
	// Push the last packets out of the capture ring, then give the probe
	// time to send its samples.
	for range 5 {
		lab.Nudge(t)
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	// Unanswered SYNs are retried for seconds: stop the probe before the
	// capture, or a sample sent in between reaches the collector only.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)
	capture.Stop(t)
	want := tsharkSamples(t, capture.Path, port)
	smtp := 0
	for _, r := range want {
		if r.DstPort == 25 {
			smtp++
		}
	}
	// Each of 6 attempts sends at least a SYN to port 25.
	if smtp < 6 {
		t.Fatalf("tshark decoded %d samples of packets to port 25 in the export, want at least 6 (%d samples)", smtp, len(want))
	}
	got := collect(t, flows, len(want))
	for i := range got {
		if got[i].Src == "invalid IP" { // a sampled frame that is not IP
			got[i].Src, got[i].Dst = "", ""
		}
	}
	sortRecords(want)
	sortRecords(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("collector flows differ from tshark's decode of the export (-tshark +wormsign):\n%s", diff)
	}
	checkNoLoss(t, reg)
}
