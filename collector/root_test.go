package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/network"
)

// testPartitions is the flows topic's partitions in these tests: several,
// as on Kafka, so that subscribers and publishers spread.
const testPartitions = 8

// partitionedMemory is the in-process bus with a flows topic of n
// partitions: it keeps the partition the collector chose on each message.
type partitionedMemory struct {
	*bus.Memory
	n int
}

func (m partitionedMemory) Producer(topic string) (bus.Producer, error) {
	p, err := m.Memory.Producer(topic)
	return partitionedProducer{p, m.n}, err
}

type partitionedProducer struct {
	bus.Producer
	n int
}

func (p partitionedProducer) Partitions(context.Context) (int, error) { return p.n, nil }

// newTestComponent runs a collector without sockets on an in-process bus
// of testPartitions partitions and returns it with a consumer of its topic.
func newTestComponent(t *testing.T, cfg Configuration) (*Component, bus.Consumer, *bus.Memory) {
	t.Helper()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	mem := bus.NewMemory(1 << 16)
	consumer, err := mem.Consumer("flows", "test")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(),
		Bus: partitionedMemory{mem, testPartitions}, Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c, consumer, mem
}

// drain reads every flow published before the topic closed, by the
// subscriber each flow's group names, and checks that each record is in
// the partition of every subscriber in it.
func drain(t *testing.T, consumer bus.Consumer, mem *bus.Memory) map[string][]flow.Flow {
	t.Helper()
	mem.CloseTopic("flows")
	byKey := map[string][]flow.Flow{}
	for {
		m, err := consumer.Fetch(context.Background())
		if err != nil {
			return byKey
		}
		flows, subs, err := flow.DecodeBatchSubscribers(nil, nil, m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if m.Key != nil {
			t.Errorf("a record keyed %x: flows-v2 records have no key", m.Key)
		}
		for i, f := range flows {
			if f.SrcAddr != subs[i] {
				t.Errorf("flow of %s in the group of %s", f.SrcAddr, subs[i])
			}
			if p := bus.PartitionOf(subs[i].As16(), testPartitions); p != m.Partition {
				t.Errorf("flow of %s (partition %d) in a record of partition %d", subs[i], p, m.Partition)
			}
			byKey[subs[i].String()] = append(byKey[subs[i].String()], f)
		}
	}
}

// TestTemplatesSurviveRestart stops a collector after it learned a
// template and checks that the next one decodes data at once.
func TestTemplatesSurviveRestart(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.TemplateFile = filepath.Join(t.TempDir(), "templates.json")
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	now := time.Now().UnixMilli()
	secs := uint32(now / 1000)
	templates := nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256)}}.Bytes()
	data := nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000,
		Sets: [][]byte{nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 98500, 99750))}}.Bytes()

	c, _, _ := newTestComponent(t, cfg)
	if n := c.Ingest(decode.FamilyNetFlow, from, templates, now, true); n != 0 {
		t.Fatalf("a template datagram gave %d flows", n)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c, consumer, mem := newTestComponent(t, cfg)
	if n := c.Ingest(decode.FamilyNetFlow, from, data, now, true); n != 1 {
		t.Fatalf("after restart the data datagram gave %d flows, want 1", n)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, consumer, mem); len(got["203.0.113.5"]) != 1 {
		t.Errorf("published %v, want one flow of 203.0.113.5", got)
	}
}

