package sink

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/schemas"
)

// openTestClickHouse connects to addr with a database of the test's own,
// migrated, and dropped at cleanup.
func openTestClickHouse(t *testing.T, addr string) *clickhousedb.DB {
	t.Helper()
	return openTestClickHouseTimeout(t, addr, 20*time.Second)
}

func openTestClickHouseTimeout(t *testing.T, addr string, readTimeout time.Duration) *clickhousedb.DB {
	t.Helper()
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = addr
	cfg.Database = testenv.Name(t, "wst")
	cfg.ReadTimeout = readTimeout
	return chtest.Database(t, cfg)
}

func count(t *testing.T, ch *clickhousedb.DB, query string) uint64 {
	t.Helper()
	var n uint64
	if err := ch.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// FlowRow is a flow with the subscriber it is keyed by and the bus
// coordinates of the message it came in, for tests that write rows
// without a bus.
type FlowRow struct {
	Subscriber string
	Flow       flow.Flow
	Partition  uint32
	Offset     uint64
}

// insertFlows writes rows in one INSERT, through the block writeFlows
// fills.
func insertFlows(ctx context.Context, ch *clickhousedb.DB, rows []FlowRow) error {
	l := &ledgerWriter{db: ch}
	ipv6, err := l.ipv6Columns(ctx)
	if err != nil {
		return err
	}
	var block flowBlock
	block.reserve(len(rows), ipv6)
	for i := range rows {
		block.add(rows[i].Subscriber, &rows[i].Flow, rows[i].Partition, rows[i].Offset, ipv6)
	}
	return l.insertFlowBlock(ctx, &block, ipv6)
}

func smtpFlow(src, dst string, end time.Time, bytes uint64) flow.Flow {
	return flow.Flow{
		TimeReceivedMs: end.UnixMilli() + 500, StartMs: end.UnixMilli() - 1000, EndMs: end.UnixMilli(),
		Exporter: netip.MustParseAddr("127.0.0.1"), SrcAddr: netip.MustParseAddr(src),
		DstAddr: netip.MustParseAddr(dst), SrcPort: 40000, DstPort: 25, Proto: 6,
		TCPFlags: flow.TCPSyn, Bytes: bytes, Packets: 1, Type: flow.TypeNetFlowV9,
	}
}

func TestInsertRollupsAndAnalystQueries(t *testing.T) {
	testenv.ForEachClickHouse(t, testInsertRollupsAndAnalystQueries)
}

func testInsertRollupsAndAnalystQueries(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	ctx := context.Background()
	db := ch.Database()
	// Whole minutes ten minutes ago, so that every flow is inside "the
	// last hour" and the timeline has two known minutes.
	end := time.Now().UTC().Truncate(time.Minute).Add(-10 * time.Minute)
	var rows []FlowRow
	for i := range 30 {
		f := smtpFlow("203.0.113.10", fmt.Sprintf("198.18.0.%d", i+1), end.Add(time.Duration(i%2)*time.Minute), 60)
		rows = append(rows, FlowRow{Subscriber: "203.0.113.10", Flow: f, Partition: 0, Offset: uint64(i)})
	}
	web := smtpFlow("203.0.113.10", "2001:db8::80", end, 1500)
	web.DstPort, web.SamplingRate = 443, 10
	rows = append(rows, FlowRow{Subscriber: "203.0.113.10", Flow: web, Offset: 30})
	for i := range 3 {
		rows = append(rows, FlowRow{Subscriber: "203.0.113.20", Flow: smtpFlow("203.0.113.20", fmt.Sprintf("198.19.0.%d", i+1), end, 60), Offset: 31})
	}
	if err := insertFlows(ctx, ch, rows); err != nil {
		t.Fatal(err)
	}
	var dst string
	var dport uint16
	var day time.Time
	if err := ch.QueryRow(ctx, "SELECT toString(dst_addr), dst_port, date FROM "+db+
		".flows WHERE subscriber_ip = '203.0.113.10' AND dst_port = 443").Scan(&dst, &dport, &day); err != nil {
		t.Fatal(err)
	}
	if dst != "2001:db8::80" || dport != 443 || !day.Equal(time.Date(end.Year(), end.Month(), end.Day(), 0, 0, 0, 0, time.UTC)) {
		t.Errorf("flow row = %s %d %s, want 2001:db8::80 443 %s", dst, dport, day, end.Format(time.DateOnly))
	}

	a := alert.Alert{ID: "abc", Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: "203.0.113.10",
		WindowStart: end.Add(-5 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-4 * time.Minute), LastSeen: end,
		DistinctDsts: 30, Flows: 40, Score: 1.5, Exporter: "127.0.0.1",
		Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.1"}, FailedShare: 0.25}}
	update, resolved := a, a
	update.State, update.DistinctDsts = alert.StateUpdate, 45
	resolved.State = alert.StateResolved
	// The open event twice, as a re-delivery that bypassed the ledger
	// would write it: FINAL must still count it once.
	alerts := []alertRow{{Alert: a, Offset: 1}, {Alert: update, Offset: 2}, {Alert: resolved, Offset: 3}}
	if err := (&ledgerWriter{db: ch}).insertAlerts(ctx, alerts); err != nil {
		t.Fatal(err)
	}
	if err := (&ledgerWriter{db: ch}).insertAlerts(ctx, alerts[:1]); err != nil {
		t.Fatal(err)
	}

	queries, err := schemas.AnalystQueries()
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string) []string {
		q, ok := queries[name]
		if !ok {
			t.Fatalf("no analyst query %s", name)
		}
		q = strings.ReplaceAll(q, "wormsign.", db+".")
		rows, err := ch.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer rows.Close()
		var out []string
		cols := rows.ColumnTypes()
		for rows.Next() {
			vals := make([]any, len(cols))
			for i, c := range cols {
				vals[i] = newScanTarget(c.ScanType())
			}
			if err := rows.Scan(vals...); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var parts []string
			for _, v := range vals {
				parts = append(parts, deref(v))
			}
			out = append(out, strings.Join(parts, " "))
		}
		return out
	}
	nextEnd := end.Add(time.Minute)
	minute, next := deref(&end), deref(&nextEnd)
	cases := []struct {
		name string
		want []string
	}{
		// subscriber, smtp destinations, smtp flows, flows (the 443 flow
		// was sampled 1:10 and counts as 10)
		{"top_smtp_talkers_last_hour", []string{"203.0.113.10 30 30 40", "203.0.113.20 3 3 3"}},
		// minute, flows, bytes, packets, smtp flows, destinations, smtp destinations
		{"subscriber_timeline", []string{minute + " 25 15900 25 15 16 15", next + " 15 900 15 15 15 15"}},
		// date, kind, incidents, events, subscribers
		{"alerts_per_day", []string{end.Format(time.DateOnly) + " smtp_fanout 1 3 1"}},
	}
	for _, tc := range cases {
		if diff := cmp.Diff(tc.want, run(tc.name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestRetentionDropsOldPartitions(t *testing.T) {
	testenv.ForEachClickHouse(t, testRetentionDropsOldPartitions)
}

func testRetentionDropsOldPartitions(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	ctx := context.Background()
	db := ch.Database()
	now := time.Now().UTC()
	var rows []FlowRow
	for i, age := range []int{40, 31, 30, 1} {
		end := now.AddDate(0, 0, -age)
		rows = append(rows, FlowRow{Subscriber: "203.0.113.10", Flow: smtpFlow("203.0.113.10", "198.18.0.1", end, 60), Offset: uint64(i)})
	}
	if err := insertFlows(ctx, ch, rows); err != nil {
		t.Fatal(err)
	}
	r := RetentionConfiguration{FlowsDays: 30, RollupDays: 400}
	n, err := dropExpired(ctx, ch, now, r)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("dropped %d partitions, want 2 (40 and 31 days old)", n)
	}
	if got := count(t, ch, "SELECT count() FROM "+db+".flows"); got != 2 {
		t.Errorf("flows keeps %d rows, want 2", got)
	}
	if got := count(t, ch, "SELECT sum(flows) FROM "+db+".flows_1m"); got != 4 {
		t.Errorf("flows_1m keeps %d flows, want 4 (longer retention)", got)
	}
	if n, err := dropExpired(ctx, ch, now, r); err != nil || n != 0 {
		t.Errorf("second run dropped %d, %v; want 0, nil", n, err)
	}
	if err := applyTTL(ctx, ch, r); err != nil {
		t.Errorf("ApplyTTL on %s: %v", ch.Version(), err)
	}
	if !ch.Features().TTL {
		return
	}
	engine := testenv.QueryStrings(t, ch, "SELECT engine_full FROM system.tables WHERE database = '"+db+"' AND name = 'flows'")
	if len(engine) != 1 || !strings.Contains(engine[0], "TTL date + toIntervalDay(30)") {
		t.Errorf("flows on %s after applyTTL: %q, want TTL date + toIntervalDay(30)", ch.Version(), engine)
	}
	// Applied again, it must not rewrite the tables (MODIFY TTL
	// materializes the TTL in every part).
	mutations := "SELECT count() FROM system.mutations WHERE database = '" + db + "'"
	before := count(t, ch, mutations)
	if err := applyTTL(ctx, ch, r); err != nil {
		t.Errorf("second applyTTL on %s: %v", ch.Version(), err)
	}
	if after := count(t, ch, mutations); after != before {
		t.Errorf("second applyTTL on %s made %d mutations, want none", ch.Version(), after-before)
	}
}

// An INSERT block identical to a recent one (a retry racing the earlier
// try it repeats, which the ledger cannot see) is dropped by current
// servers, with its rollup and ledger rows; 18.16 writes it twice, which
// is what the ledger and the retry's probe are there for.
func TestIdenticalInsertDropped(t *testing.T) {
	testenv.ForEachClickHouse(t, testIdenticalInsertDropped)
}

func testIdenticalInsertDropped(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	ctx := context.Background()
	db := ch.Database()
	end := time.Now().UTC().Add(-time.Minute)
	var rows []FlowRow
	for i := range 10 {
		rows = append(rows, FlowRow{Subscriber: "203.0.113.10", Flow: smtpFlow("203.0.113.10", fmt.Sprintf("198.18.0.%d", i+1), end, 60), Offset: uint64(i)})
	}
	a := alert.Alert{ID: "abc", Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: "203.0.113.10",
		WindowStart: end.Add(-5 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-4 * time.Minute), LastSeen: end}
	for range 2 {
		if err := insertFlows(ctx, ch, rows); err != nil {
			t.Fatal(err)
		}
		if err := (&ledgerWriter{db: ch}).insertAlerts(ctx, []alertRow{{Alert: a, Offset: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	// Other messages with the same flows: a block of its own in flows,
	// and in the rollup one identical to the first batch's, which must
	// count all the same.
	again := append([]FlowRow(nil), rows...)
	for i := range again {
		again[i].Offset += 100
	}
	if err := insertFlows(ctx, ch, again); err != nil {
		t.Fatal(err)
	}
	copies := uint64(2)
	if ch.InsertDeduplication() {
		copies = 1
	}
	for _, c := range []struct {
		what, query string
		want        uint64
	}{
		{"flows", "SELECT count() FROM " + db + ".flows", copies*10 + 10},
		{"rollup flows", "SELECT sum(flows) FROM " + db + ".flows_1m", copies*10 + 10},
		{"alerts", "SELECT count() FROM " + db + ".alerts", copies},
		{"ledger rows", "SELECT sum(rows) FROM " + db + ".sink_ledger", copies*11 + 10},
	} {
		if got := count(t, ch, c.query); got != c.want {
			t.Errorf("%s on %s: %d, want %d (insert deduplication %v)", c.what, ch.Version(), got, c.want, ch.InsertDeduplication())
		}
	}
}

// flowMessage is one bus message of flows keyed by their subscriber.
func flowMessage(subscriber string, flows []flow.Flow, partition int, offset int64) bus.Message {
	return bus.Message{Key: netip.MustParseAddr(subscriber).AsSlice(), Value: flow.AppendBatch(nil, flows),
		Partition: partition, Offset: offset}
}

// TestFlowsV2Subscribers writes a flows-v2 record of three subscribers'
// groups (one of them a customer's key) beside a v1 record: each row gets
// the subscriber of its own group.
func TestFlowsV2Subscribers(t *testing.T) {
	testenv.ForEachClickHouse(t, testFlowsV2Subscribers)
}

func testFlowsV2Subscribers(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	db := ch.Database()
	c := newMemorySink(t, ch)
	end := time.Now().UTC().Add(-time.Minute)
	customer := smtpFlow("203.0.113.12", "198.18.0.1", end, 3)
	customer.Customer = "cust-12"
	var rec []byte
	rec = flow.AppendSubscriberFlows(rec, netip.MustParseAddr("203.0.113.10"),
		[]flow.Flow{smtpFlow("203.0.113.10", "198.18.0.1", end, 0), smtpFlow("203.0.113.10", "198.18.0.2", end, 1)})
	rec = flow.AppendSubscriberFlows(rec, netip.MustParseAddr("203.0.113.11"), []flow.Flow{smtpFlow("203.0.113.11", "198.18.0.1", end, 2)})
	rec = flow.AppendSubscriberFlows(rec, identity.Key("cust-12"), []flow.Flow{customer})
	msgs := []bus.Message{
		{Value: rec, Partition: 0, Offset: 0},
		flowMessage("203.0.113.13", []flow.Flow{smtpFlow("203.0.113.13", "198.18.0.1", end, 4)}, 0, 1),
	}
	if err := c.writeFlows(context.Background(), msgs, attempt{batch: newBatchID()}); err != nil {
		t.Fatal(err)
	}
	got := testenv.QueryStrings(t, ch, "SELECT concat(toString(bytes), ' ', subscriber_ip) FROM "+db+".flows ORDER BY bytes")
	want := []string{"0 203.0.113.10", "1 203.0.113.10", "2 203.0.113.11", "3 203.0.113.12", "4 203.0.113.13"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bytes and subscriber per row (-want +got):\n%s", diff)
	}
}

func TestLedgerKeepsRetriedBatchesOut(t *testing.T) {
	testenv.ForEachClickHouse(t, testLedgerKeepsRetriedBatchesOut)
}

func testLedgerKeepsRetriedBatchesOut(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	ctx := context.Background()
	db := ch.Database()
	c := newMemorySink(t, ch)
	end := time.Now().UTC().Add(-time.Minute)
	var msgs []bus.Message
	for i := range 6 {
		flows := []flow.Flow{smtpFlow("203.0.113.10", "198.18.0.1", end, uint64(2*i)), smtpFlow("203.0.113.10", "198.18.0.2", end, uint64(2*i+1))}
		msgs = append(msgs, flowMessage("203.0.113.10", flows, i%2, int64(i/2)))
	}
	// First the first four messages, then all six as after a re-delivery
	// with other batch boundaries, then all six again as a blind retry.
	for _, batch := range [][]bus.Message{msgs[:4], msgs, msgs} {
		if err := c.writeFlows(ctx, batch, attempt{batch: newBatchID()}); err != nil {
			t.Fatal(err)
		}
	}
	got := testenv.QueryStrings(t, ch, "SELECT toString(bytes) FROM "+db+".flows ORDER BY bytes")
	var want []string
	for i := range 12 {
		want = append(want, fmt.Sprint(i))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flows (-want +got):\n%s", diff)
	}
	ledger := testenv.QueryStrings(t, ch, "SELECT concat(toString(bitAnd(sink_partition, 65535)), ':', toString(last_offset - first_offset + 1), ':', toString(rows)) FROM "+
		db+".sink_ledger WHERE source = 'flows'")
	sort.Strings(ledger)
	if diff := cmp.Diff([]string{"0:1:2", "0:2:4", "1:1:2", "1:2:4"}, ledger); diff != "" {
		t.Errorf("ledger partition:messages:rows (-want +got):\n%s", diff)
	}
}

// A server that dies between the flows part of an INSERT and its ledger
// row leaves flows the ledger does not know; the retry must find them.
// Parts are per day, so a message across midnight may have landed half.
func TestRetryFindsFlowsTheLedgerMissed(t *testing.T) {
	testenv.ForEachClickHouse(t, testRetryFindsFlowsTheLedgerMissed)
}

func testRetryFindsFlowsTheLedgerMissed(t *testing.T, addr string) {
	ch := openTestClickHouse(t, addr)
	ctx := context.Background()
	db := ch.Database()
	c := newMemorySink(t, ch)
	today := time.Now().UTC().Add(-time.Minute)
	yesterday := today.AddDate(0, 0, -1)
	msg := func(offset int64, ends ...time.Time) bus.Message {
		var flows []flow.Flow
		for i, end := range ends {
			flows = append(flows, smtpFlow("203.0.113.10", "198.18.0.1", end, uint64(10*offset)+uint64(i)))
		}
		return flowMessage("203.0.113.10", flows, 0, offset)
	}
	split := msg(0, yesterday, today) // only yesterday's part landed
	whole := msg(1, today, today)     // landed entirely
	lost := msg(2, today)             // never landed
	var landed []FlowRow
	for _, m := range []bus.Message{split, whole} {
		flows, _ := flow.DecodeBatch(nil, m.Value)
		for _, f := range flows {
			if m.Offset == 0 && f.End().Day() != yesterday.Day() {
				continue
			}
			p, o := c.ledger.coordinates("flows", m)
			landed = append(landed, FlowRow{Subscriber: "203.0.113.10", Flow: f, Partition: p, Offset: o})
		}
	}
	if err := insertFlows(ctx, ch, landed); err != nil {
		t.Fatal(err)
	}
	// As if the server died before the ledger part.
	for _, d := range []time.Time{yesterday, today} {
		if err := ch.Exec(ctx, "ALTER TABLE "+db+".sink_ledger DROP PARTITION ID '"+d.Format("20060102")+"'"); err != nil {
			t.Fatal(err)
		}
	}
	batch := []bus.Message{split, whole, lost}
	if err := c.writeFlows(ctx, batch, attempt{batch: newBatchID(), n: 1, first: time.Now().Add(-5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	want := []string{"0", "1", "10", "11", "20"}
	if diff := cmp.Diff(want, testenv.QueryStrings(t, ch, "SELECT toString(bytes) FROM "+db+".flows ORDER BY bytes")); diff != "" {
		t.Errorf("flows after the retry (-want +got):\n%s", diff)
	}
	// The ledger now knows all three: a re-delivery writes nothing.
	if err := c.writeFlows(ctx, batch, attempt{batch: newBatchID()}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, testenv.QueryStrings(t, ch, "SELECT toString(bytes) FROM "+db+".flows ORDER BY bytes")); diff != "" {
		t.Errorf("flows after a re-delivery (-want +got):\n%s", diff)
	}
	if n := count(t, ch, "SELECT sum(rows) FROM "+db+".sink_ledger"); n != 4 {
		t.Errorf("ledger rows = %d, want 4 (2 found whole, 2 written)", n)
	}
}

// newMemorySink is a sink on an in-process bus (topics "f" and "a")
// writing to ch in batches of 10 messages.
func newMemorySink(t *testing.T, ch *clickhousedb.DB) *Component {
	t.Helper()
	c, err := New(Configuration{Group: "g", BatchMessages: 10, FlushInterval: time.Second}, Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: bus.NewMemory(16),
		FlowsTopic: "f", AlertsTopic: "a", ClickHouse: ch,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
