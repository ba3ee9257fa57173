// Package detectorbench measures the detector: flows per second per core
// from Kafka through decode and detection, and the memory it keeps per
// subscriber. `make bench` runs it with -benchtime 1x: each benchmark does a
// fixed amount of work per iteration and reports its figures as metrics.
package detectorbench

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wormsign/wormsign/bench/stats"
	"github.com/wormsign/wormsign/bench/workload"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

const (
	benchFlows       = 1_000_000
	benchSubscribers = 50_000
)

// flowsPerMessage is how many flows one Kafka message of the v1 format
// carried on average: the collector wrote one message per subscriber per
// batch, and BenchmarkCollectors measured 1.1 to 1.6 flows per message for
// 50,000 subscribers at 0.25M to 1.5M flows/s (1.4 at 500k/s). The v1
// workload mixes messages of one and two flows to that average; it runs
// beside v2 so that the run shows what the format change is worth.
// WORMSIGN_BENCH_FLOWS_PER_MESSAGE changes it.
var flowsPerMessage = envFloat("WORMSIGN_BENCH_FLOWS_PER_MESSAGE", 1.4)

var flowsPerRecord = workload.FlowsPerRecord()

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v >= 1 {
		return v
	}
	return def
}

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC).UnixMilli()

// subscriberBatches is a minute-by-minute mix: most subscribers browse (HTTPS and
// DNS to a few servers), one in a thousand is a spam zombie.
func subscriberBatches() [][]flow.Flow {
	exporter := netip.MustParseAddr("192.0.2.1")
	var batches [][]flow.Flow
	x := uint32(7)
	rnd := func() uint32 { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x }
	n := 0
	for k := 0; n < benchFlows; k++ {
		s := k % benchSubscribers
		src := netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})
		size := int(float64(k+1)*flowsPerMessage) - int(float64(k)*flowsPerMessage)
		batch := make([]flow.Flow, min(max(size, 1), benchFlows-n))
		for i := range batch {
			end := t0 + int64(n)*60_000*20/benchFlows // 20 minutes of event time
			f := flow.Flow{
				TimeReceivedMs: end, StartMs: end - 1000, EndMs: end, Exporter: exporter, Type: flow.TypeIPFIX,
				SrcAddr: src, SrcPort: uint16(40000 + i), Proto: flow.ProtoTCP, DstPort: 443,
				TCPFlags: flow.TCPSyn | flow.TCPAck | flow.TCPFin, Packets: 12, Bytes: 4000,
				DstAddr: netip.AddrFrom4([4]byte{198, 18, 0, byte(rnd() % 8)}),
			}
			switch {
			case s%1000 == 0: // zombie
				f.DstPort, f.TCPFlags, f.Packets = 25, flow.TCPSyn, 2
				f.DstAddr = netip.AddrFrom4([4]byte{198, 19, byte(rnd()), byte(rnd())})
			case i%4 == 0:
				f.Proto, f.DstPort, f.TCPFlags = 17, 53, 0
				f.DstAddr = netip.AddrFrom4([4]byte{198, 18, 255, 53})
			}
			batch[i] = f
			n++
		}
		batches = append(batches, batch)
	}
	return batches
}

func encode(batches [][]flow.Flow) []bus.Message {
	msgs := make([]bus.Message, len(batches))
	for i, b := range batches {
		msgs[i] = bus.Message{Key: b[0].SrcAddr.AsSlice(), Value: flow.AppendBatch(nil, b)}
	}
	return msgs
}

// cpuTime is the process's user+system CPU time: with the broker in its
// own process, that is what decoding and detecting cost this one.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// flatten is the workload's flows in the order the collector received them.
func flatten(batches [][]flow.Flow) []flow.Flow {
	var out []flow.Flow
	for _, b := range batches {
		out = append(out, b...)
	}
	return out
}

// BenchmarkDetector consumes a million flows from a one-partition topic
// on the real Kafka through the detector component, and reports flows per
// CPU-second of this process (flows/s/core) next to two peer figures on
// the same input: decode only, and decode plus the engine without Kafka.
// It runs on the flows-v2 records the collector writes and, for the
// comparison, on the v1 format's message per subscriber per batch.
func BenchmarkDetector(b *testing.B) {
	batches := subscriberBatches()
	b.Run("format=v2", func(b *testing.B) {
		benchDetector(b, workload.FlowRecords(flatten(batches), flowsPerRecord))
	})
	b.Run("format=v1", func(b *testing.B) { benchDetector(b, encode(batches)) })
}

