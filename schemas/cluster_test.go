package schemas

import (
	"strings"
	"testing"
)

// Every migration has a cluster form: each table a replicated local
// table and a Distributed one, each view reading and filling local
// tables, on 18.16 and current servers alike.
func TestClusterMigrations(t *testing.T) {
	for _, features := range []Features{{}, {IPv6: true, LowCardinality: true, TTL: true, DateTime64: true}} {
		plain, err := ClickHouseMigrations("ws", features)
		if err != nil {
			t.Fatal(err)
		}
		migrations, err := ClickHouseClusterMigrations("ws", features, "wormsign")
		if err != nil {
			t.Fatal(err)
		}
		tables := 0
		for i, m := range migrations {
			for _, stmt := range m.Statements {
				if !strings.Contains(stmt, " ON CLUSTER wormsign ") {
					t.Errorf("%s: statement without ON CLUSTER: %.80q", m.Name, stmt)
				}
				switch {
				case strings.Contains(stmt, "ENGINE = Distributed(wormsign, ws, "):
					tables++
				case strings.Contains(stmt, "MATERIALIZED VIEW"):
					if strings.Count(stmt, "_local") != 2 {
						t.Errorf("%s: view not on local tables: %q", m.Name, stmt)
					}
				case strings.Contains(stmt, "ENGINE = Replicated"):
					if !strings.Contains(stmt, "MergeTree('/clickhouse/tables/{shard}/ws/") || !strings.Contains(stmt, "_local', '{replica}'") {
						t.Errorf("%s: replicated engine without its path: %q", m.Name, stmt)
					}
				default:
					t.Errorf("%s: unexpected statement %q", m.Name, stmt)
				}
			}
			// One local and one Distributed statement per plain table.
			var plainTables, plainViews int
			for _, stmt := range plain[i].Statements {
				if strings.Contains(stmt, "MATERIALIZED VIEW") {
					plainViews++
				} else {
					plainTables++
				}
			}
			if got, want := len(m.Statements), 2*plainTables+plainViews; got != want {
				t.Errorf("%s: %d statements, want %d", m.Name, got, want)
			}
		}
		if tables != len(ShardingKeys) {
			t.Errorf("%d Distributed tables, %d sharding keys: a key names no table", tables, len(ShardingKeys))
		}
	}
}

func TestClusterStatement(t *testing.T) {
	got, err := clusterStatements("-- c\nCREATE TABLE IF NOT EXISTS ws.cases (\n    id String,\n    version UInt64\n) ENGINE = ReplacingMergeTree(version)\nORDER BY id", "wormsign")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-- c\nCREATE TABLE IF NOT EXISTS ws.cases_local ON CLUSTER wormsign (\n    id String,\n    version UInt64\n) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ws/cases_local', '{replica}', version)\nORDER BY id",
		"CREATE TABLE IF NOT EXISTS ws.cases ON CLUSTER wormsign AS ws.cases_local ENGINE = Distributed(wormsign, ws, cases_local, cityHash64(id))",
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	view, err := clusterStatements("CREATE MATERIALIZED VIEW IF NOT EXISTS ws.v TO ws.t AS\nSELECT a FROM ws.src\nGROUP BY a", "wormsign")
	if err != nil {
		t.Fatal(err)
	}
	if want := "CREATE MATERIALIZED VIEW IF NOT EXISTS ws.v ON CLUSTER wormsign TO ws.t_local AS\nSELECT a FROM ws.src_local\nGROUP BY a"; view[0] != want {
		t.Errorf("got %q, want %q", view[0], want)
	}
}
