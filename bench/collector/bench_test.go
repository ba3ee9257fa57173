package collectorbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/bench/stats"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// The terms every collector gets in BenchmarkCollectors.
const (
	// receiveBuffer is net.core.rmem_default and rmem_max during the run:
	// every collector's socket gets it from the kernel (wormsign's forced
	// buffer is off: collector.receive_buffer 0).
	receiveBuffer = 8 << 20
	// queueDatagrams is the queue of decoded (wormsign) or received
	// (goflow2) datagrams; goflow v3 has no such queue of its own.
	queueDatagrams = 1 << 16
	benchExporters = 8
	benchSubs      = 50_000
	lossLimit      = 0.1 // percent: above it a rate is not lossless
	// maxDrain is how long after the last datagram sent the last flow
	// may reach Kafka for the rate to count as sustained.
	maxDrain = 500 * time.Millisecond
)

// BenchmarkCollectors sends the same generated datagrams, paced per
// datagram at a constant rate, to wormsign's collector, goflow v3's own
// collector and goflow2, each a process of its own with one UDP socket,
// the kernel's receive buffer (8 MiB for all, set by sysctl), no Kafka
// compression, publishing to Kafka on 127.0.0.1:9092. Delivery is counted
// the same way for all: the flows in the Kafka topic (wormsign: its
// batches decoded; goflow: one message per flow). The offered rate is
// swept upward, per collector and protocol (NetFlow v9, IPFIX), until
// the rate is not sustained: more than 0.1 % lost, or the last flow in
// Kafka more than half a second after the last datagram sent (a queue
// draining a backlog: the queues hold more than a step's flows); a step
// runs WORMSIGN_BENCH_REPEAT times (default 3) and counts as sustained
// when most of its runs are. It prints a table of every step (each figure's
// median and min–max over the runs, so that a regression can be told from
// noise) and, per collector, the highest lossless rate, its ratio to
// wormsign's and the median process CPU time per delivered flow there
// (utime+stime from /proc/PID/stat).
//
// WORMSIGN_BENCH_FLOWS (default 1,000,000) bounds the flows per step,
// as do 4 seconds of sending at the step's rate;
// WORMSIGN_BENCH_RATES (default 100000,250000,500000,750000,1000000,1500000,2000000)
// the offered rates; WORMSIGN_BENCH_PEERS (e.g. "goflow2,nfacctd"; "none"
// for wormsign alone) the peers run beside wormsign, by name prefix. It
// needs root for the sysctl.
func BenchmarkCollectors(b *testing.B) {
	brokers := testenv.KafkaBrokers(b)
	setReceiveBuffer(b, receiveBuffer)
	peers := []collectorPeer{
		{name: "wormsign", queue: fmt.Sprintf("queue_size %d datagrams", queueDatagrams), run: wormsignRunner(b, brokers)},
		{name: "goflow v3.5.0", queue: "no queue (decode workers 2, sarama's default channel of 256)", run: goflowRunner(b, brokers)},
		{name: "goflow2 v2.2.6", queue: fmt.Sprintf("queue_size %d datagrams (its default 1,000,000)", queueDatagrams), run: goflow2Runner(b, brokers)},
	}
	if nfacctd, err := exec.LookPath("nfacctd"); err == nil {
		peers = append(peers, collectorPeer{name: "nfacctd (pmacct, Debian)", queue: "plugin_pipe_size/plugin_buffer_size defaults; aggregates per 5-tuple+times+interfaces, 1 s purge",
			lowRates: []int{25_000, 50_000}, extraDrain: time.Second, run: nfacctdRunner(nfacctd, brokers)})
	}
	if v := os.Getenv("WORMSIGN_BENCH_PEERS"); v != "" {
		peers = slices.DeleteFunc(peers, func(p collectorPeer) bool {
			return p.name != "wormsign" && !slices.ContainsFunc(strings.Split(v, ","), func(s string) bool {
				return s != "" && strings.HasPrefix(p.name, strings.TrimSpace(s))
			})
		})
	}
	flows := envInt("WORMSIGN_BENCH_FLOWS", 1_000_000)
	repeat := max(1, envInt("WORMSIGN_BENCH_REPEAT", 3))
	rates := []int{100_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000}
	if v := os.Getenv("WORMSIGN_BENCH_RATES"); v != "" {
		rates = rates[:0]
		for _, f := range strings.Split(v, ",") {
			if r, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && r > 0 {
				rates = append(rates, r)
			}
		}
	}
	type best struct {
		rate   int
		cpuNs  float64
		perMsg float64
	}
	var lines []string
	bests := map[string]best{} // protocol/peer
	for range b.N {
		for _, proto := range []string{NetFlowV9, IPFIX} {
			load := GenerateProtocols(flows, benchExporters, benchSubs, time.Now().UnixMilli(), proto)
			for _, p := range peers {
				for _, rate := range append(slices.Clone(p.lowRates), rates...) {
					// At most 4 s of sending per step, run `repeat` times
					// for every collector alike: on this shared machine one
					// stall of the broker or the sender can spoil a run, so
					// a step counts as sustained when most of its runs are,
					// and the table gives each figure's median and spread.
					var runs []result
					for len(runs) < repeat {
						runs = append(runs, p.run(b, load.prefix(min(flows, 4*rate)), rate))
						if failed := len(runs) - sustainedRuns(runs, p.extraDrain); failed > repeat/2 {
							break // a majority can no longer be sustained
						}
					}
					ok := sustainedRuns(runs, p.extraDrain) > repeat/2
					var writes []string
					for _, r := range runs {
						writes = append(writes, r.writes.String())
					}
					lines = append(lines, fmt.Sprintf("| %s | %s | %d | %d of %d | %d | %s | %s | %s | %s | %s | %s |",
						proto, p.name, rate, sustainedRuns(runs, p.extraDrain), len(runs), runs[0].sent,
						stats.Spread("%.0f", figures(runs, result.achieved)),
						stats.Spread("%.2f", figures(runs, func(r result) float64 { return r.drain.Seconds() })),
						stats.Spread("%.3f", figures(runs, result.lossPercent)),
						stats.Spread("%.2f", figures(runs, func(r result) float64 { return r.cpuPerFlowNs() / 1000 })),
						stats.Spread("%.1f", figures(runs, result.flowsPerMessage)), strings.Join(writes, "; ")))
					if !ok {
						break
					}
					bests[proto+"/"+p.name] = best{rate, stats.Median(figures(runs, result.cpuPerFlowNs)), stats.Median(figures(runs, result.flowsPerMessage))}
				}
			}
		}
	}
	fmt.Printf("\nCollectors → Kafka: min(%d, 4 s × rate) flows per run, %d runs per step (median, min–max), %d exporters, %d subscribers, 1 UDP socket each, rmem_default=rmem_max=%d, no compression, delivery = flows in the Kafka topic, paced per datagram\n",
		flows, repeat, benchExporters, benchSubs, receiveBuffer)
	fmt.Printf("| protocol | collector | offered flows/s | runs sustained | flows sent per run | delivered flows/s (first datagram to last flow in Kafka) | s from last sent to last flow in Kafka | lost %% | CPU µs/flow | flows/message | writes to Kafka over %g s, per run (wormsign's publish_seconds) |\n", slowWrite)
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Println("\n| protocol | collector | queue | highest offered rate sustained in most runs (≤ 0.1 % lost, drained ≤ 0.5 s; nfacctd ≤ 1.5 s, its purge every 1 s) | ratio to wormsign | CPU µs per delivered flow there (median) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, proto := range []string{NetFlowV9, IPFIX} {
		ws := bests[proto+"/wormsign"]
		for _, p := range peers {
			bb, ok := bests[proto+"/"+p.name]
			if !ok {
				fmt.Printf("| %s | %s | %s | none (lost > %.1f %% at %d) | – | – |\n", proto, p.name, p.queue, lossLimit, rates[0])
				continue
			}
			ratio := "–"
			if ws.rate > 0 {
				ratio = fmt.Sprintf("%.2f", float64(bb.rate)/float64(ws.rate))
			}
			fmt.Printf("| %s | %s | %s | %d | %s | %.2f |\n", proto, p.name, p.queue, bb.rate, ratio, bb.cpuNs/1000)
		}
		if p := peers[0]; bests[proto+"/"+p.name].rate > 0 {
			b.ReportMetric(float64(bests[proto+"/"+p.name].rate), proto+"_wormsign_lossless_flows/s")
			b.ReportMetric(bests[proto+"/"+p.name].perMsg, proto+"_wormsign_flows/message")
		}
	}
	fmt.Println()
}