func benchDetector(b *testing.B, msgs []bus.Message) {
	brokers := testenv.KafkaBrokers(b)
	bcfg := bus.DefaultConfiguration()
	bcfg.Brokers = brokers
	bcfg.Partitions = 1
	bcfg.FlowsTopic = testenv.Name(b, "flows")
	bcfg.AlertsTopic = bcfg.FlowsTopic + "_alerts"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := bus.NewKafka(ctx, bcfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { k.DeleteTopics(context.Background(), bcfg.FlowsTopic, bcfg.AlertsTopic) })
	p, _ := k.Producer(bcfg.FlowsTopic)
	for i := 0; i < len(msgs) && err == nil; i += 256 {
		err = p.Publish(ctx, msgs[i:min(i+256, len(msgs))]...)
	}
	p.Close()
	if err != nil {
		b.Fatal(err)
	}

	// Peer 1: decode only.
	decode := func() {
		var fs []flow.Flow
		for _, m := range msgs {
			fs, _ = flow.DecodeBatch(fs[:0], m.Value)
		}
	}
	// Peer 2: decode and engine, no Kafka: the detector's own ceiling.
	engine := func() {
		e := detector.NewEngine(detector.DefaultConfiguration())
		var fs []flow.Flow
		for _, m := range msgs {
			fs, _ = flow.DecodeBatch(fs[:0], m.Value)
			for i := range fs {
				e.Process(&fs[i])
			}
		}
	}

	// One pass of each varied by 15 % from run to run on this shared
	// machine (the broker runs on the same two cores): each figure is the
	// median of detectorPasses passes, the three interleaved so that a
	// slow stretch of the machine hits them alike, with the spread
	// printed. Each detector pass is a new detector in a new group over
	// the same records.
	var decodeRates, engineRates, detectorRates, wallRates []float64
	b.ResetTimer()
	for range b.N {
		for range detectorPasses {
			decodeRates = append(decodeRates, benchFlows/measure(decode).Seconds())
			engineRates = append(engineRates, benchFlows/measure(engine).Seconds())
			wall, cpu := runDetector(b, k, bcfg)
			detectorRates = append(detectorRates, benchFlows/cpu.Seconds())
			wallRates = append(wallRates, benchFlows/wall.Seconds())
		}
	}
	b.StopTimer()
	perCore, engineRate := stats.Median(detectorRates), stats.Median(engineRates)
	b.ReportMetric(stats.Median(wallRates), "flows/s")
	b.ReportMetric(perCore, "flows/s/core")
	b.ReportMetric(stats.Median(decodeRates), "decode_only_flows/s/core")
	b.ReportMetric(engineRate, "decode+engine_flows/s/core")
	b.ReportMetric(perCore/engineRate, "ratio_to_decode+engine")
	b.ReportMetric(perCore/1e6, "x_target_1M")
	b.ReportMetric(float64(benchFlows)/float64(len(msgs)), "flows/message")
	b.Logf("detector: %d flows in %d Kafka messages (%.1f flows/message, one partition), median of %d passes (min–max): %s flows/s per core with Kafka consume, decode and engine (target 1M, and 0.8x its own decode+engine); decode+engine without Kafka %s (ratio %.2f); decode alone %s",
		benchFlows, len(msgs), float64(benchFlows)/float64(len(msgs)), len(detectorRates), stats.Spread("%.0f", detectorRates), stats.Spread("%.0f", engineRates), perCore/engineRate, stats.Spread("%.0f", decodeRates))
}

// detectorPasses is how many times BenchmarkDetector measures each figure.
const detectorPasses = 5

// runDetector runs a new detector in a group of its own over the topic
// and returns the wall and CPU time from its first assignment until it
// counted every flow.
func runDetector(b *testing.B, k *bus.Kafka, bcfg bus.Configuration) (wall, cpu time.Duration) {
	reg := prometheus.NewRegistry()
	cfg := detector.DefaultConfiguration()
	cfg.Group = testenv.Name(b, "g")
	d, err := detector.New(cfg, detector.Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: reg, Bus: k,
		FlowsTopic: bcfg.FlowsTopic, AlertsTopic: bcfg.AlertsTopic,
	})
	if err != nil {
		b.Fatal(err)
	}
	d.Start()
	defer d.Stop()
	// Joining the group (Kafka delays the first assignment by
	// group.initial.rebalance.delay.ms) is not detection work.
	for len(d.Partitions()) == 0 {
		time.Sleep(time.Millisecond)
	}
	began, beganCPU := time.Now(), cpuTime()
	deadline := time.Now().Add(5 * time.Minute)
	// Every 5 ms: a Gather of the registry costs this process CPU too.
	for counter(reg, "wormsign_detector_flows_total") < benchFlows {
		if time.Now().After(deadline) {
			b.Fatalf("consumed %.0f of %d flows in 5 minutes", counter(reg, "wormsign_detector_flows_total"), benchFlows)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(began), cpuTime() - beganCPU
}

// measure runs fn and returns the CPU time it took (single goroutine).
func measure(fn func()) time.Duration {
	runtime.GC()
	c := cpuTime()
	fn()
	return cpuTime() - c
}

func counter(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += metricValue(m)
			}
			return sum
		}
	}
	return 0
}

func metricValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// BenchmarkSubscriberMemory holds a million quiet subscribers (two flows
// each: a DNS query and an HTTPS connection) and reports the heap they
// take, next to a bare map of a million addresses as the floor.
func BenchmarkSubscriberMemory(b *testing.B) {
	const subscribers = 1_000_000
	exporter := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < b.N; i++ {
		var e *detector.Engine
		perSub := testenv.LiveHeap(func() any {
			e = detector.NewEngine(detector.DefaultConfiguration())
			f := flow.Flow{Exporter: exporter, Proto: 17, DstPort: 53, DstAddr: netip.MustParseAddr("198.18.255.53"), Packets: 1}
			for s := 0; s < subscribers; s++ {
				f.SrcAddr = netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})
				f.EndMs = t0 + int64(s)*50_000/subscribers // within one minute
				f.Proto, f.DstPort, f.DstAddr = 17, 53, netip.MustParseAddr("198.18.255.53")
				e.Process(&f)
				f.Proto, f.DstPort, f.DstAddr = 6, 443, netip.AddrFrom4([4]byte{198, 18, 1, byte(s)})
				e.Process(&f)
			}
			return e
		}) / subscribers
		if e.Subscribers() != subscribers {
			b.Fatalf("%d subscribers tracked, want %d", e.Subscribers(), subscribers)
		}
		// Once a minute of event time every subscriber is visited
		// (expiry, entropy check, eviction): what that pause costs.
		began := time.Now()
		e.Advance(t0 + 61_000)
		sweep := time.Since(began)
		if e.Subscribers() != subscribers {
			b.Fatalf("the sweep evicted %d subscribers still in their windows", subscribers-e.Subscribers())
		}
		floor := testenv.LiveHeap(func() any {
			m := make(map[netip.Addr]struct{})
			for s := 0; s < subscribers; s++ {
				m[netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})] = struct{}{}
			}
			return m
		}) / subscribers
		b.ReportMetric(perSub, "B/quiet_subscriber")
		b.ReportMetric(perSub*subscribers/(1<<20), "MiB/1M_subscribers")
		b.ReportMetric(floor, "B/bare_map_entry")
		b.ReportMetric(perSub/floor, "ratio_to_bare_map")
		b.ReportMetric(float64(sweep.Milliseconds()), "ms_minute_sweep_1M")
	}
}

// BenchmarkBusySubscribers holds 100k subscribers each past dst_entropy's
// min_flows (120 flows over two minutes to 20 servers on three ports), so
// every one of them evaluates its window and steps its baseline each
// minute: what busy subscribers cost in memory and time per flow.
func BenchmarkBusySubscribers(b *testing.B) {
	const subscribers, flows = 100_000, 120
	for i := 0; i < b.N; i++ {
		var e *detector.Engine
		var took time.Duration
		perSub := testenv.LiveHeap(func() any {
			e = detector.NewEngine(detector.DefaultConfiguration())
			f := flow.Flow{Exporter: netip.MustParseAddr("192.0.2.1"), Proto: 6, Packets: 10,
				TCPFlags: flow.TCPSyn | flow.TCPAck | flow.TCPFin}
			began := time.Now()
			for j := 0; j < flows; j++ {
				for s := 0; s < subscribers; s++ {
					f.SrcAddr = netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})
					f.DstAddr = netip.AddrFrom4([4]byte{198, 18, 0, byte(j % 20)})
					f.DstPort = uint16(443 + j%3)
					f.EndMs = t0 + int64(j)*1000
					e.Process(&f)
				}
			}
			took = time.Since(began)
			return e
		}) / subscribers
		began := time.Now()
		e.Advance(t0 + 180_000)
		sweep := time.Since(began)
		b.ReportMetric(perSub, "B/busy_subscriber")
		b.ReportMetric(float64(took.Nanoseconds())/(subscribers*flows), "ns/flow")
		b.ReportMetric(float64(sweep.Milliseconds()), "ms_minute_sweep_100k_busy")
	}
}
