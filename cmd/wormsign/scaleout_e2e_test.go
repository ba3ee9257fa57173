package main

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	collectorbench "github.com/wormsign/wormsign/bench/collector"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// TestScaleOutWithFaults runs every stage in several processes, as a
// large ISP would: 3 collectors (each with its own routers), 3 detectors
// and 2 sinks in their consumer groups over 12 partitions, 2 consoles.
// While routers' flows and a dozen spam zombies' probes stream in, one
// detector is killed for good (SIGKILL: its partitions move to the others,
// which rebuild them and take its open incidents over) and one sink is
// killed and started again. Afterwards the checks of scaleOut.verify hold.
func TestScaleOutWithFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nine processes")
	}
	lab := newScaleOut(t, scaleOutServices{brokers: testenv.KafkaBrokers(t), clickhouse: testenv.ClickHouseAddr(t)})
	lab.startStages()

	// Routers: 4 per collector, 20k flows/s each collector, 10 s.
	routers := lab.startRouters(200_000, 20_000)
	lab.probe(0) // 20 destinations each: below the threshold of 25
	time.Sleep(2 * time.Second)
	lab.probe(1) // 40: every zombie opens
	time.Sleep(2 * time.Second)
	lab.detectors[1].cmd.Process.Signal(syscall.SIGKILL)
	t.Log("detector 2 killed for good")
	time.Sleep(1 * time.Second)
	lab.probe(2) // growth after the kill, seen by the new owners
	lab.restartSink(0, 3*time.Second)
	lab.probe(3)
	lab.verify(routers())
}

// scaleOutServices are the Kafka and ClickHouse a scale-out run uses.
type scaleOutServices struct {
	brokers []string
	// replicationFactor of the topics the stages create; 0: the default.
	replicationFactor int
	// clickhouse is the server every stage connects to, and cluster the
	// name of its cluster (empty: a single server).
	clickhouse, cluster string
	// check is the server the test reads its figures from (default:
	// clickhouse).
	check string
}

// scaleOut is every stage of wormsign in several processes on one set of
// topics and one database: 3 collectors (each with its own routers), 3
// detectors and 2 sinks in their consumer groups over 12 partitions, and
// 2 consoles, with a webhook that records what it is delivered and a
// dozen spam zombies, one in each partition.
type scaleOut struct {
	t                *testing.T
	services         scaleOutServices
	db, flowsTopic   string
	alertsTopic      string
	detectorGroup    string
	sinkGroup        string
	conn             clickhouse.Conn // the test's own reads
	hook             *httptest.Server
	hookMu           sync.Mutex
	delivered        map[string]int // id/state/last_seen → deliveries
	sinks, detectors []*process
	consoles         []string // base URLs
	ports            []int    // the collectors' NetFlow ports
	zombies          [][4]byte
	zombieConns      []net.Conn
	zombieFlows      int
}

const (
	scaleOutPartitions = 12
	scaleOutToken      = "scale-out-console-token-1234"
)

func newScaleOut(t *testing.T, services scaleOutServices) *scaleOut {
	if services.check == "" {
		services.check = services.clickhouse
	}
	l := &scaleOut{t: t, services: services, db: testenv.Name(t, "wsscale"),
		flowsTopic: testenv.Name(t, "flows"), alertsTopic: testenv.Name(t, "alerts"),
		detectorGroup: testenv.Name(t, "detector"), sinkGroup: testenv.Name(t, "sink"),
		delivered: map[string]int{}}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{services.check}, ReadTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if services.cluster == "" {
		// A cluster of the test's own goes with its state directory.
		t.Cleanup(func() { conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+l.db) })
	}
	l.conn = conn
	l.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a alertKey
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &a) == nil && a.ID != "" {
			l.hookMu.Lock()
			l.delivered[a.ID+"/"+a.State+"/"+a.LastSeen]++
			l.hookMu.Unlock()
		}
	}))
	t.Cleanup(l.hook.Close)
	return l
}