// TestPublishersKeepSubscriberOrder sends numbered flows of a few
// subscribers through several publishers with small batches and checks
// each subscriber's flows arrive complete and in order.
func TestPublishersKeepSubscriberOrder(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Publishers, cfg.BatchFlows = 4, 7
	c, consumer, mem := newTestComponent(t, cfg)
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	const secs, datagrams, perDatagram = 1700000000, 200, 10
	subs := []string{"203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5"}
	sent := 0
	for i := range datagrams {
		var recs [][]byte
		for j := range perDatagram {
			n := uint32(i*perDatagram + j)
			// The flow's number is its end time in uptime ms.
			recs = append(recs, nfbuild.Record256(subs[int(n)%len(subs)], "198.18.0.1", 25, 1, 1+n))
		}
		sent += ingestV9(c, from, i, secs, recs)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	got := drain(t, consumer, mem)
	total := 0
	for _, s := range subs {
		flows := got[s]
		total += len(flows)
		for i := 1; i < len(flows); i++ {
			if flows[i].EndMs <= flows[i-1].EndMs {
				t.Fatalf("subscriber %s: flow %d ends at %d after one ending at %d", s, i, flows[i].EndMs, flows[i-1].EndMs)
			}
		}
	}
	if total != datagrams*perDatagram || sent != total {
		t.Errorf("ingested %d, published %d flows, want %d", sent, total, datagrams*perDatagram)
	}
}

// TestReceiveBuffer checks that the sockets get the configured receive
// buffer even above net.core.rmem_max (SO_RCVBUFFORCE, as root).
func TestReceiveBuffer(t *testing.T) {
	testenv.Root(t)
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = []string{"127.0.0.1:0"}, nil
	cfg.SocketsPerListener = 2
	cfg.ReceiveBuffer = 16 << 20
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(),
		Bus: bus.NewMemory(1), Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if len(c.conns) != 2 || c.conns[0].LocalAddr().String() != c.conns[1].LocalAddr().String() {
		t.Fatalf("sockets %v, want two on one port", c.Addrs())
	}
	for _, conn := range c.conns {
		raw, err := conn.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got int
		raw.Control(func(fd uintptr) { got, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
		if err != nil || got/2 < cfg.ReceiveBuffer {
			t.Errorf("SO_RCVBUF = %d (%v), want at least 2 × %d", got, err, cfg.ReceiveBuffer)
		}
	}
}

// TestExporterLimits checks the allow list and the cap on exporters.
func TestExporterLimits(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Exporters = []network.Prefix{network.MustParsePrefix("192.0.2.0/24")}
	c, consumer, mem := newTestComponent(t, cfg)
	const secs = 1700000000
	dg := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{
		nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 1, 2)),
	}}.Bytes()
	if n := c.Ingest(decode.FamilyNetFlow, netip.MustParseAddrPort("198.51.100.1:9"), dg, secs*1000, true); n != 0 {
		t.Errorf("a spoofed exporter got %d flows in", n)
	}
	if n := c.Ingest(decode.FamilyNetFlow, netip.MustParseAddrPort("192.0.2.1:9"), dg, secs*1000, true); n != 1 {
		t.Errorf("an allowed exporter got %d flows in, want 1", n)
	}
	c.Stop()
	if got := drain(t, consumer, mem); len(got) != 1 {
		t.Errorf("published %v, want the allowed exporter's flow only", got)
	}

	cfg = DefaultConfiguration()
	cfg.Decode.MaxExporters, cfg.Decode.TemplateTTL = 2, time.Minute
	d := decode.New(cfg.Decode)
	decodeFrom := func(exporter string, nowMs int64) error {
		_, _, err := d.Decode(decode.FamilyNetFlow, netip.MustParseAddrPort(exporter), dg, nowMs, nil)
		return err
	}
	for _, e := range []string{"192.0.2.1:1", "192.0.2.1:2"} {
		if err := decodeFrom(e, secs*1000); err != nil {
			t.Fatal(err)
		}
	}
	var de *decode.DecodeError
	if err := decodeFrom("192.0.2.1:3", secs*1000); !errors.As(err, &de) || de.Kind != "too_many_exporters" {
		t.Errorf("a third exporter: %v, want too_many_exporters", err)
	}
	// Once the first two have been silent for the TTL, they make room.
	if err := decodeFrom("192.0.2.1:3", secs*1000+61_000); err != nil {
		t.Errorf("a third exporter after the others went quiet: %v", err)
	}
}

