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
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	collectorbench "github.com/wormsign/wormsign/bench/collector"
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
// default 100000,250000,500000,750000; WORMSIGN_BENCH_E2E_FLOWS per step, default
// 2,500,000) through three wormsign processes until ClickHouse holds fewer
// rows than were sent (more than 0.1 % lost). During each step, every
// 250 ms a zombie sends 24 SMTP attempts, then 300 ms later the 25th
// (the crossing flow) in a datagram of its own: the alert latency is from
// sending that datagram to the collector on loopback to the webhook POST
// reaching a local receiver. smtp_fanout's sequential fast path is off so
// that the 25th flow is the one that opens the alert.
func BenchmarkEndToEnd(b *testing.B) {
	brokers := testenv.KafkaBrokers(b)
	chAddr := testenv.ClickHouseAddr(b)
	bin := filepath.Join(b.TempDir(), "wormsign")
	build := exec.Command("go", "build", "-o", bin, "./cmd/wormsign")
	build.Dir = testenv.RepoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	var mu sync.Mutex
	posts := map[string]time.Time{} // zombie address → first POST
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		for i := range 256 {
			z := fmt.Sprintf("100.127.0.%d\"", i)
			if _, seen := posts[z]; !seen && strings.Contains(string(body), z) {
				posts[z] = at
			}
		}
		mu.Unlock()
	}))
	defer hook.Close()
	admin, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()

	// 10 s at 250k flows/s: long enough that the 8 MiB socket buffers
	// and the queues cannot hide a stage that falls behind.
	flows := 2_500_000
	if v, err := strconv.Atoi(os.Getenv("WORMSIGN_BENCH_E2E_FLOWS")); err == nil && v > 0 {
		flows = v
	}
	rates := []int{100_000, 250_000, 500_000, 750_000}
	if v := os.Getenv("WORMSIGN_BENCH_E2E_RATES"); v != "" {
		rates = rates[:0]
		for _, f := range strings.Split(v, ",") {
			if r, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && r > 0 {
				rates = append(rates, r)
			}
		}
	}
	var lines []string
	best := 0
	var bestLat []time.Duration
	bestInTime := 0 // the highest lossless rate with alert latency p99 ≤ 1 s
	for _, rate := range rates {
		db := testenv.Name(b, "wse2e")
		topic := testenv.Name(b, "e2e")
		cfg := clickhousedb.DefaultConfiguration()
		cfg.Addr, cfg.Database = chAddr, db
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
`, httpPort, strings.Join(brokers, ", "), topic, topic, chAddr, db, udp, hook.URL)
			path := filepath.Join(b.TempDir(), stage+".yaml")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(bin, stage, "--config", path)
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

		load := collectorbench.GenerateProtocols(flows, exporters, subscribers, time.Now().UnixMilli(), collectorbench.NetFlowV9)
		addr := fmt.Sprintf("127.0.0.1:%d", udp)
		sender, err := collectorbench.NewSender(exporters, addr, addr)
		if err != nil {
			b.Fatal(err)
		}
		zc, err := net.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		clear(posts)
		mu.Unlock()
		crossing := map[string]time.Time{}
		zombieFlows := 0
		var wg sync.WaitGroup
		sendDone := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq := uint32(0)
			for i := 0; ; i++ {
				select {
				case <-sendDone:
					return
				case <-time.After(250 * time.Millisecond):
				}
				src := [4]byte{100, 127, 0, byte(i)}
				zc.Write(collectorbench.SMTPProbes(seq, time.Now().UnixMilli(), src, 0, threshold-1))
				seq++
				time.Sleep(300 * time.Millisecond)
				now := time.Now()
				zc.Write(collectorbench.SMTPProbes(seq, now.UnixMilli(), src, threshold-1, 1))
				seq++
				crossing[fmt.Sprintf("100.127.0.%d\"", i)] = now
				zombieFlows += threshold
				if i == 255 {
					return
				}
			}
		}()
		sent, sendTime := sender.Send(load, rate)
		close(sendDone)
		wg.Wait()
		sender.Close()
		zc.Close()
		// Rows: until all are there or the count stops moving for 5 s.
		want := uint64(sent + zombieFlows)
		var rows uint64
		last, lastMove := uint64(0), time.Now()
		for time.Since(lastMove) < 5*time.Second && rows < want {
			time.Sleep(100 * time.Millisecond)
			admin.QueryRow(context.Background(), "SELECT count() FROM "+db+".flows").Scan(&rows)
			if rows != last {
				last, lastMove = rows, time.Now()
			}
		}
		time.Sleep(time.Second) // the last webhooks
		// Where flows were lost: before the collector decoded them (the
		// socket's buffer), at its queue, or after it published them.
		decoded, dropped, published := metricSum(collectorMetrics, "wormsign_collector_flows_total"),
			metricSum(collectorMetrics, "wormsign_collector_dropped_flows_total"), metricSum(collectorMetrics, "wormsign_collector_published_flows_total")
		stop()
		var lat []time.Duration
		missing := 0
		mu.Lock()
		for z, t := range crossing {
			if p, ok := posts[z]; ok {
				lat = append(lat, p.Sub(t))
			} else {
				missing++
			}
		}
		mu.Unlock()
		slices.Sort(lat)
		loss := 100 * (float64(want) - float64(rows)) / float64(want)
		lines = append(lines, fmt.Sprintf("| %d | %d | %s | %.0f | %.0f | %.0f | %d | %.3f | %d of %d | %s | %s |", rate, want, sendTime.Round(time.Millisecond),
			decoded, dropped, published, rows, loss, len(lat), len(crossing), pct(lat, 50), pct(lat, 99)))
		if loss > 0.1 || missing > 0 {
			break
		}
		best, bestLat = rate, lat
		if len(lat) > 0 && lat[min(len(lat)-1, len(lat)*99/100)] <= time.Second {
			bestInTime = rate
		}
	}
	fmt.Printf("\nEnd to end: NetFlow v9 (%d exporters, %d subscribers) → wormsign collector → Kafka (no compression) → detector and sink, three processes → ClickHouse 18.16 and a local webhook; zombies' 25th SMTP flow (sequential test off) to webhook POST\n", exporters, subscribers)
	fmt.Println("| offered flows/s | flows sent (incl. zombies) | send time | decoded by the collector | dropped at its queue | published to Kafka | rows in ClickHouse | lost % | alerts POSTed | latency p50 | latency p99 |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("highest lossless offered rate: %d flows/s; alert latency there p50 %s, p99 %s (target ≤ 1 s); highest lossless with p99 ≤ 1 s: %d flows/s\n",
		best, pct(bestLat, 50), pct(bestLat, 99), bestInTime)
	b.ReportMetric(float64(best), "lossless_flows/s")
	b.ReportMetric(float64(bestInTime), "lossless_p99_1s_flows/s")
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
	return d[min(len(d)-1, len(d)*p/100)].Round(time.Millisecond).String()
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
