package collector

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/network"
)

// Flood test parameters: a bounded count at a bounded rate.
const (
	floodDatagrams = 120_000 // hostile datagrams, all kinds together
	floodRate      = 12_000  // hostile datagrams per second
	floodBudget    = 32 << 20
	floodPerAddr   = 512 << 10
	// Memory bound the test asserts: Go heap in use (after a collection)
	// may grow by the decoder budget plus this much (metrics series of the
	// attackers' addresses, socket buffers, the bus).
	floodHeapSlack = 32 << 20
	// The whole test process (collector, senders, test binary) stays
	// resident under this.
	floodMaxRSS   = 256 << 20
	legitInterval = time.Millisecond // one datagram of legitRecords each
	legitRecords  = 10
)

// TestHostileFlood floods a collector on loopback UDP from many exporter
// addresses (127.0.0.2-121 inside the allow list, as spoofed router
// addresses would be, and 127.0.1.1-8 outside it) on thousands of source
// ports: IPFIX template storms (20 random templates of up to 100 fields in
// a random observation domain per datagram), oversized and truncated
// datagrams, NetFlow v5 with absurd record counts and sFlow with absurd
// sample and record counts. Meanwhile a legitimate IPFIX exporter
// (127.0.0.1) sends sequence-numbered data at a moderate rate. The decoder
// state stays within its budget, the Go heap within a stated bound, every
// datagram is counted (decoded, refused or dropped by reason), and the
// legitimate exporter loses nothing.
func TestHostileFlood(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = []string{"127.0.0.1:0"}, []string{"127.0.0.1:0"}
	cfg.Exporters = []network.Prefix{network.MustParsePrefix("127.0.0.0/25")}
	cfg.Decode.DecoderBudgetBytes, cfg.Decode.MaxStatePerAddress = floodBudget, floodPerAddr
	// max_exporters stays at its default: it is not reached before the
	// budget (TestExporterLimits covers it).
	cfg.Decode.MaxTemplatesPerExporter = 256
	cfg.ReceiveBuffer = 32 << 20
	cfg.Linger = 10 * time.Millisecond
	mem := bus.NewMemory(1 << 16)
	consumer, err := mem.Consumer("flows", "test")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Dependencies{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: reg, Bus: mem, Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	nfAddr, sfAddr := c.Addrs()[0].(*net.UDPAddr), c.Addrs()[1].(*net.UDPAddr)
	legitAddr := netip.MustParseAddr("127.0.0.1")

	// Flows on the bus, by exporter: the legitimate one's, and anyone
	// else's.
	var legitFlows, otherFlows atomic.Int64
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		var batch []flow.Flow
		for {
			m, err := consumer.Fetch(context.Background())
			if err != nil {
				return
			}
			if batch, err = flow.DecodeBatch(batch[:0], m.Value); err != nil {
				t.Errorf("bad batch on the bus: %v", err)
				return
			}
			for i := range batch {
				if batch[i].Exporter == legitAddr {
					legitFlows.Add(1)
				} else {
					otherFlows.Add(1)
				}
			}
		}
	}()

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore, rssBefore := ms.HeapInuse, rss(t)

	// The legitimate exporter: its template first, then data at a
	// moderate rate, refreshing its template every second, until the
	// flood ends.
	stop := make(chan struct{})
	var legitSent, legitDatagrams, legitTemplates int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, nfAddr)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		tmpl := func() []byte {
			return nfbuild.Message{Version: 10, Domain: 1, Sequence: uint32(legitSent), UnixSecs: uint32(time.Now().Unix()),
				Sets: [][]byte{nfbuild.Set(2, nfbuild.Template256)}}.Bytes()
		}
		conn.Write(tmpl())
		legitTemplates++
		tick := time.NewTicker(legitInterval)
		defer tick.Stop()
		lastTemplate := time.Now()
		var recs [][]byte
		for i := range legitRecords {
			recs = append(recs, nfbuild.Record256("203.0.113.7", fmt.Sprintf("198.51.100.%d", i+1), 25, 1000, 2000))
		}
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if time.Since(lastTemplate) > time.Second {
				conn.Write(tmpl())
				legitTemplates++
				lastTemplate = time.Now()
			}
			dg := nfbuild.Message{Version: 10, Domain: 1, Sequence: uint32(legitSent), UnixSecs: uint32(time.Now().Unix()),
				Sets: [][]byte{nfbuild.Set(256, recs...)}}.Bytes()
			if _, err := conn.Write(dg); err != nil {
				t.Error(err)
				return
			}
			legitSent += legitRecords
			legitDatagrams++
		}
	}()

	// Memory and state, sampled during the flood.
	var peakHeap, peakState, peakRSS atomic.Int64
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap.Store(max(peakHeap.Load(), int64(ms.HeapInuse)))
			peakState.Store(max(peakState.Load(), c.decoder.StateBytes()))
			peakRSS.Store(max(peakRSS.Load(), rss(t)))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	// The flood.
	time.Sleep(100 * time.Millisecond) // the legitimate template is in
	start := time.Now()
	sent := flood(t, nfAddr, sfAddr)
	floodTime := time.Since(start)
	time.Sleep(200 * time.Millisecond) // legitimate data during the flood's tail
	close(stop)
	wg.Wait()
	<-sampleDone
	// Everything sent is read and published.
	deadline := time.Now().Add(10 * time.Second)
	for legitFlows.Load() < legitSent && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapAfter, rssAfter := ms.HeapInuse, rss(t)

	datagrams := counter(t, reg, "wormsign_collector_datagrams_total")
	notAllowed := labeled(t, reg, "wormsign_collector_dropped_flows_total", "reason", "exporter_not_allowed")
	refusals := map[string]float64{}
	for _, r := range decode.RefusalReasons {
		refusals[r] = labeled(t, reg, "wormsign_collector_decoder_refusals_total", "reason", r)
	}
	kinds := map[string]float64{}
	for _, k := range []string{"truncated", "malformed", "malformed_set", "version", "global_budget", "address_cap", "too_many_exporters"} {
		kinds[k] = labeled(t, reg, "wormsign_collector_decode_errors_total", "kind", k)
	}
	t.Logf("flood: %d hostile datagrams in %s (%s); legitimate: %d datagrams, %d flows sent, %d on the bus; other flows on the bus: %d",
		sent.total(), floodTime.Round(time.Millisecond), sent, legitDatagrams, legitSent, legitFlows.Load(), otherFlows.Load())
	t.Logf("counted: datagrams_total %.0f, dropped exporter_not_allowed %.0f; decode errors %v; refusals %v", datagrams, notAllowed, kinds, refusals)
	t.Logf("decoder state: peak %d, end %d bytes of a %d budget; %s", peakState.Load(), c.decoder.StateBytes(), floodBudget, exportersText(c.decoder))
	t.Logf("Go heap in use: %d MiB before, peak %d MiB, %d MiB after a collection; RSS %d MiB before, peak %d MiB, %d MiB after",
		heapBefore>>20, peakHeap.Load()>>20, heapAfter>>20, rssBefore>>20, peakRSS.Load()>>20, rssAfter>>20)

	// Bounded memory.
	if peakState.Load() > floodBudget || c.decoder.StateBytes() > floodBudget {
		t.Errorf("decoder state peaked at %d bytes, over its budget %d", peakState.Load(), floodBudget)
	}
	if grow := int64(heapAfter) - int64(heapBefore); grow > floodBudget+floodHeapSlack {
		t.Errorf("Go heap in use grew by %d MiB, over the bound %d MiB", grow>>20, (floodBudget+floodHeapSlack)>>20)
	}
	if peakRSS.Load() > floodMaxRSS {
		t.Errorf("resident set peaked at %d MiB, over the bound %d MiB", peakRSS.Load()>>20, floodMaxRSS>>20)
	}
	// Every datagram counted: decoded or failed (datagrams_total), or
	// dropped at the allow list. The kernel dropped none (sequence
	// numbers of the legitimate exporter below; the socket's own counter
	// here).
	want := float64(sent.total() + legitDatagrams + legitTemplates)
	if got := datagrams + notAllowed; got != want {
		t.Errorf("counted %.0f datagrams (datagrams_total %.0f + exporter_not_allowed %.0f), sent %.0f", got, datagrams, notAllowed, want)
	}
	if notAllowed != float64(sent.notAllowed) {
		t.Errorf("exporter_not_allowed %.0f, sent %d from outside the allow list", notAllowed, sent.notAllowed)
	}
	for _, r := range []string{"global_budget", "address_cap", "templates_per_exporter"} {
		if refusals[r] == 0 {
			t.Errorf("no %s refusals counted: %v", r, refusals)
		}
	}
	if kinds["truncated"] != float64(sent.truncated+sent.oversized+sent.netflow5) || kinds["malformed"] != float64(sent.sflow) {
		t.Errorf("decode errors %v: want %d truncated and %d malformed (sFlow)", kinds, sent.truncated+sent.oversized+sent.netflow5, sent.sflow)
	}
	// The legitimate exporter lost nothing.
	if got := legitFlows.Load(); got != legitSent {
		t.Errorf("legitimate exporter: %d flows on the bus, sent %d", got, legitSent)
	}
	for _, name := range []string{"template_misses_total", "lost_records_total", "templates_refused_total"} {
		if v := labeled(t, reg, "wormsign_collector_"+name, "exporter", "127.0.0.1"); v != 0 {
			t.Errorf("legitimate exporter: %s = %v, want 0", name, v)
		}
	}
	if v := labeled(t, reg, "wormsign_collector_decode_errors_total", "exporter", "127.0.0.1"); v != 0 {
		t.Errorf("legitimate exporter: %v decode errors, want 0", v)
	}
	if v := labeled(t, reg, "wormsign_collector_dropped_flows_total", "reason", "queue_full"); v != 0 {
		t.Errorf("%v flows dropped for a full queue", v)
	}
	if otherFlows.Load() != 0 {
		t.Errorf("%d flows of the attackers published", otherFlows.Load())
	}
	c.Stop()
	mem.CloseTopic("flows")
	<-consumed
}

