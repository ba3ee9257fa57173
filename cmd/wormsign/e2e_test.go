package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/internal/testenv"
)

var binary string

func TestMain(m *testing.M) {
	testenv.RunPeer()
	dir, err := os.MkdirTemp("", "wormsign-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "wormsign")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot build wormsign: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a wormsign subcommand under test.
type process struct {
	cmd    *exec.Cmd
	stdout *bufio.Scanner
	exited chan error
}

func startWormsign(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), append([]string{"WORMSIGN_HTTP_LISTEN=127.0.0.1:0"}, env...)...)
	logFile, err := os.Create(filepath.Join(t.TempDir(), args[0]+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stdout: bufio.NewScanner(out), exited: make(chan error, 1)}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("wormsign %s log:\n%s", args[0], log)
		}
	})
	return p
}

// log is what the process has logged so far.
func (p *process) log() string {
	raw, _ := os.ReadFile(p.cmd.Stderr.(*os.File).Name())
	return string(raw)
}

// waitLog waits until the process logged a line containing s.
func waitLog(t *testing.T, p *process, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.log(), s) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("wormsign did not log %q", s)
}

// stop sends SIGTERM and expects a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("wormsign %s exited with %v after SIGTERM, want 0", p.cmd.Args[1], err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("wormsign %s did not exit within 60s of SIGTERM", p.cmd.Args[1])
	}
}

// zombieScenario makes a spam zombie of the lab's first subscriber (40
// SMTP attempts, 30 answered and 10 refused) and an ordinary user of the
// second (2 sessions), with softflowd exporting NetFlow v9 to port. It
// returns the number of flow records softflowd actually exported.
func zombieScenario(t *testing.T, lab *testenv.Lab, port int) int {
	t.Helper()
	lab.StartSMTPServers(t, lab.Servers[:30])
	capture := testenv.CaptureUDP(t, port)
	sf := lab.StartSoftflowd(t, 9, port)
	// Refusing hosts first, so that the alert opened at the 25th distinct
	// destination already counts failed attempts.
	zombieTargets := append(slices.Clone(lab.Servers[30:40]), lab.Servers[:30]...)
	if n := lab.SMTPSessions(t, lab.Subscribers[0], zombieTargets); n != 30 {
		t.Fatalf("zombie had %d SMTP sessions answered, want 30", n)
	}
	if n := lab.SMTPSessions(t, lab.Subscribers[1], lab.Servers[:2]); n != 2 {
		t.Fatalf("ordinary user had %d SMTP sessions answered, want 2", n)
	}
	sf.ExpireAll(t)
	time.Sleep(2 * time.Second) // let the export datagrams land
	exported := capture.NetFlowRecords(t)
	// 40 zombie attempts and their 30 answers plus 10 refusals (RST), and
	// 2 sessions of 2 directions for the ordinary user.
	if exported < 84 {
		t.Fatalf("softflowd exported %d records, want at least 84", exported)
	}
	return exported
}

