package evaluation

import (
	"context"
	"strings"
	"testing"

	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
)

// TestCTU13ReplayIntoClickHouse replays the CTU-13 capture into ClickHouse
// twice through the binary: the first run writes every flow (and so the
// per-minute rollup) and every alert it prints, the second adds nothing,
// and both print what a replay without ClickHouse prints.
func TestCTU13ReplayIntoClickHouse(t *testing.T) {
	addr := testenv.ClickHouseAddr(t)
	d := load(t)
	path, st := d.capture(t, t.TempDir())
	database := testenv.Name(t, "replay")
	ctx := context.Background()
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = addr
	db, err := clickhousedb.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+database)
		db.Close()
	})
	count := func(query string) uint64 {
		t.Helper()
		var n uint64
		if err := db.QueryRow(ctx, strings.ReplaceAll(query, "{db}", database)).Scan(&n); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return n
	}
	plain := replay(t, path)
	env := []string{"WORMSIGN_CLICKHOUSE_ADDR=" + addr, "WORMSIGN_CLICKHOUSE_DATABASE=" + database}
	for run := 1; run <= 2; run++ {
		r := replayWith(t, replayEnv(env...), path)
		if string(r.stdout) != string(plain.stdout) {
			t.Errorf("run %d into ClickHouse prints other alerts than a replay without it: %s", run, firstDifference(plain.lines, r.lines))
		}
		checkLate(t, "into ClickHouse", r)
		flows := count("SELECT count() FROM {db}.flows")
		rollup := count("SELECT sum(flows) FROM {db}.flows_1m")
		alerts := count("SELECT count() FROM {db}.alerts FINAL")
		t.Logf("after run %d: flows %d, flows_1m %d, alerts %d (%s)", run, flows, rollup, alerts, r.elapsed)
		if flows != uint64(st.Records) || rollup != uint64(st.Records) {
			t.Errorf("after run %d: %d rows in flows and %d flows in flows_1m, want the capture's %d records", run, flows, rollup, st.Records)
		}
		if alerts != uint64(len(r.lines)) {
			t.Errorf("after run %d: %d rows in alerts, want the %d alerts printed", run, alerts, len(r.lines))
		}
		if run == 2 && !strings.Contains(r.stderr, "in ClickHouse already") {
			t.Errorf("the second replay did not say it had been written already; stderr:\n%s", tail(r.stderr, 5))
		}
	}
	// What real flows take on disk, for the sizing guide (docs/capacity.md):
	// merged into one part per partition, as the server does in time.
	for _, table := range []string{"flows", "flows_1m"} {
		if err := db.Exec(ctx, "OPTIMIZE TABLE "+database+"."+table+" FINAL"); err != nil {
			t.Fatalf("optimize %s: %v", table, err)
		}
	}
	onDisk := func(table string) uint64 {
		return count("SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = '{db}' AND table = '" + table + "'")
	}
	flows := float64(st.Records)
	rollupRows := count("SELECT count() FROM {db}.flows_1m")
	t.Logf("on disk (CTU-13, %d flows, ClickHouse at %s): flows %.1f B per flow; flows_1m %d rows (subscriber-minutes), %.1f B per row, %.1f B per flow",
		st.Records, addr, float64(onDisk("flows"))/flows, rollupRows, float64(onDisk("flows_1m"))/float64(rollupRows), float64(onDisk("flows_1m"))/flows)
}