// floodSent counts the hostile datagrams by kind.
type floodSent struct {
	storms, oversized, truncated, netflow5, sflow, notAllowed int64
}

func (s floodSent) total() int64 {
	return s.storms + s.oversized + s.truncated + s.netflow5 + s.sflow + s.notAllowed
}

func (s floodSent) String() string {
	return fmt.Sprintf("%d template storms, %d oversized, %d truncated, %d NetFlow v5 and %d sFlow with absurd counts, %d from outside the allow list",
		s.storms, s.oversized, s.truncated, s.netflow5, s.sflow, s.notAllowed)
}

// flood sends floodDatagrams hostile datagrams at floodRate: the first
// tenth as issue 14 measured it, template storms from one address
// (127.0.0.2) changing source port every 5 datagrams; then every kind from
// 127.0.0.2-121 and 127.0.1.1-8, each address changing source port every
// 20 datagrams.
func flood(t *testing.T, nfAddr, sfAddr *net.UDPAddr) floodSent {
	t.Helper()
	type sender struct {
		ip   net.IP
		conn *net.UDPConn
		n    int
	}
	var senders []*sender
	for i := 2; i <= 121; i++ {
		senders = append(senders, &sender{ip: net.IPv4(127, 0, 0, byte(i))})
	}
	for i := 1; i <= 8; i++ {
		senders = append(senders, &sender{ip: net.IPv4(127, 0, 1, byte(i))})
	}
	defer func() {
		for _, s := range senders {
			if s.conn != nil {
				s.conn.Close()
			}
		}
	}()
	r := rand.New(rand.NewPCG(14, 5))
	var sent floodSent
	secs := uint32(time.Now().Unix())
	start := time.Now()
	for i := range int64(floodDatagrams) {
		// Pace: floodRate per second, checked every 100 datagrams.
		if i%100 == 0 {
			if ahead := time.Duration(i)*time.Second/floodRate - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		phase1 := i < floodDatagrams/10
		s, perPort := senders[r.IntN(len(senders))], 20
		if phase1 {
			s, perPort = senders[0], 5
		}
		if s.conn == nil || s.n >= perPort {
			if s.conn != nil {
				s.conn.Close()
			}
			conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: s.ip})
			if err != nil {
				t.Fatal(err)
			}
			s.conn, s.n = conn, 0
		}
		s.n++
		to, dg := nfAddr, []byte(nil)
		outside := s.ip[12] == 127 && s.ip[13] == 0 && s.ip[14] == 1
		switch k := r.IntN(20); {
		case phase1:
			dg = nfbuild.TemplateStorm(r, secs, 20, 100)
			sent.storms++
		case outside:
			dg = nfbuild.TemplateStorm(r, secs, 20, 100)
			sent.notAllowed++
		case k < 14:
			dg = nfbuild.TemplateStorm(r, secs, 20, 100)
			sent.storms++
		case k == 14:
			// Oversized: a 60,000-byte IPFIX message claiming 65,535.
			dg = make([]byte, 60000)
			for j := range dg {
				dg[j] = byte(r.Uint32())
			}
			binary.BigEndian.PutUint16(dg, 10)
			binary.BigEndian.PutUint16(dg[2:], 65535)
			sent.oversized++ // counted as truncated: the length is a lie
		case k == 15:
			// Truncated: a template storm cut short.
			full := nfbuild.TemplateStorm(r, secs, 20, 100)
			dg = full[:2+r.IntN(len(full)-2)]
			sent.truncated++
		case k == 16:
			// NetFlow v5 claiming 65,535 records in 100 bytes.
			dg = make([]byte, 100)
			binary.BigEndian.PutUint16(dg, 5)
			binary.BigEndian.PutUint16(dg[2:], 65535)
			sent.netflow5++ // counted as truncated
		default:
			// sFlow v5 with absurd sample or record counts.
			dg = absurdSFlow(r)
			to = sfAddr
			sent.sflow++
		}
		if _, err := s.conn.WriteToUDP(dg, to); err != nil {
			t.Fatal(err)
		}
	}
	return sent
}

// absurdSFlow is an sFlow v5 datagram claiming 4 billion samples, or a
// flow sample claiming 4 billion records.
func absurdSFlow(r *rand.Rand) []byte {
	u32 := nfbuild.U32
	head := nfbuild.Cat(u32(5), u32(1), []byte{192, 0, 2, 1}, u32(0), u32(r.Uint32()), u32(1000))
	if r.IntN(2) == 0 {
		return nfbuild.Cat(head, u32(0xffffffff), make([]byte, 64))
	}
	// One expanded flow sample (format 3) whose record count is absurd.
	sample := nfbuild.Cat(make([]byte, 40), u32(0xffffffff), make([]byte, 16))
	return nfbuild.Cat(head, u32(1), u32(3), u32(uint32(len(sample))), sample)
}

// rss is the process's resident set size in bytes.
func rss(t *testing.T) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func exportersText(d *decode.Decoder) string {
	n, a := d.Exporters()
	return fmt.Sprintf("%d exporters (address and port) from %d addresses", n, a)
}

// labeled sums the metric's series whose label has the value; with label
// "", all of them.
func labeled(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				sum += m.GetCounter().GetValue()
				continue
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
