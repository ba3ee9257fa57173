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
// killed and started again. Afterwards:
//   - every flow record on the flows topic is in ClickHouse exactly as
//     often as it holds flows, message by message (none missing, none
//     twice), and their total is the flows the routers sent;
//   - every zombie has exactly one smtp_fanout incident (one id) on the
//     alerts topic, in ClickHouse, and in each console's API;
//   - every alert on the alerts topic reached the webhook.
func TestScaleOutWithFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nine processes")
	}
	brokers := testenv.KafkaBrokers(t)
	chAddr := testenv.ClickHouseAddr(t)
	db := testenv.Name(t, "wsscale")
	flowsTopic, alertsTopic := testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	const partitions, token = 12, "scale-out-console-token-1234"
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db) })

	var hookMu sync.Mutex
	delivered := map[string]int{} // id/state/last_seen → deliveries
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a alertKey
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &a) == nil && a.ID != "" {
			hookMu.Lock()
			delivered[a.ID+"/"+a.State+"/"+a.LastSeen]++
			hookMu.Unlock()
		}
	}))
	defer hook.Close()

	// One group per stage, shared by its instances.
	detectorGroup, sinkGroup := testenv.Name(t, "detector"), testenv.Name(t, "sink")
	config := func(name, extra string) string {
		path := filepath.Join(t.TempDir(), name+".yaml")
		conf := fmt.Sprintf(`log_level: info
subscriber_networks: [100.64.0.0/10]
kafka:
  brokers: [%s]
  flows_topic: %s
  alerts_topic: %s
  partitions: %d
clickhouse:
  addr: %s
  database: %s
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
%s`, strings.Join(brokers, ", "), flowsTopic, alertsTopic, partitions, chAddr, db,
			detectorGroup, sinkGroup, hook.URL, extra)
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	env := []string{"WORMSIGN_HTTP_TOKENS=noc=operator;token=" + token}
	start := func(stage, name, extra string) *process {
		p := startWormsign(t, env, stage, "--config", config(name, extra))
		waitLog(t, p, "wormsign started")
		return p
	}
	sinks := []*process{start("sink", "sink-1", ""), start("sink", "sink-2", "")}
	var consoles []string
	for i := range 2 {
		c := start("console", fmt.Sprintf("console-%d", i+1), "")
		consoles = append(consoles, "http://"+logMatch(t, c, httpAddrRe))
	}
	var detectors []*process
	for i := range 3 {
		detectors = append(detectors, start("detector", fmt.Sprintf("detector-%d", i+1), ""))
	}
	var ports []int
	for i := range 3 {
		port := testenv.FreeUDPPort(t)
		ports = append(ports, port)
		start("collector", fmt.Sprintf("collector-%d", i+1),
			fmt.Sprintf("collector:\n  netflow_listen: [\"127.0.0.1:%d\"]\n  sflow_listen: []\n", port))
	}
	time.Sleep(3 * time.Second) // the groups settle

	// Twelve zombies, spread over the partitions so that the killed
	// detector holds some of them whichever it is.
	var zombies [][4]byte
	seen := map[int]bool{}
	for i := 1; len(zombies) < 12 && i < 250; i++ {
		z := [4]byte{100, 127, 0, byte(i)}
		if p := bus.PartitionOf(netip.AddrFrom4(z).As16(), partitions); !seen[p] {
			seen[p] = true
			zombies = append(zombies, z)
		}
	}
	zombieConns := make([]net.Conn, len(zombies))
	for i := range zombies {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", ports[i%3]))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		zombieConns[i] = c
	}
	zombieFlows := 0
	probe := func(round int) {
		for i, z := range zombies {
			zombieConns[i].Write(collectorbench.SMTPProbes(uint32(round), time.Now().UnixMilli(), z, round*20, 20))
			zombieFlows += 20
		}
	}

	// Routers: 4 per collector, 20k flows/s each collector, 10 s.
	const perCollector, rate = 200_000, 20_000
	var wg sync.WaitGroup
	sent := make([]int, 3)
	for i, port := range ports {
		load := collectorbench.GenerateProtocols(perCollector, 4, 50_000, time.Now().UnixMilli(), collectorbench.NetFlowV9)
		s, err := collectorbench.NewSender(4, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent[i], _ = s.Send(load, rate)
		}()
	}
	probe(0) // 20 destinations each: below the threshold of 25
	time.Sleep(2 * time.Second)
	probe(1) // 40: every zombie opens
	time.Sleep(2 * time.Second)
	killed := detectors[1]
	killed.cmd.Process.Signal(syscall.SIGKILL)
	t.Log("detector 2 killed for good")
	time.Sleep(1 * time.Second)
	probe(2) // growth after the kill, seen by the new owners
	sinks[0].cmd.Process.Signal(syscall.SIGKILL)
	t.Log("sink 1 killed")
	time.Sleep(3 * time.Second)
	sinks[0] = start("sink", "sink-1", "")
	t.Log("sink 1 started again")
	probe(3)
	wg.Wait()
	routerFlows := sent[0] + sent[1] + sent[2]
	want := uint64(routerFlows + zombieFlows)

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
	conn.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&rows)
	t.Logf("flows sent: %d by the routers through 3 collectors, %d by %d zombies; in ClickHouse: %d", routerFlows, zombieFlows, len(zombies), rows)
	if rows != want {
		t.Errorf("ClickHouse has %d flows, want the %d sent", rows, want)
	}
	k, err := bus.NewKafka(ctx, func() bus.Configuration {
		c := bus.DefaultConfiguration()
		c.Brokers, c.FlowsTopic, c.AlertsTopic, c.Partitions = brokers, flowsTopic, alertsTopic, partitions
		return c
	}())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	inTopic := map[[2]uint64]uint64{} // (partition, offset) → flows
	topicHash := uint64(crc32.ChecksumIEEE([]byte(flowsTopic)) << 16)
	var decoded []flow.Flow
	if err := k.ReadSince(ctx, flowsTopic, time.Now().Add(-time.Hour), func(m bus.Message) error {
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
	if err := k.ReadSince(ctx, alertsTopic, time.Now().Add(-time.Hour), func(m bus.Message) error {
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
	for _, z := range zombies {
		zs := netip.AddrFrom4(z).String()
		if n := len(ids[zs]); n != 1 {
			t.Errorf("zombie %s has %d smtp_fanout incidents on the alerts topic, want 1", zs, n)
		}
	}
	time.Sleep(2 * time.Second) // the last webhook deliveries
	hookMu.Lock()
	lost := 0
	for _, a := range onTopic {
		if delivered[a] == 0 {
			lost++
		}
	}
	hookMu.Unlock()
	t.Logf("alerts topic: %d alerts of %d zombies (%d updates); %d not delivered to the webhook", len(onTopic), len(ids), updates, lost)
	if updates == 0 {
		t.Error("no update after the kill: the test shows nothing of the new owners")
	}
	if lost > 0 {
		t.Errorf("%d alerts on the alerts topic never reached the webhook", lost)
	}
	var chIncidents uint64
	conn.QueryRow(ctx, "SELECT uniqExact(id) FROM "+db+".alerts WHERE kind = 'smtp_fanout'").Scan(&chIncidents)
	if chIncidents != uint64(len(zombies)) {
		t.Errorf("ClickHouse has %d smtp_fanout incidents, want %d (one per zombie)", chIncidents, len(zombies))
	}
	for i, base := range consoles {
		var list struct {
			Incidents []struct {
				ID           string `json:"id"`
				SubscriberIP string `json:"subscriber_ip"`
			} `json:"incidents"`
		}
		req, _ := http.NewRequest("GET", base+"/api/v1/incidents?state=any&kind=smtp_fanout&limit=100", nil)
		req.Header.Set("Authorization", "Bearer "+token)
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
		if len(list.Incidents) != len(zombies) || len(shown) != len(zombies) {
			t.Errorf("console %d shows %d smtp_fanout incidents of %d subscribers, want one for each of the %d zombies", i+1, len(list.Incidents), len(shown), len(zombies))
		}
	}
}

// alertKey is what the test reads of an alert's JSON.
type alertKey struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	State        string `json:"state"`
	SubscriberIP string `json:"subscriber_ip"`
	LastSeen     string `json:"last_seen"`
}
