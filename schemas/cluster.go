package schemas

import (
	"fmt"
	"regexp"
	"strings"
)

// A cluster (clickhouse.cluster) keeps the schema of one server and adds
// what sharding and replication need, without a second set of migration
// files to keep in step:
//
//   - each table of a migration is created ON CLUSTER as <table>_local,
//     its engine made Replicated (ReplicatedMergeTree and the replicated
//     variants of Replacing and Summing), replicated within its shard by
//     the servers' {shard} and {replica} macros;
//   - beside it, <table> itself is a Distributed table over the
//     <table>_local of every shard, sharded by ShardingKeys;
//   - materialized views read and fill the local tables, so a view's rows
//     land on the shard of the rows they summarise.
//
// Readers (console, analysts, every SELECT in the code) keep naming
// <table> and read the whole cluster; the sink writes the local tables
// of each shard itself (sink/ledger.go), so that its ledger holds per
// shard. A single server keeps its plain tables and names.

// LocalSuffix names a table's shard-local part in a cluster.
const LocalSuffix = "_local"

// ShardingKeys are the sharding expressions of the Distributed tables.
// Rows that ReplacingMergeTree must collapse, or a view must summarise
// together, have to meet on one shard: flows, their rollup and alerts go
// by subscriber (the sink routes its rows with the same hash,
// sink.shardOf), the others by the first column of their sorting key.
// The ledger is written on each shard by the views of the tables it
// covers, never through its Distributed table; rand() only spreads rows
// inserted there by hand.
var ShardingKeys = map[string]string{
	"flows":                           "cityHash64(subscriber_ip)",
	"flows_1m":                        "cityHash64(subscriber_ip)",
	"alerts":                          "cityHash64(subscriber_ip)",
	"sink_ledger":                     "rand()",
	"incident_actions":                "cityHash64(incident_id)",
	"replays":                         "cityHash64(id)",
	"containment_actions":             "cityHash64(prefix)",
	"subscriber_bindings":             "cityHash64(first_addr)",
	"subscriber_bindings_by_customer": "cityHash64(first_addr)",
	"cases":                           "cityHash64(id)",
	"case_events":                     "cityHash64(case_id)",
}

var (
	createTable = regexp.MustCompile(`(?s)^(.*?)CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) \((.*)\) ENGINE = (\w*)MergeTree\(([^)]*)\)(.*)$`)
	createView  = regexp.MustCompile(`(?s)^(.*?)CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+)\.(\w+) TO (\w+)\.(\w+) AS(.*)$`)
	fromTable   = regexp.MustCompile(`\bFROM (\w+)\.(\w+)\b`)
)

// ClickHouseClusterMigrations returns the migrations as
// ClickHouseMigrations does, rewritten for the cluster named cluster
// (see above). Each CREATE TABLE gives two statements: the local
// replicated table, then its Distributed table.
func ClickHouseClusterMigrations(database string, features Features, cluster string) ([]Migration, error) {
	migrations, err := ClickHouseMigrations(database, features)
	if err != nil {
		return nil, err
	}
	for i, m := range migrations {
		var out []string
		for _, stmt := range m.Statements {
			rewritten, err := clusterStatements(stmt, cluster)
			if err != nil {
				return nil, fmt.Errorf("migration %s: %w", m.Name, err)
			}
			out = append(out, rewritten...)
		}
		migrations[i].Statements = out
	}
	return migrations, nil
}

// ReplicatedPath is the ZooKeeper path of a replicated table: one per
// shard ({shard} is the server's macro), as the ClickHouse documentation
// lays them out.
func ReplicatedPath(database, table string) string {
	return "/clickhouse/tables/{shard}/" + database + "/" + table
}

func clusterStatements(stmt, cluster string) ([]string, error) {
	if m := createTable.FindStringSubmatch(stmt); m != nil {
		comment, db, table, columns, variant, args, rest := m[1], m[2], m[3], m[4], m[5], m[6], m[7]
		key, ok := ShardingKeys[table]
		if !ok {
			return nil, fmt.Errorf("table %s has no sharding key (schemas.ShardingKeys)", table)
		}
		local := table + LocalSuffix
		// 18.16's syntax: the ZooKeeper path and the replica name come
		// first, then the engine's own arguments (e.g. the version
		// column of ReplacingMergeTree).
		engineArgs := "'" + ReplicatedPath(db, local) + "', '{replica}'"
		if strings.TrimSpace(args) != "" {
			engineArgs += ", " + args
		}
		return []string{
			comment + "CREATE TABLE IF NOT EXISTS " + db + "." + local + " ON CLUSTER " + cluster + " (" + columns +
				") ENGINE = Replicated" + variant + "MergeTree(" + engineArgs + ")" + rest,
			"CREATE TABLE IF NOT EXISTS " + db + "." + table + " ON CLUSTER " + cluster + " AS " + db + "." + local +
				" ENGINE = Distributed(" + cluster + ", " + db + ", " + local + ", " + key + ")",
		}, nil
	}
	if m := createView.FindStringSubmatch(stmt); m != nil {
		comment, db, view, targetDB, target, query := m[1], m[2], m[3], m[4], m[5], m[6]
		query = fromTable.ReplaceAllString(query, "FROM ${1}.${2}"+LocalSuffix)
		return []string{comment + "CREATE MATERIALIZED VIEW IF NOT EXISTS " + db + "." + view + " ON CLUSTER " + cluster +
			" TO " + targetDB + "." + target + LocalSuffix + " AS" + query}, nil
	}
	return nil, fmt.Errorf("no cluster form for statement %.60q", stmt)
}
