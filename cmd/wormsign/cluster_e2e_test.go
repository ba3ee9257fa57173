package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/schemas"
)

// TestClusterFaultsEndToEnd runs the stages of TestScaleOutWithFaults (3
// collectors, 3 detectors, 2 sinks, 2 consoles) on the three-broker Kafka
// cluster (topics with replication factor 3, min.insync.replicas 2) and a
// private ClickHouse 18.16 cluster of 2 shards x 2 replicas. While the
// routers stream, in turn:
//   - Kafka broker 2 is SIGKILLed and started again;
//   - ClickHouse server 3 (replica 1 of shard 2, the sinks' first choice
//     for that shard) is frozen for 30 s (SIGSTOP, then SIGCONT): its
//     sockets stay open and nothing answers;
//   - ClickHouse server 1 (replica 1 of shard 1) is SIGKILLed and started
//     again.
//
// Afterwards the checks of scaleOut.verify hold: every record on the
// flows topic in ClickHouse exactly as often as it holds flows, one
// incident per zombie on the alerts topic, in ClickHouse and in both
// consoles, every alert at the webhook.
//
// Two clusters and ten of wormsign's processes are more than two cores
// carry beside the other packages' tests: it runs alone, after them
// (testenv.ClusterFaultTest).
func TestClusterFaultsEndToEnd(t *testing.T) {
	testenv.ClusterFaultTest(t)
	kafkaCluster := testenv.StartKafkaCluster(t)
	chCluster := testenv.StartClickHouseCluster(t)
	// Server 4 is never touched: every stage enters the cluster there,
	// and the sinks reach each shard through both its replicas.
	lab := newScaleOut(t, scaleOutServices{brokers: kafkaCluster.Brokers, replicationFactor: 3,
		clickhouse: chCluster.Addr(4), cluster: chCluster.Name})
	lab.startStages()

	// Routers: 4 per collector, 5k flows/s each collector for a minute,
	// so that every fault falls in the middle of the stream.
	routers := lab.startRouters(300_000, 5_000)
	lab.probe(0) // 20 destinations each: below the threshold of 25
	time.Sleep(2 * time.Second)
	lab.probe(1) // 40: every zombie opens
	time.Sleep(2 * time.Second)

	kafkaCluster.Kill(2)
	t.Log("Kafka broker 2 killed")
	time.Sleep(5 * time.Second)
	kafkaCluster.Start()
	t.Log("Kafka broker 2 started again")
	lab.probe(2)

	start := time.Now()
	chCluster.Signal(3, syscall.SIGSTOP)
	t.Cleanup(func() { chCluster.Signal(3, syscall.SIGCONT) })
	t.Log("ClickHouse server 3 (shard 2, replica 1) frozen")
	time.Sleep(10 * time.Second)
	lab.probe(3) // growth while a shard's first replica is frozen
	time.Sleep(30*time.Second - time.Since(start))
	chCluster.Signal(3, syscall.SIGCONT)
	t.Logf("ClickHouse server 3 let go after %s", time.Since(start).Round(100*time.Millisecond))

	start = time.Now()
	chCluster.Kill(1)
	t.Log("ClickHouse server 1 (shard 1, replica 1) killed")
	lab.probe(4)
	time.Sleep(5 * time.Second)
	chCluster.Restart()
	t.Logf("ClickHouse server 1 up again after %s", time.Since(start).Round(100*time.Millisecond))
	lab.probe(5)
	routerFlows := routers()

	// A Distributed read takes one replica of each shard: wait until the
	// replicas hold the same rows, so that whichever it takes, it counts
	// every flow.
	want := uint64(routerFlows + lab.zombieFlows)
	var perServer [4]uint64
	deadline := time.Now().Add(3 * time.Minute)
	for ; time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		for n := range perServer {
			perServer[n] = localFlows(t, chCluster.Addr(n+1), lab.db)
		}
		if perServer[0]+perServer[2] >= want && perServer[0] == perServer[1] && perServer[2] == perServer[3] {
			break
		}
	}
	t.Logf("flows on each server (shard 1: 1, 2; shard 2: 3, 4): %v, %d sent", perServer, want)
	if perServer[0] != perServer[1] || perServer[2] != perServer[3] {
		t.Errorf("the replicas of a shard disagree: %v", perServer)
	}
	lab.verify(routerFlows)
	// The faults must have reached the sinks, or the test proved nothing.
	retries := 0
	for _, p := range lab.sinks {
		retries += strings.Count(p.log(), "cannot write batch, retrying")
	}
	t.Logf("the sinks retried a batch %d times", retries)
	if retries == 0 {
		t.Error("no sink ever retried a write: no fault reached them")
	}
}

// localFlows counts the rows of the flows table of one server of a
// cluster, its own shard's; a server that does not answer counts 0.
func localFlows(t *testing.T, addr, database string) uint64 {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second})
	if err != nil {
		return 0
	}
	defer conn.Close()
	var n uint64
	if err := conn.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.flows%s", database, schemas.LocalSuffix)).Scan(&n); err != nil {
		t.Logf("server %s: %v", addr, err)
		return 0
	}
	return n
}
