// Package e2ebench measures wormsign end to end on this machine: UDP
// NetFlow v9 in, the collector, detector and sink as three processes over
// Kafka, rows in ClickHouse (18.16) and alerts POSTed to a webhook.
package e2ebench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

	"github.com/ClickHouse/clickhouse-go/v2"

	collectorbench "github.com/wormsign/wormsign/bench/collector"
	"github.com/wormsign/wormsign/bench/stats"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
)

const (
	exporters   = 8
	subscribers = 50_000
	threshold   = 25 // smtp_fanout's default
)

// BenchmarkEndToEnd sweeps the offered NetFlow v9 rate (WORMSIGN_BENCH_E2E_RATES,
// default 100000,250000,500000,750000; WORMSIGN_BENCH_E2E_FLOWS per run, default
// 2,500,000) through three wormsign processes, each rate in
// WORMSIGN_BENCH_E2E_REPEATS runs (default 3) with fresh processes, until a
// rate loses flows (more than 0.1 % of them fewer in ClickHouse than were
// sent) or alerts in most of its runs. During each run a zombie starts
// every 100 ms: it sends 24 SMTP attempts, and 300 ms later the 25th (the
// crossing flow) in a datagram of its own. The alert latency is from
// sending that datagram to the collector on loopback to the webhook POST
// reaching a local receiver; smtp_fanout's sequential fast path is off so
// that the 25th flow is the one that opens the alert. One run's p99 is
// that of about 100 alerts (at 250k flows/s); a rate's is the median of
// its runs', printed with their range, so that one alert caught in a
// stall of one run does not make the figure.
func BenchmarkEndToEnd(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "wormsign")
	build := exec.Command("go", "build", "-o", bin, "./cmd/wormsign")
	build.Dir = testenv.RepoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	h := &webhookTimes{posts: map[string]time.Time{}}
	hook := httptest.NewServer(h)
	defer hook.Close()
	e := &e2e{bin: bin, brokers: testenv.KafkaBrokers(b), chAddr: testenv.ClickHouseAddr(b), hook: hook.URL, posts: h}
	admin, err := clickhouse.Open(&clickhouse.Options{Addr: []string{e.chAddr}})
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	e.admin = admin

	// 10 s at 250k flows/s: long enough that the 8 MiB socket buffers
	// and the queues cannot hide a stage that falls behind.
	e.flows = envInt("WORMSIGN_BENCH_E2E_FLOWS", 2_500_000)
	repeats := envInt("WORMSIGN_BENCH_E2E_REPEATS", 3)
	rates := []int{100_000, 250_000, 500_000, 750_000}
	if v := os.Getenv("WORMSIGN_BENCH_E2E_RATES"); v != "" {
		rates = rates[:0]
		for _, f := range strings.Split(v, ",") {
			if r, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && r > 0 {
				rates = append(rates, r)
			}
		}
	}
	var lines, summary []string
	best, bestInTime := 0, 0 // bestInTime: the highest lossless rate with alert latency p99 ≤ 1 s
	var bestP50, bestP99 []float64
	for _, rate := range rates {
		var p50s, p99s []float64
		lossless := 0
		for run := 1; run <= repeats; run++ {
			r := e.run(b, rate)
			lines = append(lines, fmt.Sprintf("| %d | %d | %d | %s | %.0f | %.0f | %.0f | %d | %.3f | %d of %d | %s | %s |", rate, run, r.want, r.sendTime.Round(time.Millisecond),
				r.decoded, r.dropped, r.published, r.rows, r.lossPct(), len(r.latencies), r.zombies, pct(r.latencies, 50), pct(r.latencies, 99)))
			if r.lossless() {
				lossless++
				p50s = append(p50s, quantile(r.latencies, 50).Seconds()*1000)
				p99s = append(p99s, quantile(r.latencies, 99).Seconds()*1000)
			}
		}
		summary = append(summary, fmt.Sprintf("| %d | %d of %d | %s | %s |", rate, lossless, repeats,
			stats.Spread("%.0f ms", p50s), stats.Spread("%.0f ms", p99s)))
		if 2*lossless <= repeats {
			break
		}
		best, bestP50, bestP99 = rate, p50s, p99s
		if stats.Median(p99s) <= 1000 {
			bestInTime = rate
		}
	}
	fmt.Printf("\nEnd to end: NetFlow v9 (%d exporters, %d subscribers) → wormsign collector → Kafka (no compression) → detector and sink, three processes → ClickHouse 18.16 and a local webhook; zombies' 25th SMTP flow (sequential test off) to webhook POST, a zombie every 100 ms; %d runs per rate, fresh processes each\n", exporters, subscribers, repeats)
	fmt.Println("| offered flows/s | run | flows sent (incl. zombies) | send time | decoded by the collector | dropped at its queue | published to Kafka | rows in ClickHouse | lost % | alerts POSTed | latency p50 | latency p99 |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Println("\n| offered flows/s | lossless runs (every flow and alert) | latency p50, median of the lossless runs (range) | latency p99, median (range) |")
	fmt.Println("|---|---|---|---|")
	for _, l := range summary {
		fmt.Println(l)
	}
	fmt.Printf("highest rate lossless in most runs: %d flows/s; alert latency there p50 %s, p99 %s (target ≤ 1 s); highest such rate with median p99 ≤ 1 s: %d flows/s\n",
		best, stats.Spread("%.0f ms", bestP50), stats.Spread("%.0f ms", bestP99), bestInTime)
	b.ReportMetric(float64(best), "lossless_flows/s")
	b.ReportMetric(float64(bestInTime), "lossless_p99_1s_flows/s")
}

