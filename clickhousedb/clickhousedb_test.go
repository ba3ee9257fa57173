package clickhousedb

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/schemas"
)

// openTest connects to the ClickHouse at addr with a database of the
// test's own, migrated, and dropped at cleanup.
func openTest(t *testing.T, addr string) *DB {
	t.Helper()
	cfg := DefaultConfiguration()
	cfg.Addr = addr
	cfg.Database = testenv.Name(t, "wsc")
	ctx := context.Background()
	db, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database)
		db.Close()
	})
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestMigrateTwice(t *testing.T) { testenv.ForEachClickHouse(t, testMigrateTwice) }

func testMigrateTwice(t *testing.T, addr string) {
	db := openTest(t, addr)
	ctx := context.Background()
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	name := db.Database()
	var n uint64
	if err := db.QueryRow(ctx, "SELECT count() FROM "+name+".schema_migrations").Scan(&n); err != nil || n != 8 {
		t.Errorf("schema_migrations has %d rows after two runs (%v), want 8", n, err)
	}
	got := testenv.QueryStrings(t, db, "SELECT name FROM system.tables WHERE database = ? ORDER BY name", name)
	want := []string{"alerts", "alerts_ledger_mv", "case_events", "cases", "containment_actions", "flows", "flows_1m", "flows_1m_mv", "flows_ledger_mv", "incident_actions", "replays", "schema_migrations", "sink_ledger",
		"subscriber_bindings", "subscriber_bindings_by_customer", "subscriber_bindings_by_customer_mv"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tables (-want +got):\n%s", diff)
	}
	// The address type follows the server's version.
	f, _ := schemas.FeaturesOf(db.Version())
	if diff := cmp.Diff(f, db.Features()); diff != "" {
		t.Errorf("features of %s (-want +got):\n%s", db.Version(), diff)
	}
	typ := testenv.QueryStrings(t, db, "SELECT type FROM system.columns WHERE database = ? AND table = 'flows' AND name = 'dst_addr'", name)
	if diff := cmp.Diff([]string{f.IPType()}, typ); diff != "" {
		t.Errorf("dst_addr type on %s (-want +got):\n%s", db.Version(), diff)
	}
	// Current servers drop INSERT blocks identical to a recent one in the
	// tables the sink writes; 18.16 cannot.
	if want := !strings.HasPrefix(db.Version(), "18."); db.InsertDeduplication() != want {
		t.Errorf("InsertDeduplication() on %s = %v, want %v", db.Version(), db.InsertDeduplication(), want)
	}
	for _, table := range deduplicatedTables {
		engine := testenv.QueryStrings(t, db, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?", name, table)
		has := len(engine) == 1 && strings.Contains(engine[0], fmt.Sprintf("non_replicated_deduplication_window = %d", DeduplicationWindow))
		if has != db.InsertDeduplication() {
			t.Errorf("%s on %s: deduplication window set = %v, want %v (%q)", table, db.Version(), has, db.InsertDeduplication(), engine)
		}
	}
	t.Logf("server %s: %+v, insert deduplication %v", db.Version(), f, db.InsertDeduplication())
}

// The query surface other components use reads and writes wormsign's
// tables on 18.16 too (batches, not bound VALUES).
func TestQuerySurface(t *testing.T) { testenv.ForEachClickHouse(t, testQuerySurface) }

func testQuerySurface(t *testing.T, addr string) {
	db := openTest(t, addr)
	ctx := context.Background()
	batch, err := db.PrepareBatch(ctx, "INSERT INTO "+db.Database()+".sink_ledger (source, sink_partition, first_offset, last_offset, rows, written_at)")
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Append("test", uint32(1), uint64(2), uint64(3), uint64(4), time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	got := testenv.QueryStrings(t, db, "SELECT concat(source, ':', toString(rows)) FROM "+db.Database()+".sink_ledger WHERE sink_partition = ?", uint32(1))
	if diff := cmp.Diff([]string{"test:4"}, got); diff != "" {
		t.Errorf("ledger rows (-want +got):\n%s", diff)
	}
	if err := db.Conn().Ping(ctx); err != nil {
		t.Error(err)
	}
	if err := db.Exec(ctx, "ALTER TABLE "+db.Database()+".sink_ledger DROP PARTITION ID '"+time.Now().UTC().Format("20060102")+"'"); err != nil {
		t.Error(err)
	}
}

// The `clickhouse:` section keeps its keys, in the file and as
// WORMSIGN_CLICKHOUSE_* in the environment.
func TestConfigurationKeys(t *testing.T) {
	type file struct {
		ClickHouse Configuration `yaml:"clickhouse"`
	}
	yaml := "clickhouse:\n  addr: ch1:9000\n  database: ws\n  username: u\n  password: p\n  dial_timeout: 3s\n  read_timeout: 30s\n"
	path := filepath.Join(t.TempDir(), "wormsign.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	want := Configuration{Addr: "ch1:9000", Database: "ws", Username: "u", Password: "p", DialTimeout: 3 * time.Second, ReadTimeout: 30 * time.Second}
	for name, load := range map[string]func(*file) error{
		"yaml": func(f *file) error { return config.Load(f, path, nil) },
		"environment": func(f *file) error {
			return config.Load(f, "", []string{"WORMSIGN_CLICKHOUSE_ADDR=ch1:9000", "WORMSIGN_CLICKHOUSE_DATABASE=ws",
				"WORMSIGN_CLICKHOUSE_USERNAME=u", "WORMSIGN_CLICKHOUSE_PASSWORD=p",
				"WORMSIGN_CLICKHOUSE_DIAL_TIMEOUT=3s", "WORMSIGN_CLICKHOUSE_READ_TIMEOUT=30s"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := file{ClickHouse: DefaultConfiguration()}
			if err := load(&got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got.ClickHouse); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if err := got.ClickHouse.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name    string
		change  func(*Configuration)
		wantErr string
	}{
		{"defaults", func(*Configuration) {}, ""},
		{"database", func(c *Configuration) { c.Database = "ws; DROP" }, "clickhouse.database"},
		{"dial timeout", func(c *Configuration) { c.DialTimeout = 0 }, "clickhouse.dial_timeout"},
		{"read timeout", func(c *Configuration) { c.ReadTimeout = -time.Second }, "clickhouse.read_timeout"},
	}
	for _, tc := range cases {
		c := DefaultConfiguration()
		tc.change(&c)
		err := c.Validate()
		if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: Validate() = %v, want an error naming %q", tc.name, err, tc.wantErr)
		}
	}
}