type collectorPeer struct {
	name, queue string
	// lowRates come before the common sweep (nfacctd's writer is slow),
	// and extraDrain is added to maxDrain for a peer that holds flows
	// by design (nfacctd's 1 s purge interval).
	lowRates   []int
	extraDrain time.Duration
	run        func(b *testing.B, load Load, rate int) result
}

type result struct {
	sent, delivered, messages int
	sendTime                  time.Duration
	drain                     time.Duration // last datagram sent to last flow in Kafka
	cpu                       time.Duration // the collector process's utime+stime during the step
	writes                    writeTimes    // wormsign's only
}

func (r result) achieved() float64 {
	if r.sendTime+r.drain <= 0 {
		return 0
	}
	return float64(r.delivered) / (r.sendTime + r.drain).Seconds()
}

// sustained tells a lossless step: at most lossLimit lost, and drained
// within maxDrain (plus what the collector's own flush interval needs).
func (r result) sustained(extraDrain time.Duration) bool {
	return r.lossPercent() <= lossLimit && r.drain <= maxDrain+extraDrain
}

func (r result) lossPercent() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.delivered) / float64(r.sent)
}

func (r result) cpuPerFlowNs() float64 {
	if r.delivered == 0 {
		return 0
	}
	return float64(r.cpu.Nanoseconds()) / float64(r.delivered)
}

