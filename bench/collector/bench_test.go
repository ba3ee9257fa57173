package collectorbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/internal/testenv"
)

// BenchmarkCollectors sends the same generated NetFlow v9, IPFIX and
// sFlow datagrams to wormsign's collector and to goflow v3's own collector
// (each publishing to Kafka on 127.0.0.1:9092), at the target rate and at
// twice it, and reports for each the flows per second that reached Kafka
// (flows delivered / time from the first datagram sent to the last flow
// in Kafka), the share lost, and wormsign/goflow.
//
// WORMSIGN_BENCH_FLOWS (default 2,000,000) and WORMSIGN_BENCH_RATE
// (default 500,000 flows/s) change the load.
func BenchmarkCollectors(b *testing.B) {
	brokers := testenv.KafkaBrokers(b)
	goflow := installGoflow(b)
	flows := envInt("WORMSIGN_BENCH_FLOWS", 2_000_000)
	rate := envInt("WORMSIGN_BENCH_RATE", 500_000)
	const exporters, subscribers = 4, 50_000
	load := Generate(flows, exporters, subscribers, time.Now().UnixMilli())
	// At the target rate, and at twice it, which saturates both
	// collectors on 2 cores: there the ratio is one of capacities.
	for _, r := range []int{rate, 2 * rate} {
		name := fmt.Sprintf("rate=%d", r)
		b.Run(name, func(b *testing.B) {
			for range b.N {
				ws := runWormsign(b, brokers, load, exporters, r)
				gf := runGoflow(b, goflow, brokers, load, exporters, r)
				b.ReportMetric(ws.flowsPerSecond(), "wormsign_flows/s")
				b.ReportMetric(ws.lossPercent(), "wormsign_loss_%")
				b.ReportMetric(gf.flowsPerSecond(), "goflow_flows/s")
				b.ReportMetric(gf.lossPercent(), "goflow_loss_%")
				if gf.flowsPerSecond() > 0 {
					b.ReportMetric(ws.flowsPerSecond()/gf.flowsPerSecond(), "wormsign/goflow")
				}
				b.Logf("%s: sent %d flows in %s; wormsign %d in Kafka in %s (%.0f/s, %.2f%% lost); goflow %d in %s (%.0f/s, %.2f%% lost)",
					name, ws.sent, ws.sendTime.Round(time.Millisecond), ws.delivered, ws.took.Round(time.Millisecond),
					ws.flowsPerSecond(), ws.lossPercent(), gf.delivered, gf.took.Round(time.Millisecond),
					gf.flowsPerSecond(), gf.lossPercent())
			}
		})
	}
}

type result struct {
	sent, delivered int
	sendTime, took  time.Duration // sending; first datagram to last flow in Kafka
}

func (r result) flowsPerSecond() float64 {
	if r.took <= 0 {
		return 0
	}
	return float64(r.delivered) / r.took.Seconds()
}

func (r result) lossPercent() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.delivered) / float64(r.sent)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func installGoflow(b *testing.B) string {
	b.Helper()
	if p, err := exec.LookPath("goflow"); err == nil {
		return p
	}
	script := filepath.Join(testenv.RepoRoot(b), "bench", "collector", "install-goflow.sh")
	out, err := exec.Command(script).Output()
	if err != nil {
		testenv.Unavailable(b, "cannot install goflow v3.5.0 (%s): %v", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func freePort(b *testing.B) int {
	b.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// createTopic creates topic with the default partitions.
func createTopic(b *testing.B, brokers []string, topic string) bus.Configuration {
	b.Helper()
	cfg := bus.DefaultConfiguration()
	cfg.Brokers = brokers
	cfg.FlowsTopic, cfg.AlertsTopic = topic, topic+"-alerts"
	if _, err := bus.NewKafka(context.Background(), cfg); err != nil {
		b.Fatal(err)
	}
	return cfg
}

// waitDelivered polls count until it reaches want or stops moving for
// two seconds, and returns the count and when it last moved.
func waitDelivered(start time.Time, want int, count func() int) (int, time.Duration) {
	last, lastMove := 0, time.Since(start)
	for {
		n := count()
		if n != last {
			last, lastMove = n, time.Since(start)
		}
		if n >= want || time.Since(start)-lastMove > 2*time.Second {
			return last, lastMove
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runWormsign(b *testing.B, brokers []string, load Load, exporters, rate int) result {
	b.Helper()
	kcfg := createTopic(b, brokers, testenv.Name(b, "bench-wormsign"))
	k, err := bus.NewKafka(context.Background(), kcfg)
	if err != nil {
		b.Fatal(err)
	}
	nfPort, sfPort := freePort(b), freePort(b)
	cfg := collector.DefaultConfiguration()
	cfg.NetFlowListen = []string{fmt.Sprintf("127.0.0.1:%d", nfPort)}
	cfg.SFlowListen = []string{fmt.Sprintf("127.0.0.1:%d", sfPort)}
	cfg.SocketsPerListener = 2
	reg := prometheus.NewRegistry()
	c, err := collector.New(cfg, collector.Dependencies{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: reg, Bus: k, Topic: kcfg.FlowsTopic,
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	sender, err := NewSender(exporters, cfg.NetFlowListen[0], cfg.SFlowListen[0])
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	published := func() int { return int(counter(reg, "wormsign_collector_published_flows_total")) }
	start := time.Now()
	sent, sendTime := sender.Send(load, rate)
	delivered, took := waitDelivered(start, sent, published)
	return result{sent, delivered, sendTime, took}
}

func counter(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func runGoflow(b *testing.B, bin string, brokers []string, load Load, exporters, rate int) result {
	b.Helper()
	topic := testenv.Name(b, "bench-goflow")
	createTopic(b, brokers, topic)
	nfPort, sfPort, metricsPort := freePort(b), freePort(b), freePort(b)
	cmd := exec.Command(bin,
		"-kafka.brokers", strings.Join(brokers, ","), "-kafka.topic", topic,
		"-nf.addr", "127.0.0.1", "-nf.port", strconv.Itoa(nfPort),
		"-sflow.addr", "127.0.0.1", "-sflow.port", strconv.Itoa(sfPort),
		"-nfl=false", "-workers", "2", "-loglevel", "error",
		"-metrics.addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
	logPath := filepath.Join(b.TempDir(), "goflow.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatalf("cannot start goflow: %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(logPath)
			b.Fatalf("goflow did not start:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sender, err := NewSender(exporters, fmt.Sprintf("127.0.0.1:%d", nfPort), fmt.Sprintf("127.0.0.1:%d", sfPort))
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second}
	// goflow writes one Kafka message per flow: the topic's end offsets
	// count what reached Kafka.
	inKafka := func() int { return topicMessages(client, topic) }
	start := time.Now()
	sent, sendTime := sender.Send(load, rate)
	delivered, took := waitDelivered(start, sent, inKafka)
	if delivered == 0 {
		logs, _ := os.ReadFile(logPath)
		b.Logf("goflow delivered nothing; its log:\n%s", logs)
	}
	return result{sent, delivered, sendTime, took}
}

func topicMessages(client *kafka.Client, topic string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) == 0 {
		return 0
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0
	}
	total := 0
	for _, p := range resp.Topics[topic] {
		total += int(p.LastOffset)
	}
	return total
}