// config writes the configuration of one instance, extra appended.
func (l *scaleOut) config(name, extra string) string {
	path := filepath.Join(l.t.TempDir(), name+".yaml")
	s := l.services
	conf := fmt.Sprintf(`log_level: info
subscriber_networks: [100.64.0.0/10]
kafka:
  brokers: [%s]
  flows_topic: %s
  alerts_topic: %s
  partitions: %d
  replication_factor: %d
clickhouse:
  addr: %s
  database: %s
  cluster: "%s"
  read_timeout: 10s  # a frozen server is given up and retried elsewhere
detector:
  group: %s
  smtp_fanout:
    update_interval: 2s  # updates after the kill, by the new owners, must carry the ids on
    sequential:
      enabled: false
sink:
  group: %s
  webhooks:
    - name: test
      url: %s
      secret: scale-out-secret-not-for-production
%s`, strings.Join(s.brokers, ", "), l.flowsTopic, l.alertsTopic, scaleOutPartitions, max(s.replicationFactor, 1),
		s.clickhouse, l.db, s.cluster, l.detectorGroup, l.sinkGroup, l.hook.URL, extra)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// start starts one instance of stage and waits until it runs.
func (l *scaleOut) start(stage, name, extra string) *process {
	l.t.Helper()
	p := startWormsign(l.t, []string{"WORMSIGN_HTTP_TOKENS=noc=operator;token=" + scaleOutToken}, stage, "--config", l.config(name, extra))
	waitLog(l.t, p, "wormsign started")
	return p
}

// startStages starts 2 sinks, 2 consoles, 3 detectors and 3 collectors
// and opens the zombies' sockets, each zombie to one collector.
func (l *scaleOut) startStages() {
	t := l.t
	l.sinks = []*process{l.start("sink", "sink-1", ""), l.start("sink", "sink-2", "")}
	for i := range 2 {
		c := l.start("console", fmt.Sprintf("console-%d", i+1), "")
		l.consoles = append(l.consoles, "http://"+logMatch(t, c, httpAddrRe))
	}
	for i := range 3 {
		l.detectors = append(l.detectors, l.start("detector", fmt.Sprintf("detector-%d", i+1), ""))
	}
	for i := range 3 {
		port := testenv.FreeUDPPort(t)
		l.ports = append(l.ports, port)
		l.start("collector", fmt.Sprintf("collector-%d", i+1),
			fmt.Sprintf("collector:\n  netflow_listen: [\"127.0.0.1:%d\"]\n  sflow_listen: []\n", port))
	}
	time.Sleep(3 * time.Second) // the groups settle

	// Twelve zombies, spread over the partitions so that a killed
	// detector holds some of them whichever it is.
	seen := map[int]bool{}
	for i := 1; len(l.zombies) < 12 && i < 250; i++ {
		z := [4]byte{100, 127, 0, byte(i)}
		if p := bus.PartitionOf(netip.AddrFrom4(z).As16(), scaleOutPartitions); !seen[p] {
			seen[p] = true
			l.zombies = append(l.zombies, z)
		}
	}
	for i := range l.zombies {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", l.ports[i%3]))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		l.zombieConns = append(l.zombieConns, c)
	}
}

// probe sends each zombie's round of 20 more SMTP destinations.
func (l *scaleOut) probe(round int) {
	for i, z := range l.zombies {
		l.zombieConns[i].Write(collectorbench.SMTPProbes(uint32(round), time.Now().UnixMilli(), z, round*20, 20))
		l.zombieFlows += 20
	}
}

// startRouters streams perCollector flows from 4 routers into each
// collector at rate flows/s; wait returns once they are sent, with how
// many were.
func (l *scaleOut) startRouters(perCollector, rate int) (wait func() int) {
	var wg sync.WaitGroup
	sent := make([]int, len(l.ports))
	for i, port := range l.ports {
		load := collectorbench.GenerateProtocols(perCollector, 4, 50_000, time.Now().UnixMilli(), collectorbench.NetFlowV9)
		s, err := collectorbench.NewSender(4, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			l.t.Fatal(err)
		}
		l.t.Cleanup(func() { s.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent[i], _ = s.Send(load, rate)
		}()
	}
	return func() int {
		wg.Wait()
		total := 0
		for _, n := range sent {
			total += n
		}
		return total
	}
}

// restartSink SIGKILLs sink i and starts it again after down.
func (l *scaleOut) restartSink(i int, down time.Duration) {
	l.sinks[i].cmd.Process.Signal(syscall.SIGKILL)
	l.t.Logf("sink %d killed", i+1)
	time.Sleep(down)
	l.sinks[i] = l.start("sink", fmt.Sprintf("sink-%d", i+1), "")
	l.t.Logf("sink %d started again", i+1)
}

// verify checks, once the routers' routerFlows are sent:
//   - every flow record on the flows topic is in ClickHouse exactly as
//     often as it holds flows, message by message (none missing, none
//     twice), and their total is the flows the routers and zombies sent;
//   - every zombie has exactly one smtp_fanout incident (one id) on the
//     alerts topic, in ClickHouse, and in each console's API;
//   - every alert on the alerts topic reached the webhook.
func (l *scaleOut) verify(routerFlows int) {
	t, db, conn := l.t, l.db, l.conn
	want := uint64(routerFlows + l.zombieFlows)

	// Every flow in ClickHouse, once.
	ctx := context.Background()
	var rows uint64
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&rows); err == nil && rows >= want {
			break
		}
		time.Sleep(time.Second)
	}
	time.Sleep(3 * time.Second) // a duplicate written late would show now
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&rows); err != nil {
		t.Fatalf("cannot count the flows: %v", err)
	}
	t.Logf("flows sent: %d by the routers through 3 collectors, %d by %d zombies; in ClickHouse: %d", routerFlows, l.zombieFlows, len(l.zombies), rows)
	if rows != want {
		t.Errorf("ClickHouse has %d flows, want the %d sent", rows, want)
	}
	k, err := bus.NewKafka(ctx, func() bus.Configuration {
		c := bus.DefaultConfiguration()
		c.Brokers, c.FlowsTopic, c.AlertsTopic, c.Partitions = l.services.brokers, l.flowsTopic, l.alertsTopic, scaleOutPartitions
		c.ReplicationFactor = max(l.services.replicationFactor, 1)
		return c
	}())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	inTopic := map[[2]uint64]uint64{} // (partition, offset) → flows
	topicHash := uint64(crc32.ChecksumIEEE([]byte(l.flowsTopic)) << 16)
	var decoded []flow.Flow
	if err := k.ReadSince(ctx, l.flowsTopic, time.Now().Add(-time.Hour), func(m bus.Message) error {
		var err error
		decoded, err = flow.DecodeBatch(decoded[:0], m.Value)
		inTopic[[2]uint64{topicHash | uint64(m.Partition), uint64(m.Offset)}] = uint64(len(decoded))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	inCH := map[[2]uint64]uint64{}
	res, err := conn.Query(ctx, "SELECT toUInt64(sink_partition), sink_offset, count() FROM "+db+".flows GROUP BY sink_partition, sink_offset")
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var p, o, n uint64
		if err := res.Scan(&p, &o, &n); err != nil {
			t.Fatal(err)
		}
		inCH[[2]uint64{p, o}] = n
	}
	res.Close()
	var missing, twice, topicFlows uint64
	for key, n := range inTopic {
		topicFlows += n
		switch got := inCH[key]; {
		case got < n:
			missing += n - got
		case got > n:
			twice += got - n
		}
	}
	t.Logf("flows topic: %d records holding %d flows; ClickHouse rows per record: %d missing, %d twice", len(inTopic), topicFlows, missing, twice)
	if missing > 0 || twice > 0 || topicFlows != want {
		t.Errorf("records in ClickHouse against the topic: %d flows missing, %d twice; the topic holds %d flows, %d were sent", missing, twice, topicFlows, want)
	}

	// One incident per zombie, on the topic, at the webhook, in
	// ClickHouse and in both consoles.
	ids := map[string]map[string]bool{} // zombie → incident ids
	var onTopic []string
	updates := 0
	if err := k.ReadSince(ctx, l.alertsTopic, time.Now().Add(-time.Hour), func(m bus.Message) error {
		var a alertKey
		if err := json.Unmarshal(m.Value, &a); err != nil {
			return err
		}
		if a.Kind == "smtp_fanout" {
			if ids[a.SubscriberIP] == nil {
				ids[a.SubscriberIP] = map[string]bool{}
			}
			ids[a.SubscriberIP][a.ID] = true
		}
		onTopic = append(onTopic, a.ID+"/"+a.State+"/"+a.LastSeen)
		if a.State == "update" {
			updates++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, z := range l.zombies {
		zs := netip.AddrFrom4(z).String()
		if n := len(ids[zs]); n != 1 {
			t.Errorf("zombie %s has %d smtp_fanout incidents on the alerts topic, want 1", zs, n)
		}
	}
	// A webhook deliverer whose group lost a member or its coordinator
	// waits for the rebalance (tens of seconds after a broker kill) and
	// then delivers from the last commit: late, not lost.
	undelivered := func() int {
		l.hookMu.Lock()
		defer l.hookMu.Unlock()
		lost := 0
		for _, a := range onTopic {
			if l.delivered[a] == 0 {
				lost++
			}
		}
		return lost
	}
	waitedFrom := time.Now()
	lost := undelivered()
	for deadline := waitedFrom.Add(webhookCatchUp); lost > 0 && time.Now().Before(deadline); lost = undelivered() {
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("alerts topic: %d alerts of %d zombies (%d updates); %d not delivered to the webhook %s after the flows were all in",
		len(onTopic), len(ids), updates, lost, time.Since(waitedFrom).Round(100*time.Millisecond))
	if updates == 0 {
		t.Error("no update after the faults: the test shows nothing of the new owners")
	}
	if lost > 0 {
		t.Errorf("%d alerts on the alerts topic never reached the webhook", lost)
	}
	var chIncidents uint64
	conn.QueryRow(ctx, "SELECT uniqExact(id) FROM "+db+".alerts WHERE kind = 'smtp_fanout'").Scan(&chIncidents)
	if chIncidents != uint64(len(l.zombies)) {
		t.Errorf("ClickHouse has %d smtp_fanout incidents, want %d (one per zombie)", chIncidents, len(l.zombies))
	}
	for i, base := range l.consoles {
		var list struct {
			Incidents []struct {
				ID           string `json:"id"`
				SubscriberIP string `json:"subscriber_ip"`
			} `json:"incidents"`
		}
		req, _ := http.NewRequest("GET", base+"/api/v1/incidents?state=any&kind=smtp_fanout&limit=100", nil)
		req.Header.Set("Authorization", "Bearer "+scaleOutToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&list)
		resp.Body.Close()
		shown := map[string]bool{}
		for _, inc := range list.Incidents {
			shown[inc.SubscriberIP] = true
		}
		if len(list.Incidents) != len(l.zombies) || len(shown) != len(l.zombies) {
			t.Errorf("console %d shows %d smtp_fanout incidents of %d subscribers, want one for each of the %d zombies", i+1, len(list.Incidents), len(shown), len(l.zombies))
		}
	}
}

// webhookCatchUp bounds the wait, once every flow is in ClickHouse, for
// the last alerts at the webhook.
const webhookCatchUp = 2 * time.Minute

// alertKey is what the test reads of an alert's JSON.
type alertKey struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	State        string `json:"state"`
	SubscriberIP string `json:"subscriber_ip"`
	LastSeen     string `json:"last_seen"`
}