func (r result) flowsPerMessage() float64 {
	if r.messages == 0 {
		return 0
	}
	return float64(r.delivered) / float64(r.messages)
}

func sustainedRuns(runs []result, extraDrain time.Duration) int {
	n := 0
	for _, r := range runs {
		if r.sustained(extraDrain) {
			n++
		}
	}
	return n
}

// figures is one figure of each run, for bench/stats.
func figures(runs []result, figure func(result) float64) []float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = figure(r)
	}
	return v
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

// setReceiveBuffer sets net.core.rmem_default and rmem_max for the run
// and puts them back after.
func setReceiveBuffer(b *testing.B, n int) {
	b.Helper()
	for _, key := range []string{"rmem_default", "rmem_max"} {
		path := "/proc/sys/net/core/" + key
		old, err := os.ReadFile(path)
		if err != nil {
			testenv.Unavailable(b, "cannot read %s: %v", path, err)
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(n)), 0o644); err != nil {
			testenv.Unavailable(b, "cannot set net.core.%s (needs root): %v", key, err)
		}
		b.Cleanup(func() { os.WriteFile(path, old, 0o644) })
	}
}

func install(b *testing.B, script, lookPath string) string {
	b.Helper()
	if lookPath != "" {
		if p, err := exec.LookPath(lookPath); err == nil {
			return p
		}
	}
	path := filepath.Join(testenv.RepoRoot(b), "bench", "collector", script)
	out, err := exec.Command(path).Output()
	if err != nil {
		testenv.Unavailable(b, "%s: %v", path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// createTopic creates topic with the default partitions (8).
func createTopic(b *testing.B, brokers []string, topic string) {
	b.Helper()
	cfg := bus.DefaultConfiguration()
	cfg.Brokers = brokers
	cfg.FlowsTopic, cfg.AlertsTopic = topic, topic+"-alerts"
	if _, err := bus.NewKafka(context.Background(), cfg); err != nil {
		b.Fatal(err)
	}
}

// process is a collector under test.
type process struct {
	cmd     *exec.Cmd
	logPath string
	// metricsURL is wormsign's Prometheus endpoint: step reads how long
	// its writes to Kafka took from it.
	metricsURL string
}

func start(b *testing.B, readyURL string, name string, args ...string) *process {
	b.Helper()
	p := &process{cmd: exec.Command(name, args...), logPath: filepath.Join(b.TempDir(), "collector.log")}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	// Its own process group, so that stop ends the processes it forks
	// (nfacctd's plugin and writers) with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// wormsign refuses WORMSIGN_ variables it does not know, such as
	// this benchmark's.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WORMSIGN_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("cannot start %s: %v", name, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for readyURL == "" { // nothing to ask: give it a second
		time.Sleep(time.Second)
		return p
	}
	for {
		resp, err := http.Get(readyURL)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			b.Fatalf("%s did not start:\n%s", name, p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // its Kafka producer connects
	return p
}

func (p *process) log() string {
	out, _ := os.ReadFile(p.logPath)
	return string(out)
}

func (p *process) stop() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
}

// cpu is the utime+stime so far of the process and of every process of
// its group (nfacctd forks its plugin and a writer per purge), the
// children it has reaped included (cutime+cstime).
func (p *process) cpu() time.Duration {
	pids, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, path := range pids {
		stat, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// The fields after the command name, which is in parentheses.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(fields) < 15 {
			continue
		}
		pgrp, _ := strconv.Atoi(fields[2])
		if pgrp != p.cmd.Process.Pid {
			continue
		}
		for _, f := range fields[11:15] { // utime, stime, cutime, cstime
			n, _ := strconv.ParseInt(f, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// step sends load at rate to the collector p listening on addr, waits
// until the topic's end offsets stop moving (or reach the flows sent,
// where each message is one flow), and counts what reached Kafka.
func step(b *testing.B, p *process, brokers []string, topic, addr string, load Load, rate int, flowsPerMessageIsOne bool) result {
	b.Helper()
	defer p.stop()
	sender, err := NewSender(benchExporters, addr, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	// A transport of the step's own, its metadata of the step's topic
	// refreshed every 20 ms: kafka-go serves Metadata from a cache (6 s by
	// default), and a cache taken before the collector created its topic
	// answered "no topic" for seconds after every flow was in Kafka, which
	// this step then counted as a drain of up to 3 s, for every collector.
	transport := &kafka.Transport{MetadataTTL: 20 * time.Millisecond, MetadataTopics: []string{topic}}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: transport}
	cpu0 := p.cpu()
	sent, sendTime := sender.Send(load, rate)
	sendEnd := time.Now()
	last, lastMove := -1, time.Now()
	for {
		n, err := endOffsets(client, topic)
		if err != nil {
			if time.Since(lastMove) > 30*time.Second {
				b.Fatalf("Kafka end offsets of %s: %v", topic, err)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if n != last {
			last, lastMove = n, time.Now()
		}
		if (flowsPerMessageIsOne && n >= sent) || time.Since(lastMove) > 2*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cpu := p.cpu() - cpu0
	r := result{sent: sent, messages: last, sendTime: sendTime, drain: max(0, lastMove.Sub(sendEnd)), cpu: cpu}
	if p.metricsURL != "" {
		r.writes = publishWrites(p.metricsURL)
	}
	if flowsPerMessageIsOne {
		r.delivered = last
	} else {
		r.delivered = countFlows(b, brokers, topic)
	}
	if r.delivered == 0 {
		b.Logf("%s delivered nothing; its log:\n%s", p.cmd.Path, p.log())
	}
	return r
}

// slowWrite is a write to Kafka that alone takes a quarter of maxDrain: a
// bucket bound of collector_publish_seconds.
const slowWrite = 0.128

// writeTimes is what wormsign's collector_publish_seconds histogram says
// of a step's writes to Kafka.
type writeTimes struct {
	count, slow int     // writes, and those over slowWrite
	longest     float64 // upper bound of the highest non-empty bucket, s
}

func (w writeTimes) String() string {
	if w.count == 0 {
		return "–"
	}
	return fmt.Sprintf("%d of %d, longest ≤ %.3g s", w.slow, w.count, w.longest)
}

// publishWrites reads the histogram from the collector's endpoint; zero
// when it cannot.
func publishWrites(url string) writeTimes {
	resp, err := http.Get(url)
	if err != nil {
		return writeTimes{}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var w writeTimes
	prevCount := 0
	const prefix = "wormsign_collector_publish_seconds_bucket{le=\""
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		le, count, ok := strings.Cut(rest, "\"} ")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(count)
		bound, err := strconv.ParseFloat(le, 64)
		if le == "+Inf" {
			w.count = n
			if n > prevCount {
				w.longest = math.Inf(1)
			}
			continue
		}
		if err != nil {
			continue
		}
		if bound <= slowWrite {
			w.slow = -n // what the count has beyond this bucket is over slowWrite
		}
		if n > prevCount {
			w.longest = bound
		}
		prevCount = n
	}
	w.slow += w.count
	return w
}

func endOffsets(client *kafka.Client, topic string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, err
	}
	if len(meta.Topics) == 0 || meta.Topics[0].Error != nil {
		return 0, fmt.Errorf("no topic %s", topic)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, err
	}
	total := 0
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return 0, p.Error
		}
		total += int(p.LastOffset)
	}
	return total, nil
}

// countFlows reads every message of topic and decodes wormsign's flow
// batches in it.
func countFlows(b *testing.B, brokers []string, topic string) int {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		b.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		b.Fatal(err)
	}
	total := 0
	var flows []flow.Flow
	for _, part := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, part.ID)
		if err != nil {
			b.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pc.Seek(0, kafka.SeekAbsolute); err != nil {
			b.Fatal(err)
		}
		for offset := int64(0); offset < last; {
			batch := pc.ReadBatch(1, 16<<20)
			for {
				m, err := batch.ReadMessage()
				if err != nil {
					break
				}
				offset = m.Offset + 1
				flows, err = flow.DecodeBatch(flows[:0], m.Value)
				if err != nil {
					b.Fatalf("message %d of partition %d: %v", m.Offset, part.ID, err)
				}
				total += len(flows)
			}
			if err := batch.Close(); err != nil && !errors.Is(err, kafka.ErrGenerationEnded) {
				b.Fatal(err)
			}
		}
		pc.Close()
	}
	return total
}

// wormsignRunner builds the wormsign binary and runs `wormsign collector`.
func wormsignRunner(b *testing.B, brokers []string) func(*testing.B, Load, int) result {
	bin := filepath.Join(b.TempDir(), "wormsign")
	build := exec.Command("go", "build", "-o", bin, "./cmd/wormsign")
	build.Dir = testenv.RepoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return func(b *testing.B, load Load, rate int) result {
		topic := testenv.Name(b, "bench-wormsign")
		port, httpPort := testenv.FreeUDPPort(b), testenv.FreePort(b)
		cfg := fmt.Sprintf(`log_level: error
http:
  listen: "127.0.0.1:%d"
kafka:
  brokers: [%s]
  flows_topic: %s
  alerts_topic: %s-alerts
  compression: none
collector:
  netflow_listen: ["127.0.0.1:%d"]
  sflow_listen: []
  sockets_per_listener: 1
  receive_buffer: 0
  queue_size: %d
`, httpPort, strings.Join(brokers, ", "), topic, topic, port, queueDatagrams)
		path := filepath.Join(b.TempDir(), "wormsign.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			b.Fatal(err)
		}
		metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
		p := start(b, metrics, bin, "collector", "--config", path)
		p.metricsURL = metrics
		return step(b, p, brokers, topic, fmt.Sprintf("127.0.0.1:%d", port), load, rate, false)
	}
}

// goflowRunner runs goflow v3's own collector (one socket: it has no
// option for more).
func goflowRunner(b *testing.B, brokers []string) func(*testing.B, Load, int) result {
	bin := install(b, "install-goflow.sh", "goflow")
	return func(b *testing.B, load Load, rate int) result {
		topic := testenv.Name(b, "bench-goflow")
		createTopic(b, brokers, topic)
		port, sfPort, metricsPort := testenv.FreeUDPPort(b), testenv.FreeUDPPort(b), testenv.FreePort(b)
		p := start(b, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort), bin,
			"-kafka.brokers", strings.Join(brokers, ","), "-kafka.topic", topic,
			"-nf.addr", "127.0.0.1", "-nf.port", strconv.Itoa(port),
			"-sflow.addr", "127.0.0.1", "-sflow.port", strconv.Itoa(sfPort),
			"-nfl=false", "-workers", "2", "-loglevel", "error",
			"-metrics.addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
		return step(b, p, brokers, topic, fmt.Sprintf("127.0.0.1:%d", port), load, rate, true)
	}
}

// goflow2Runner runs goflow2 with one socket, wormsign's queue size, its
// protobuf output and a 50 ms Kafka flush (wormsign's linger; its default
// is 5 s).
func goflow2Runner(b *testing.B, brokers []string) func(*testing.B, Load, int) result {
	bin := install(b, "install-goflow2.sh", "")
	return func(b *testing.B, load Load, rate int) result {
		topic := testenv.Name(b, "bench-goflow2")
		createTopic(b, brokers, topic)
		port, metricsPort := testenv.FreeUDPPort(b), testenv.FreePort(b)
		p := start(b, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort), bin,
			"-listen", fmt.Sprintf("netflow://127.0.0.1:%d?count=1&queue_size=%d", port, queueDatagrams),
			"-transport", "kafka", "-transport.kafka.brokers", strings.Join(brokers, ","),
			"-transport.kafka.topic", topic, "-transport.kafka.flushfreq", "50ms",
			"-format", "bin", "-loglevel", "error",
			"-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
		return step(b, p, brokers, topic, fmt.Sprintf("127.0.0.1:%d", port), load, rate, true)
	}
}

// nfacctdRunner runs Debian's nfacctd with its Kafka plugin: JSON, one
// message per aggregate, aggregated on every field the load varies (so
// each flow is its own aggregate but for rare collisions: a lower
// bound), purged every second. Its receive buffer is the kernel's.
func nfacctdRunner(bin string, brokers []string) func(*testing.B, Load, int) result {
	return func(b *testing.B, load Load, rate int) result {
		topic := testenv.Name(b, "bench-nfacctd")
		createTopic(b, brokers, topic)
		host, port, _ := net.SplitHostPort(brokers[0])
		udp := testenv.FreeUDPPort(b)
		conf := fmt.Sprintf(`daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: %d
plugins: kafka
kafka_output: json
kafka_broker_host: %s
kafka_broker_port: %s
kafka_topic: %s
kafka_refresh_time: 1
aggregate: src_host, dst_host, src_port, dst_port, proto, timestamp_start, timestamp_end, in_iface, out_iface
`, udp, host, port, topic)
		path := filepath.Join(b.TempDir(), "nfacctd.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
		p := start(b, "", bin, "-f", path)
		return step(b, p, brokers, topic, fmt.Sprintf("127.0.0.1:%d", udp), load, rate, true)
	}
}

// prefix is the load's first datagrams holding at least flows flows.
func (l Load) prefix(flows int) Load {
	var p Load
	for _, d := range l.Datagrams {
		if p.Flows >= flows {
			break
		}
		p.Datagrams = append(p.Datagrams, d)
		p.Flows += d.Flows
	}
	return p
}
