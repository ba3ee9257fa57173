package clickhousedb

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestClusterMigrate migrates a database on the private 18.16 cluster
// (2 shards x 2 replicas) from two instances at once, through different
// servers, then once more: every server has every table, the local
// tables are replicated and the plain names Distributed, and a view
// fills the rollup of each shard.
func TestClusterMigrate(t *testing.T) {
	cluster := testenv.StartClickHouseCluster(t)
	ctx := context.Background()
	cfg := DefaultConfiguration()
	cfg.Database = testenv.Name(t, "wsc")
	cfg.Cluster = cluster.Name
	open := func(n int) *DB {
		c := cfg
		c.Addr = cluster.Addr(n)
		db, err := Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	first, second := open(1), open(4)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, db := range []*DB{first, second} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.Migrate(ctx, slog.New(slog.DiscardHandler))
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("concurrent migrations: %v, %v", errs[0], errs[1])
	}
	t.Logf("two concurrent migrations of %s on the cluster: %s", cfg.Database, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := first.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("third migrate: %v", err)
	}
	t.Logf("a migration with nothing to do: %s", time.Since(start).Round(time.Millisecond))

	wantTables := map[string]string{
		"flows": "Distributed", "flows_local": "ReplicatedMergeTree",
		"flows_1m": "Distributed", "flows_1m_local": "ReplicatedSummingMergeTree", "flows_1m_mv": "MaterializedView",
		"alerts": "Distributed", "alerts_local": "ReplicatedReplacingMergeTree",
		"sink_ledger": "Distributed", "sink_ledger_local": "ReplicatedMergeTree",
		"flows_ledger_mv": "MaterializedView", "alerts_ledger_mv": "MaterializedView",
		"incident_actions": "Distributed", "incident_actions_local": "ReplicatedMergeTree",
		"replays": "Distributed", "replays_local": "ReplicatedMergeTree",
		"containment_actions": "Distributed", "containment_actions_local": "ReplicatedReplacingMergeTree",
		"subscriber_bindings": "Distributed", "subscriber_bindings_local": "ReplicatedReplacingMergeTree",
		"subscriber_bindings_by_customer": "Distributed", "subscriber_bindings_by_customer_local": "ReplicatedReplacingMergeTree",
		"subscriber_bindings_by_customer_mv": "MaterializedView",
		"cases":                              "Distributed", "cases_local": "ReplicatedReplacingMergeTree",
		"case_events": "Distributed", "case_events_local": "ReplicatedReplacingMergeTree",
		"schema_migrations": "ReplicatedMergeTree",
	}
	for n := 1; n <= 4; n++ {
		db := open(n)
		got := map[string]string{}
		rows, err := db.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ?", cfg.Database)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var name, engine string
			if err := rows.Scan(&name, &engine); err != nil {
				t.Fatal(err)
			}
			got[name] = engine
		}
		rows.Close()
		if diff := cmp.Diff(wantTables, got); diff != "" {
			t.Errorf("tables on server %d (-want +got):\n%s", n, diff)
		}
		// schema_migrations is replicated to every server: the record of
		// the two instances, each migration at least once.
		var versions uint64
		if err := db.QueryRow(ctx, "SELECT uniqExact(version) FROM "+cfg.Database+".schema_migrations").Scan(&versions); err != nil || versions != 8 {
			t.Errorf("server %d: schema_migrations knows %d versions (%v), want 8", n, versions, err)
		}
	}

	// The rollup per shard: rows written into each shard's local flows
	// are summed by that shard's view, and the Distributed tables read
	// both shards.
	shards, err := first.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 2 {
		t.Fatalf("%d shards, want 2", len(shards))
	}
	for i, shard := range shards {
		defer shard.Close()
		batch, err := shard.PrepareBatch(ctx, "INSERT INTO "+shard.Local("flows")+" (date, time_end, subscriber_ip, sampling_rate, dst_addr, sink_partition, sink_offset)")
		if err != nil {
			t.Fatal(err)
		}
		end := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
		for j := 0; j <= i; j++ {
			if err := batch.Append(end, end, "203.0.113.1", uint32(1), "198.18.0.1", uint32(i), uint64(j)); err != nil {
				t.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			t.Fatal(err)
		}
	}
	// A Distributed read asks any replica of each shard, which may not
	// have fetched the newest parts yet: wait for replication.
	var flows, rollup, ledger uint64
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err := first.QueryRow(ctx, "SELECT (SELECT count() FROM "+cfg.Database+".flows), (SELECT sum(flows) FROM "+cfg.Database+".flows_1m),"+
			" (SELECT sum(rows) FROM "+cfg.Database+".sink_ledger)").Scan(&flows, &rollup, &ledger); err != nil {
			t.Fatal(err)
		}
		if flows == 3 && rollup == 3 && ledger == 3 {
			break
		}
	}
	if flows != 3 || rollup != 3 || ledger != 3 {
		t.Errorf("through the Distributed tables: %d flows, %d in the rollup, %d in the ledger; want 3 each", flows, rollup, ledger)
	}
	// Retention's partitions come from every shard, and a drop reaches
	// every shard and its replicas.
	ids, err := first.Partitions(ctx, "flows")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"20261203"}, ids); diff != "" {
		t.Errorf("partitions of flows (-want +got):\n%s", diff)
	}
	if err := first.DropPartition(ctx, "flows", "20261203"); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 4; n++ {
		db := open(n)
		var left uint64
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if err := db.QueryRow(ctx, "SELECT count() FROM "+db.Local("flows")).Scan(&left); err != nil {
				t.Fatal(err)
			}
			if left == 0 {
				break
			}
		}
		if left != 0 {
			t.Errorf("server %d: %d flows left after DROP PARTITION on the cluster", n, left)
		}
	}
	if err := first.Exec(ctx, "DROP DATABASE IF EXISTS "+cfg.Database+first.OnCluster()); err != nil {
		t.Error(err)
	}
}
