package sink

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/testenv"
)

// openTestClickHouse connects to the test server with a database of the
// test's own, dropped at cleanup.
func openTestClickHouse(t *testing.T) *ClickHouse {
	t.Helper()
	cfg := DefaultClickHouseConfiguration()
	cfg.Addr = testenv.ClickHouseAddr(t)
	cfg.Database = testenv.Name(t, "wst")
	ctx := context.Background()
	ch, err := OpenClickHouse(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ch.conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database)
		ch.Close()
	})
	return ch
}

func TestMigrateTwiceAndInsert(t *testing.T) {
	ch := openTestClickHouse(t)
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	for i := 0; i < 2; i++ {
		if err := ch.Migrate(ctx, logger); err != nil {
			t.Fatalf("migrate run %d: %v", i+1, err)
		}
	}
	var applied uint64
	if err := ch.conn.QueryRow(ctx, "SELECT count() FROM "+ch.config.Database+".schema_migrations").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Errorf("schema_migrations has %d rows after two runs, want 1", applied)
	}

	end := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rows := []FlowRow{{Subscriber: "203.0.113.10", Flow: flow.Flow{
		TimeReceivedMs: end.UnixMilli() + 500, StartMs: end.UnixMilli() - 1000, EndMs: end.UnixMilli(),
		Exporter: netip.MustParseAddr("127.0.0.1"), SrcAddr: netip.MustParseAddr("203.0.113.10"),
		DstAddr: netip.MustParseAddr("2001:db8::25"), SrcPort: 40000, DstPort: 25, Proto: 6,
		TCPFlags: flow.TCPSyn, Bytes: 60, Packets: 1, Type: flow.TypeNetFlowV9,
	}}}
	if err := ch.InsertFlows(ctx, rows); err != nil {
		t.Fatal(err)
	}
	var dst string
	var dport uint16
	var day time.Time
	if err := ch.conn.QueryRow(ctx, "SELECT dst_addr, dst_port, date FROM "+ch.config.Database+
		".flows WHERE subscriber_ip = '203.0.113.10'").Scan(&dst, &dport, &day); err != nil {
		t.Fatal(err)
	}
	if dst != "2001:db8::25" || dport != 25 || !day.Equal(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("flow row = %s %d %s, want 2001:db8::25 25 2026-11-27", dst, dport, day)
	}

	a := alert.Alert{ID: "abc", Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: "203.0.113.10",
		WindowStart: end.Add(-5 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-4 * time.Minute), LastSeen: end,
		DistinctDsts: 30, Flows: 40, Score: 1.5, Exporter: "127.0.0.1",
		Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.1"}, FailedShare: 0.25}}
	if err := ch.InsertAlerts(ctx, []alert.Alert{a}); err != nil {
		t.Fatal(err)
	}
	var kind, evidence string
	var distinct uint64
	if err := ch.conn.QueryRow(ctx, "SELECT kind, distinct_dsts, evidence FROM "+ch.config.Database+
		".alerts WHERE id = 'abc'").Scan(&kind, &distinct, &evidence); err != nil {
		t.Fatal(err)
	}
	if kind != "smtp_fanout" || distinct != 30 || evidence == "" {
		t.Errorf("alert row = %s %d %q", kind, distinct, evidence)
	}
}