// TestExportersBeyondCapShareALabel keeps spoofed sources from growing
// the per-exporter metrics without bound.
func TestExportersBeyondCapShareALabel(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	cfg.Decode.MaxExporters = 1
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: reg, Bus: bus.NewMemory(16), Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	defer c.Stop()
	dg := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: 1700000000, Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256)}}.Bytes()
	for i := range 5 {
		c.Ingest(decode.FamilyNetFlow, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 9), dg, 1700000000000, true)
	}
	labels := map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "wormsign_collector_datagrams_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "exporter" {
					labels[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	if diff := cmp.Diff(map[string]float64{"192.0.2.1": 1, "other": 4}, labels); diff != "" {
		t.Errorf("datagrams by exporter label (-want +got):\n%s", diff)
	}
}

// TestQueueBoundsFlows checks that a stuck bus turns into counted drops
// with a bounded number of flows held, not growing memory.
func TestQueueBoundsFlows(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	cfg.QueueSize, cfg.Publishers, cfg.BatchFlows = 10, 1, 7
	mem := bus.NewMemory(1) // its consumer below never reads: the bus is stuck
	if _, err := mem.Consumer("flows", "stuck"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: reg, Bus: mem, Topic: "flows",
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	var recs [][]byte
	const perDatagram = 200 // tiny records: far more than 32 per datagram
	for i := range perDatagram {
		recs = append(recs, nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 1, uint32(2+i)))
	}
	dg := nfbuild.Message{Version: 9, Domain: 1, UnixSecs: 1700000000, UptimeMs: 100000,
		Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, recs...)}}.Bytes()
	accepted := 0
	for range 1000 {
		accepted += c.Ingest(decode.FamilyNetFlow, netip.MustParseAddrPort("192.0.2.1:9"), dg, 1700000000000, false)
	}
	// 32 flows per queued datagram, two batches per publisher, and the
	// datagram that went over; the queue alone would take 10 datagrams.
	if limit := 10*32 + 2*1*7 + perDatagram; accepted > limit {
		t.Errorf("accepted %d flows into a stuck collector, want at most %d", accepted, limit)
	}
	if got := counter(t, reg, "wormsign_collector_dropped_flows_total"); got != float64(1000*perDatagram-accepted) {
		t.Errorf("dropped %v flows, want %d", got, 1000*perDatagram-accepted)
	}
	mem.CloseTopic("flows") // unsticks the publisher so that Stop returns
	c.Stop()
}

// counter sums all series of the metric.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return labeled(t, reg, name, "", "")
}

// TestProgressStamps: every message carries the collector's progress at
// the moment its batch was handed off, and no message written after it
// holds a flow that ends earlier, whichever publisher writes it: what the
// detector's watermark relies on.
func TestProgressStamps(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Publishers, cfg.BatchFlows = 8, 5
	c, consumer, mem := newTestComponent(t, cfg)
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	const secs, datagrams, perDatagram = 1700000000, 300, 10
	for i := range datagrams {
		var recs [][]byte
		for j := range perDatagram {
			n := uint32(i*perDatagram + j)
			// Many subscribers, so that every publisher has some.
			sub := fmt.Sprintf("203.0.113.%d", n%97)
			recs = append(recs, nfbuild.Record256(sub, "198.18.0.1", 25, 1, 1+n))
		}
		ingestV9(c, from, i, secs, recs)
	}
	stopAndCloseFlows(t, c, mem)
	var msgs []bus.Message
	var ends [][]int64
	for {
		m, err := consumer.Fetch(context.Background())
		if err != nil {
			break
		}
		flows, err := flow.DecodeBatch(nil, m.Value)
		if err != nil {
			t.Fatal(err)
		}
		var e []int64
		for _, f := range flows {
			e = append(e, f.EndMs)
		}
		msgs, ends = append(msgs, m), append(ends, e)
	}
	origins := map[uint64]bool{}
	oldestAfter := int64(math.MaxInt64)
	for i := len(msgs) - 1; i >= 0; i-- {
		origins[msgs[i].Origin] = true
		for _, e := range ends[i] {
			oldestAfter = min(oldestAfter, e)
		}
		if msgs[i].LowMs <= 0 || msgs[i].LowMs > oldestAfter {
			t.Fatalf("message %d of %d stamps progress %d, but it or a later message holds a flow ending at %d",
				i, len(msgs), msgs[i].LowMs, oldestAfter)
		}
	}
	if len(origins) < 4 {
		t.Errorf("%d publishers wrote, want most of 8 (one per partition here)", len(origins))
	}
}