func TestEmbeddedRunAlertsOnStdout(t *testing.T) {
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	p := startWormsign(t, labEnv(port), "run")
	waitLog(t, p, "wormsign started")
	zombieScenario(t, lab, port)

	alerts := make(chan alert.Alert, 16)
	go func() {
		for p.stdout.Scan() {
			a, err := alert.Unmarshal(p.stdout.Bytes())
			if err != nil {
				t.Errorf("stdout line is not an alert: %q: %v", p.stdout.Text(), err)
				continue
			}
			alerts <- a
		}
		close(alerts)
	}()
	zombie := lab.Subscribers[0].String()
	select {
	case a := <-alerts:
		if a.Kind != alert.KindSMTPFanout || a.State != alert.StateOpen || a.SubscriberIP != zombie {
			t.Errorf("first alert = %s %s %s, want smtp_fanout open %s", a.Kind, a.State, a.SubscriberIP, zombie)
		}
		// Either the fixed threshold fired (25 destinations) or the
		// sequential test did, earlier, on a run of refused first contacts.
		switch a.Evidence.Trigger {
		case "threshold":
			if a.DistinctDsts < 25 {
				t.Errorf("threshold alert with distinct_dsts=%d, want >= 25", a.DistinctDsts)
			}
		case "sequential":
			if a.Evidence.Sequential == nil || a.Evidence.Sequential.FirstFailed == 0 {
				t.Errorf("sequential alert without its odds: %+v", a.Evidence.Sequential)
			}
		default:
			t.Errorf("alert trigger %q, want threshold or sequential", a.Evidence.Trigger)
		}
		if a.ID == "" || a.Exporter != "127.0.0.1" || a.Evidence.FailedAttempts == 0 {
			t.Errorf("alert id=%q exporter=%q failed=%d, want an id, 127.0.0.1, failed attempts",
				a.ID, a.Exporter, a.Evidence.FailedAttempts)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no alert on stdout within 30s of the export")
	}
	p.stop(t)
	for a := range alerts {
		if a.SubscriberIP != zombie {
			t.Errorf("alert for %s, only the zombie %s should be flagged", a.SubscriberIP, zombie)
		}
	}
}

// The three stages over Kafka, into each ClickHouse the tests run on.
func TestKafkaClickHousePipeline(t *testing.T) {
	testenv.ForEachClickHouse(t, testKafkaClickHousePipeline)
}

// pipelineEnv configures the stages of one test: its own topics, groups
// and database on the given Kafka and ClickHouse, the lab's subscribers,
// NetFlow on port.
func pipelineEnv(t *testing.T, brokers, chAddr, db string, port int) []string {
	return append([]string{
		"WORMSIGN_KAFKA_BROKERS=" + brokers,
		"WORMSIGN_KAFKA_FLOWS_TOPIC=" + testenv.Name(t, "flows"),
		"WORMSIGN_KAFKA_ALERTS_TOPIC=" + testenv.Name(t, "alerts"),
		"WORMSIGN_CLICKHOUSE_ADDR=" + chAddr,
		"WORMSIGN_CLICKHOUSE_DATABASE=" + db,
		"WORMSIGN_DETECTOR_GROUP=" + testenv.Name(t, "detector"),
		"WORMSIGN_SINK_GROUP=" + testenv.Name(t, "sink"),
	}, labEnv(port)...)
}

// labEnv has wormsign take NetFlow from the lab's softflowd on port (no
// sFlow) with the lab's subscribers.
func labEnv(port int) []string {
	return []string{
		fmt.Sprintf("WORMSIGN_COLLECTOR_NETFLOW_LISTEN=127.0.0.1:%d", port),
		"WORMSIGN_COLLECTOR_SFLOW_LISTEN=",
		"WORMSIGN_SUBSCRIBER_NETWORKS=203.0.113.0/24",
	}
}

func testKafkaClickHousePipeline(t *testing.T, chAddr string) {
	brokers := strings.Join(testenv.KafkaBrokers(t), ",")
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	db := testenv.Name(t, "wse2e")
	env := pipelineEnv(t, brokers, chAddr, db, port)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db) })

	// Each stage in its own process, talking through Kafka only.
	sink := startWormsign(t, env, "sink")
	waitLog(t, sink, "wormsign started")
	detector := startWormsign(t, env, "detector")
	waitLog(t, detector, "wormsign started")
	collector := startWormsign(t, env, "collector")
	waitLog(t, collector, "wormsign started")

	exported := zombieScenario(t, lab, port)

	ctx := context.Background()
	var flows uint64
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&flows); err == nil && flows >= uint64(exported) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if flows != uint64(exported) {
		t.Errorf("ClickHouse has %d flow rows, softflowd exported %d", flows, exported)
		rows, err := conn.Query(ctx, "SELECT toString(src_addr), toString(dst_addr), src_port, dst_port, count() AS n FROM "+db+
			".flows GROUP BY src_addr, dst_addr, src_port, dst_port HAVING n > 1")
		if err == nil {
			for rows.Next() {
				var src, dst string
				var sport, dport uint16
				var n uint64
				rows.Scan(&src, &dst, &sport, &dport, &n)
				t.Logf("repeated flow %s:%d -> %s:%d x%d", src, sport, dst, dport, n)
			}
			rows.Close()
		}
	}
	zombie := lab.Subscribers[0].String()
	var alerts uint64
	for time.Now().Before(deadline) {
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".alerts WHERE kind = 'smtp_fanout' AND state = 'open' AND subscriber_ip = ?",
			zombie).Scan(&alerts); err == nil && alerts > 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if alerts != 1 {
		t.Errorf("ClickHouse has %d open smtp_fanout alerts for %s, want 1", alerts, zombie)
	}
	var others uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".alerts WHERE subscriber_ip != ?", zombie).Scan(&others); err != nil || others != 0 {
		t.Errorf("alerts for other subscribers: %d (%v), want 0", others, err)
	}
	var subscriberFlows uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".flows WHERE subscriber_ip = ? AND dst_port = 25",
		zombie).Scan(&subscriberFlows); err != nil || subscriberFlows != 40 {
		t.Errorf("zombie's TCP/25 flows in ClickHouse: %d (%v), want 40", subscriberFlows, err)
	}
	collector.stop(t)
	detector.stop(t)
	sink.stop(t)
}