// webhookTimes records when the first alert of each zombie was POSTed.
type webhookTimes struct {
	mu    sync.Mutex
	posts map[string]time.Time // zombie address → first POST
}

var zombieAddr = regexp.MustCompile(`"subscriber_ip":"(100\.127\.[0-9]+\.[0-9]+)"`)

func (h *webhookTimes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range zombieAddr.FindAllSubmatch(body, -1) {
		if _, seen := h.posts[string(m[1])]; !seen {
			h.posts[string(m[1])] = at
		}
	}
}

// e2e is what every run shares: the binary, the servers, the receiver.
type e2e struct {
	bin, chAddr, hook string
	brokers           []string
	admin             clickhouse.Conn
	posts             *webhookTimes
	flows             int
}

// runResult is what one run measured.
type runResult struct {
	want, rows                  uint64
	sendTime                    time.Duration
	decoded, dropped, published float64
	latencies                   []time.Duration // sorted
	zombies                     int
}

func (r runResult) lossPct() float64 {
	return 100 * (float64(r.want) - float64(r.rows)) / float64(r.want)
}

func (r runResult) lossless() bool { return r.lossPct() <= 0.1 && len(r.latencies) == r.zombies }

// run starts the sink, detector and collector on topics and a database of
// their own, offers e.flows flows at rate with the zombies beside them, and
// stops the processes once ClickHouse has every row or stopped growing.
func (e *e2e) run(b *testing.B, rate int) runResult {
	db := testenv.Name(b, "wse2e")
	topic := testenv.Name(b, "e2e")
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr, cfg.Database = e.chAddr, db
	chtest.Database(b, cfg)
	udp := testenv.FreeUDPPort(b)
	var procs []*exec.Cmd
	var collectorMetrics string
	for _, stage := range []string{"sink", "detector", "collector"} {
		httpPort := testenv.FreePort(b)
		if stage == "collector" {
			collectorMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
		}
		conf := fmt.Sprintf(`log_level: error
subscriber_networks: [100.64.0.0/10]
http:
  listen: "127.0.0.1:%d"
kafka:
  brokers: [%s]
  flows_topic: %s
  alerts_topic: %s-alerts
  compression: none
clickhouse:
  addr: %s
  database: %s
collector:
  netflow_listen: ["127.0.0.1:%d"]
  sflow_listen: []
detector:
  smtp_fanout:
    sequential:
      enabled: false
sink:
  webhooks:
    - name: bench
      url: %s
      secret: bench-secret-not-for-production
`, httpPort, strings.Join(e.brokers, ", "), topic, topic, e.chAddr, db, udp, e.hook)
		path := filepath.Join(b.TempDir(), stage+".yaml")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(e.bin, stage, "--config", path)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "WORMSIGN_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		logPath := filepath.Join(b.TempDir(), stage+".log")
		logFile, _ := os.Create(logPath)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		logFile.Close()
		procs = append(procs, cmd)
		if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)); err != nil {
			log, _ := os.ReadFile(logPath)
			b.Fatalf("%s did not start: %v\n%s", stage, err, log)
		}
	}
	stop := func() {
		for _, p := range procs {
			p.Process.Signal(os.Interrupt)
		}
		for _, p := range procs {
			done := make(chan struct{})
			go func() { p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				p.Process.Kill()
				<-done
			}
		}
	}
	time.Sleep(2 * time.Second) // the detector and sink join their groups

	load := collectorbench.GenerateProtocols(e.flows, exporters, subscribers, time.Now().UnixMilli(), collectorbench.NetFlowV9)
	addr := fmt.Sprintf("127.0.0.1:%d", udp)
	sender, err := collectorbench.NewSender(exporters, addr, addr)
	if err != nil {
		b.Fatal(err)
	}
	zc, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	e.posts.mu.Lock()
	clear(e.posts.posts)
	e.posts.mu.Unlock()
	crossing := map[string]time.Time{}
	zombieFlows := 0
	var wg sync.WaitGroup
	sendDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A zombie starts every tick and crosses the threshold three
		// ticks (300 ms) later, so that a run of 10 s has about 100.
		const lag = 3
		seq := uint32(0)
		zombie := func(i int) [4]byte { return [4]byte{100, 127, byte(i >> 8), byte(i)} }
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		started, stopped := 0, false
		for i := 0; !stopped || i < started+lag; i++ {
			<-tick.C
			if i >= lag && i-lag < started {
				z := zombie(i - lag)
				now := time.Now()
				zc.Write(collectorbench.SMTPProbes(seq, now.UnixMilli(), z, threshold-1, 1))
				seq++
				crossing[netip.AddrFrom4(z).String()] = now
				zombieFlows += threshold
			}
			if stopped {
				continue // no new zombie; the started ones still cross
			}
			select {
			case <-sendDone:
				stopped = true
			default:
				zc.Write(collectorbench.SMTPProbes(seq, time.Now().UnixMilli(), zombie(i), 0, threshold-1))
				seq++
				started = i + 1
			}
		}
	}()
	sent, sendTime := sender.Send(load, rate)
	close(sendDone)
	wg.Wait()
	sender.Close()
	zc.Close()
	// Rows: until all are there or the count stops moving for 5 s.
	r := runResult{want: uint64(sent + zombieFlows), sendTime: sendTime, zombies: len(crossing)}
	last, lastMove := uint64(0), time.Now()
	for time.Since(lastMove) < 5*time.Second && r.rows < r.want {
		time.Sleep(100 * time.Millisecond)
		e.admin.QueryRow(context.Background(), "SELECT count() FROM "+db+".flows").Scan(&r.rows)
		if r.rows != last {
			last, lastMove = r.rows, time.Now()
		}
	}
	time.Sleep(time.Second) // the last webhooks
	// Where flows were lost: before the collector decoded them (the
	// socket's buffer), at its queue, or after it published them.
	r.decoded, r.dropped, r.published = metricSum(collectorMetrics, "wormsign_collector_flows_total"),
		metricSum(collectorMetrics, "wormsign_collector_dropped_flows_total"), metricSum(collectorMetrics, "wormsign_collector_published_flows_total")
	stop()
	e.posts.mu.Lock()
	for z, t := range crossing {
		if p, ok := e.posts.posts[z]; ok {
			r.latencies = append(r.latencies, p.Sub(t))
		}
	}
	e.posts.mu.Unlock()
	slices.Sort(r.latencies)
	return r
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// metricSum is the sum of a metric's series on a Prometheus endpoint, 0
// when it cannot be read.
func metricSum(url, name string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != ' ' && line[len(name)] != '{') {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func pct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "–"
	}
	return quantile(d, p).Round(time.Millisecond).String()
}

// quantile is the p-th percentile of sorted d, the nearest rank; 0 for none.
func quantile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, len(d)*p/100)]
}

func waitHTTP(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