// TestRecordsPerPartition checks the flows-v2 records: many subscribers'
// flows per record, records cut at the record size (a subscriber with
// more flows than fit continues in the next record), and each
// subscriber's flows complete and in order.
func TestRecordsPerPartition(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	cfg.Publishers, cfg.BatchFlows = 2, 1<<14
	mem := bus.NewMemory(1 << 16)
	consumer, _ := mem.Consumer("flows", "test")
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: reg,
		Bus: partitionedMemory{mem, 4}, Topic: "flows", RecordBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	const secs, datagrams, perDatagram = 1700000000, 100, 20
	for i := range datagrams {
		var recs [][]byte
		for j := range perDatagram {
			n := uint32(i*perDatagram + j)
			sub := fmt.Sprintf("203.0.113.%d", n%50) // 25 of them: n is odd here
			if j%2 == 0 {
				sub = "203.0.113.200" // one busy subscriber, half of all flows
			}
			recs = append(recs, nfbuild.Record256(sub, "198.18.0.1", 25, 1, 1+n))
		}
		ingestV9(c, from, i, secs, recs)
	}
	stopAndCloseFlows(t, c, mem)
	var records, flows int
	last := map[netip.Addr]int64{}
	for {
		m, err := consumer.Fetch(context.Background())
		if err != nil {
			break
		}
		records++
		if len(m.Value) > c.recordBytes {
			t.Errorf("record of %d bytes, want at most %d", len(m.Value), c.recordBytes)
		}
		fs, subs, err := flow.DecodeBatchSubscribers(nil, nil, m.Value)
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range fs {
			if f.EndMs <= last[subs[i]] {
				t.Fatalf("subscriber %s: a flow ending at %d after one ending at %d", subs[i], f.EndMs, last[subs[i]])
			}
			last[subs[i]] = f.EndMs
		}
		flows += len(fs)
	}
	if flows != datagrams*perDatagram || len(last) != 26 {
		t.Errorf("%d flows of %d subscribers, want %d of 26", flows, len(last), datagrams*perDatagram)
	}
	// 2000 flows of about 40 bytes in records of 3.5 KiB: some 25 records,
	// not one per subscriber per batch.
	if records > 40 || records < flows*40/c.recordBytes {
		t.Errorf("%d records for %d flows, want about %d", records, flows, flows*40/c.recordBytes)
	}
	if got := counter(t, reg, "wormsign_collector_published_records_total"); got != float64(records) {
		t.Errorf("published_records_total = %v, want %d", got, records)
	}
	t.Logf("%d flows of %d subscribers in %d records (%.0f flows per record)", flows, len(last), records, float64(flows)/float64(records))
}

// ingestV9 hands c NetFlow v9 datagram number seq from from, exported at
// secs, with the template and recs; it returns what Ingest took.
func ingestV9(c *Component, from netip.AddrPort, seq int, secs uint32, recs [][]byte) int {
	dg := nfbuild.Message{Version: 9, Domain: 1, Sequence: uint32(seq), UnixSecs: secs, UptimeMs: 1 << 30,
		Sets: [][]byte{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, recs...)}}.Bytes()
	return c.Ingest(decode.FamilyNetFlow, from, dg, int64(secs)*1000, true)
}

// stopAndCloseFlows stops c and ends the in-process flows topic, so that
// a reader sees all c wrote and then the end.
func stopAndCloseFlows(t *testing.T, c *Component, mem *bus.Memory) {
	t.Helper()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	mem.CloseTopic("flows")
}
