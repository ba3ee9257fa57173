package identity

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/schemas"
)

var discard = slog.New(slog.DiscardHandler)

func openTestDB(t *testing.T, addr string) *clickhousedb.DB {
	t.Helper()
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = addr
	cfg.Database = testenv.Name(t, "wsid")
	return chtest.Database(t, cfg)
}

// dec2 is a time of 2026-12-02 (UTC), the day of the analyst queries'
// example, in whole seconds: 18.16 keeps no milliseconds.
func dec2(hhmm string) int64 {
	t, err := time.Parse("2006-01-02 15:04", "2026-12-02 "+hhmm)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func utcMs(s string) int64 {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

// bindingHistory is a morning of bindings, in the order the sources recorded
// them: 203.0.113.7 from cust-a (RADIUS, interim, stop) to cust-b (a DHCP
// lease, renewed) inside cust-static's /24; 203.0.113.8 from cust-d to
// cust-e with no stop between (reassigned); a CGNAT port block whose
// inside address cust-c holds; an IPv6 prefix.
func bindingHistory() [][]Binding {
	nas := netip.MustParseAddr("192.0.2.10")
	a := Binding{Customer: "cust-a", Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: SourceRADIUS, Session: "acct-1",
		NAS: nas, NASIdentifier: "bras-1", StartMs: dec2("09:00"), ExpiresMs: dec2("09:15"), UpdatedMs: dec2("09:00")}
	aInterim := a
	aInterim.ExpiresMs, aInterim.UpdatedMs = dec2("09:45"), dec2("09:30")
	aStop := aInterim
	aStop.EndMs, aStop.EndReason, aStop.UpdatedMs = dec2("10:00"), EndStop, dec2("10:00")
	b := Binding{Customer: "cust-b", Prefix: netip.MustParsePrefix("203.0.113.7/32"), Source: SourceDHCP, Session: "01:00:11:22:33:44:55",
		NAS: netip.MustParseAddr("192.0.2.20"), StartMs: dec2("10:00"), ExpiresMs: dec2("11:00"), UpdatedMs: dec2("10:00")}
	bRenew := b
	bRenew.ExpiresMs, bRenew.UpdatedMs = dec2("11:30"), dec2("10:30")
	v6 := Binding{Customer: "cust-b", Prefix: netip.MustParsePrefix("2001:db8:1:200::/56"), Source: SourceRADIUS, Session: "acct-9",
		NAS: nas, StartMs: dec2("10:00"), UpdatedMs: dec2("10:00")}
	static := Binding{Customer: "cust-static", Prefix: netip.MustParsePrefix("203.0.113.0/24"), Source: SourceStatic,
		StartMs: utcMs("2026-11-01 00:00"), UpdatedMs: utcMs("2026-11-01 00:00")}
	c := Binding{Customer: "cust-c", Prefix: netip.MustParsePrefix("100.64.0.5/32"), Source: SourceDHCP, Session: "aa:bb:cc:00:00:05",
		StartMs: dec2("08:00"), ExpiresMs: dec2("20:00"), UpdatedMs: dec2("08:00")}
	d := Binding{Customer: "cust-d", Prefix: netip.MustParsePrefix("203.0.113.8/32"), Source: SourceRADIUS, Session: "acct-4",
		NAS: nas, StartMs: dec2("08:00"), UpdatedMs: dec2("08:00")}
	e := Binding{Customer: "cust-e", Prefix: netip.MustParsePrefix("203.0.113.8/32"), Source: SourceRADIUS, Session: "acct-5",
		NAS: nas, StartMs: dec2("09:00"), UpdatedMs: dec2("09:00")}
	nat := Binding{Prefix: netip.MustParsePrefix("198.51.100.1/32"), PortLo: 40000, PortHi: 40999, Inside: netip.MustParseAddr("100.64.0.5"),
		Source: SourceCGNAT, Session: "nat-1 create", NAS: netip.MustParseAddr("192.0.2.99"), StartMs: dec2("09:30"), UpdatedMs: dec2("09:30")}
	return [][]Binding{{static, c, d}, {a, e}, {nat, aInterim}, {aStop, b, v6}, {bRenew}}
}

var (
	testCustomers = []string{"cust-a", "cust-b", "cust-c", "cust-d", "cust-e", "cust-static", "nobody"}
	testAddresses = []string{"203.0.113.7", "203.0.113.8", "203.0.113.200", "198.51.100.1", "100.64.0.5", "2001:db8:1:2aa::1", "192.0.2.1"}
)

var equateAddrs = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

// sameAnswers waits until ClickHouse answers every history question as
// the store's table does, and reports the last difference otherwise.
func sameAnswers(t *testing.T, ch *ClickHouseBindings, table *Table) {
	t.Helper()
	ctx := context.Background()
	var diff string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		diff = ""
		for _, c := range testCustomers {
			got, err := ch.History(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(table.History(c), got, equateAddrs); d != "" {
				diff += "History(" + c + ") (-table +clickhouse):\n" + d
			}
		}
		for _, s := range testAddresses {
			got, err := ch.Address(ctx, netip.MustParseAddr(s))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(table.Address(netip.MustParseAddr(s)), got, equateAddrs); d != "" {
				diff += "Address(" + s + ") (-table +clickhouse):\n" + d
			}
		}
		if diff == "" {
			return
		}
	}
	t.Fatal(diff)
}

// The product's path: sources record through the Store, the writer reads
// the topic into ClickHouse, whose answers are the table's; a replay of
// every record adds no row; the analyst queries name the holders.
func TestBindingsWriter(t *testing.T) {
	testenv.ForEachClickHouse(t, testBindingsWriter)
}

func testBindingsWriter(t *testing.T, addr string) {
	db := openTestDB(t, addr)
	ctx := context.Background()
	cfg := DefaultConfiguration()
	b := bus.NewMemory(1024)
	w := NewBindingsWriter(cfg, b, db, discard, prometheus.NewRegistry())
	w.interval = 50 * time.Millisecond
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	store := NewStore(cfg, b, discard)
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	storeStopped := false
	t.Cleanup(func() {
		if !storeStopped {
			store.Stop()
		}
	})
	var all []Binding
	for _, step := range bindingHistory() {
		if _, err := store.Record(ctx, step...); err != nil {
			t.Fatal(err)
		}
		all = append(all, step...)
	}
	ch := NewClickHouseBindings(db)
	sameAnswers(t, ch, store.Table())
	if got := holdingCount(t, db, bindingsTable); got != 8 {
		t.Errorf("%d holdings in %s, want 8", got, bindingsTable)
	}
	if got := holdingCount(t, db, byCustomerTable); got != 7 {
		t.Errorf("%d holdings in %s, want 7 (all but the port block)", got, byCustomerTable)
	}

	// A replay of the whole topic (a consumer group reset, a restore)
	// writes every record again and changes nothing.
	written := testutil.ToFloat64(w.rows)
	p, _ := b.Producer(cfg.Topic)
	for _, x := range all {
		v, _ := x.Marshal()
		if err := p.Publish(ctx, bus.Message{Key: x.TopicKey(), Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); testutil.ToFloat64(w.rows) < written+8; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("replay: %g rows written, want at least %g", testutil.ToFloat64(w.rows), written+8)
		}
	}
	if got := holdingCount(t, db, bindingsTable); got != 8 {
		t.Errorf("after the replay %d holdings in %s, want still 8", got, bindingsTable)
	}
	if got := holdingCount(t, db, byCustomerTable); got != 7 {
		t.Errorf("after the replay %d holdings in %s, want still 7", got, byCustomerTable)
	}
	sameAnswers(t, ch, store.Table())
	store.Stop()
	storeStopped = true
	w.Stop()
	if n := testutil.ToFloat64(w.errors.WithLabelValues("insert")); n != 0 {
		t.Errorf("%g insert errors", n)
	}

	queries, err := schemas.AnalystQueries()
	if err != nil {
		t.Fatal(err)
	}
	type holder struct {
		Customer, Prefix, Source string
		Start, End               time.Time
		EndReason                string
	}
	run := func(name string, replace ...string) []holder {
		t.Helper()
		q, ok := queries[name]
		if !ok {
			t.Fatalf("no analyst query %s", name)
		}
		q = strings.NewReplacer(append([]string{"wormsign.", db.Database() + "."}, replace...)...).Replace(q)
		rows, err := db.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer rows.Close()
		var out []holder
		for rows.Next() {
			var h holder
			var session, nas, nasID, inside string
			var err error
			if name == "who_held_port_at" {
				err = rows.Scan(&h.Customer, &inside, &h.Prefix, &h.Source, &session, &h.Start, &h.End, &h.EndReason)
			} else {
				err = rows.Scan(&h.Customer, &h.Prefix, &h.Source, &session, &nas, &nasID, &h.Start, &h.End, &h.EndReason)
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			h.Start, h.End = h.Start.UTC(), h.End.UTC()
			out = append(out, h)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return out
	}
	tm := func(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
	epoch := tm(0)
	for _, tc := range []struct {
		query   string
		replace []string
		want    []holder
	}{
		// The example: cust-b's lease, which began when cust-a's session
		// stopped.
		{"who_held_address_at", nil, []holder{{"cust-b", "203.0.113.7/32", SourceDHCP, tm(dec2("10:00")), epoch, ""}}},
		{"who_held_address_at", []string{"10:04:00", "09:59:59"}, []holder{{"cust-a", "203.0.113.7/32", SourceRADIUS, tm(dec2("09:00")), tm(dec2("10:00")), EndStop}}},
		// Before the session: the static /24 around it.
		{"who_held_address_at", []string{"10:04:00", "08:30:00"}, []holder{{"cust-static", "203.0.113.0/24", SourceStatic, tm(utcMs("2026-11-01 00:00")), epoch, ""}}},
		// cust-d's session never stopped; cust-e's start ended it.
		{"who_held_address_at", []string{"203.0.113.7", "203.0.113.8"}, []holder{{"cust-e", "203.0.113.8/32", SourceRADIUS, tm(dec2("09:00")), epoch, ""}}},
		{"who_held_address_at", []string{"203.0.113.7", "203.0.113.8", "10:04:00", "08:30:00"}, []holder{{"cust-d", "203.0.113.8/32", SourceRADIUS, tm(dec2("08:00")), epoch, ""}}},
		// After cust-b's lease expired (11:30) nobody but the /24.
		{"who_held_address_at", []string{"10:04:00", "11:45:00"}, []holder{{"cust-static", "203.0.113.0/24", SourceStatic, tm(utcMs("2026-11-01 00:00")), epoch, ""}}},
		{"who_held_address_at", []string{"::ffff:203.0.113.7", "2001:db8:1:2aa::1"}, []holder{{"cust-b", "2001:db8:1:200::/56", SourceRADIUS, tm(dec2("10:00")), epoch, ""}}},
		{"who_held_address_at", []string{"203.0.113.7", "192.0.2.1"}, nil},
		// Behind the NAT: the port block's inside address, then its lease.
		{"who_held_port_at", nil, []holder{{"cust-c", "100.64.0.5/32", SourceDHCP, tm(dec2("08:00")), epoch, ""}}},
		{"who_held_port_at", []string{"40001", "41001"}, nil},
		{"who_held_port_at", []string{"10:04:00", "09:15:00"}, nil}, // before the block
	} {
		if diff := cmp.Diff(tc.want, run(tc.query, tc.replace...)); diff != "" {
			t.Errorf("%s with %q (-want +got):\n%s", tc.query, tc.replace, diff)
		}
	}
}

// holdingCount counts the holdings of a table (FINAL: one per holding).
func holdingCount(t *testing.T, db *clickhousedb.DB, name string) uint64 {
	t.Helper()
	var n uint64
	if err := db.QueryRow(context.Background(), "SELECT count() FROM "+db.Database()+"."+name+" FINAL").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// recordingBus remembers the offsets its consumers commit.
type recordingBus struct {
	bus.Bus
	mu      sync.Mutex
	commits []int64
}

func (r *recordingBus) Consumer(topic, group string) (bus.Consumer, error) {
	c, err := r.Bus.Consumer(topic, group)
	return &recordingConsumer{Consumer: c, bus: r}, err
}

func (r *recordingBus) committed() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.commits...)
}

type recordingConsumer struct {
	bus.Consumer
	bus *recordingBus
}

func (c *recordingConsumer) Commit(ctx context.Context, msgs ...bus.Message) error {
	c.bus.mu.Lock()
	for _, m := range msgs {
		c.bus.commits = append(c.bus.commits, m.Offset)
	}
	c.bus.mu.Unlock()
	return c.Consumer.Commit(ctx, msgs...)
}

// While ClickHouse refuses the INSERT (here: the database is not there
// yet) the writer retries and commits nothing; once it succeeds it
// commits the batch.
func TestBindingsWriterCommitsAfterInsert(t *testing.T) {
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = testenv.ClickHouseAddr(t)
	cfg.Database = testenv.Name(t, "wsid")
	ctx := context.Background()
	db, err := clickhousedb.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database)
		db.Close()
	})
	rb := &recordingBus{Bus: bus.NewMemory(16)}
	icfg := DefaultConfiguration()
	w := NewBindingsWriter(icfg, rb, db, discard, prometheus.NewRegistry())
	w.interval = 20 * time.Millisecond
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	store := NewStore(icfg, rb, discard)
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	defer store.Stop()
	if _, err := store.Record(ctx, bindingHistory()[0]...); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); testutil.ToFloat64(w.errors.WithLabelValues("insert")) < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the writer did not retry the failing INSERT")
		}
	}
	if c := rb.committed(); len(c) != 0 {
		t.Fatalf("committed %v before the INSERT succeeded", c)
	}
	if err := db.Migrate(ctx, discard); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); len(rb.committed()) < 3; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want offsets 0-2 once ClickHouse took them", rb.committed())
		}
	}
	if diff := cmp.Diff([]int64{0, 1, 2}, rb.committed()); diff != "" {
		t.Errorf("commits (-want +got):\n%s", diff)
	}
	if got := holdingCount(t, db, bindingsTable); got != 3 {
		t.Errorf("%d holdings written, want 3", got)
	}
}

// Stop writes what the in-process topic still holds.
func TestBindingsWriterDrainsOnStop(t *testing.T) {
	db := openTestDB(t, testenv.ClickHouseAddr(t))
	b := bus.NewMemory(16)
	cfg := DefaultConfiguration()
	w := NewBindingsWriter(cfg, b, db, discard, prometheus.NewRegistry())
	w.interval = time.Hour // only the drain writes
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	store := NewStore(cfg, b, discard)
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Record(context.Background(), bindingHistory()[0]...); err != nil {
		t.Fatal(err)
	}
	store.Stop()
	w.Stop()
	if got := holdingCount(t, db, bindingsTable); got != 3 {
		t.Errorf("%d holdings written by Stop, want 3", got)
	}
}

// On Kafka the writer commits what it wrote: a writer of the same group
// started later writes only the records that came after.
func TestBindingsWriterKafka(t *testing.T) {
	db := openTestDB(t, testenv.ClickHouseAddr(t))
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = testenv.KafkaBrokers(t)
	kcfg.FlowsTopic, kcfg.AlertsTopic = testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	kcfg.Partitions = 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cfg := DefaultConfiguration()
	cfg.Topic = testenv.Name(t, "bindings")
	store := NewStore(cfg, k, discard)
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	defer store.Stop()
	group := testenv.Name(t, "g")
	writer := func() *BindingsWriter {
		w := NewBindingsWriter(cfg, k, db, discard, prometheus.NewRegistry())
		w.group, w.interval = group, 50*time.Millisecond
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
		return w
	}
	wait := func(w *BindingsWriter, n uint64) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); holdingCount(t, db, bindingsTable) < n; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d holdings in ClickHouse, want %d; the writer wrote %g rows, %g insert and %g commit errors",
					holdingCount(t, db, bindingsTable), n, testutil.ToFloat64(w.rows),
					testutil.ToFloat64(w.errors.WithLabelValues("insert")), testutil.ToFloat64(w.errors.WithLabelValues("commit")))
			}
		}
	}
	steps := bindingHistory()
	if _, err := store.Record(ctx, steps[0]...); err != nil {
		t.Fatal(err)
	}
	w1 := writer()
	wait(w1, 3)
	w1.Stop()
	if _, err := store.Record(ctx, steps[1]...); err != nil {
		t.Fatal(err)
	}
	w2 := writer()
	wait(w2, 5)
	w2.Stop()
	if got := testutil.ToFloat64(w2.rows); got != 2 {
		t.Errorf("the second writer wrote %g rows, want 2: the first one's were committed", got)
	}
}

// Retention drops a month once every holding in it ended longer ago than
// identity.retention, keeps one with a holding that lasts, and merges
// before the TTL could separate a stop from its start.
func TestBindingsRetention(t *testing.T) {
	testenv.ForEachClickHouse(t, testBindingsRetention)
}

func testBindingsRetention(t *testing.T, addr string) {
	db := openTestDB(t, addr)
	ctx := context.Background()
	cfg := DefaultConfiguration()
	w := NewBindingsWriter(cfg, nil, db, discard, prometheus.NewRegistry())
	now := time.Now().UTC().Truncate(time.Second)
	cutoff := now.Add(-cfg.Retention)
	month := func(k int) time.Time {
		return time.Date(now.Year(), now.Month()-time.Month(k), 1, 0, 0, 0, 0, time.UTC)
	}
	day := 24 * time.Hour
	mk := func(customer, prefix string, start time.Time, end, expires time.Duration) Binding {
		b := Binding{Customer: customer, Prefix: netip.MustParsePrefix(prefix), Source: SourceRADIUS, Session: customer,
			StartMs: start.UnixMilli(), UpdatedMs: start.UnixMilli()}
		if end > 0 {
			b.EndMs, b.EndReason, b.UpdatedMs = start.Add(end).UnixMilli(), EndStop, start.Add(end).UnixMilli()
		}
		if expires > 0 {
			b.ExpiresMs = start.Add(expires).UnixMilli()
		}
		return b
	}
	// g lasted from month 2 until half a day after the cutoff, its start
	// and its stop in two INSERTs (two parts).
	gStart := mk("g", "203.0.113.70/32", month(2).Add(day), 0, 0)
	gStop := gStart
	gStop.EndMs, gStop.EndReason, gStop.UpdatedMs = cutoff.Add(12*time.Hour).UnixMilli(), EndStop, cutoff.Add(12*time.Hour).UnixMilli()
	for _, bs := range [][]Binding{{
		mk("f", "203.0.113.10/32", month(5).Add(day), 0, day), // expired long ago
		mk("a", "203.0.113.11/32", month(4).Add(day), day, 0), // ended long ago
		mk("b", "203.0.113.12/32", month(3).Add(day), time.Hour, 0),
		mk("c", "203.0.113.13/32", month(3).Add(2*day), 0, 0), // lasts: keeps month 3
		mk("e", "203.0.113.14/32", now.Add(-time.Hour), 0, 2*time.Hour),
		gStart,
	}, {gStop}} {
		if err := insertBindings(ctx, db, bs); err != nil {
			t.Fatal(err)
		}
	}
	id := func(k int) string { return month(k).Format("200601") }
	n, err := w.applyRetention(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("dropped %d partitions, want 4 (months %s and %s of both tables)", n, id(5), id(4))
	}
	for _, tbl := range []string{bindingsTable, byCustomerTable} {
		parts, err := db.Partitions(ctx, tbl)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{id(3), id(2), now.Add(-time.Hour).Format("200601")}
		if diff := cmp.Diff(want, parts, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
			t.Errorf("partitions of %s (-want +got):\n%s", tbl, diff)
		}
	}
	if n, err := w.applyRetention(ctx, now); err != nil || n != 0 {
		t.Errorf("second run dropped %d, %v; want 0, nil", n, err)
	}
	if !db.Features().TTL {
		return
	}
	// g's start and stop were merged before the TTL could delete the
	// stop alone.
	var rows uint64
	if err := db.QueryRow(ctx, "SELECT count() FROM "+db.Database()+"."+bindingsTable+" WHERE customer = 'g'").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("g has %d rows, want 1 (merged)", rows)
	}
	if err := w.applyTTL(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{bindingsTable, byCustomerTable} {
		engine := testenv.QueryStrings(t, db, "SELECT engine_full FROM system.tables WHERE database = '"+db.Database()+"' AND name = '"+tbl+"'")
		if len(engine) != 1 || !strings.Contains(engine[0], "TTL "+ttlExpr(cfg.Retention)) {
			t.Errorf("%s on %s: %q, want TTL %s", tbl, db.Version(), engine, ttlExpr(cfg.Retention))
		}
	}
	mutations := "SELECT count() FROM system.mutations WHERE database = '" + db.Database() + "'"
	var before, after uint64
	db.QueryRow(ctx, mutations).Scan(&before)
	if err := w.applyTTL(ctx); err != nil {
		t.Fatal(err)
	}
	db.QueryRow(ctx, mutations).Scan(&after)
	if after != before {
		t.Errorf("second applyTTL made %d mutations, want none", after-before)
	}
}

func TestAddrRange(t *testing.T) {
	for _, tc := range []struct{ prefix, first, last string }{
		{"203.0.113.7/32", "::ffff:203.0.113.7", "::ffff:203.0.113.7"},
		{"203.0.113.0/24", "::ffff:203.0.113.0", "::ffff:203.0.113.255"},
		{"2001:db8:1:200::/56", "2001:db8:1:200::", "2001:db8:1:2ff:ffff:ffff:ffff:ffff"},
		{"2001:db8::1/128", "2001:db8::1", "2001:db8::1"},
	} {
		first, last := addrRange(netip.MustParsePrefix(tc.prefix))
		if f, l := netip.AddrFrom16(first).String(), netip.AddrFrom16(last).String(); f != tc.first || l != tc.last {
			t.Errorf("addrRange(%s) = %s, %s; want %s, %s", tc.prefix, f, l, tc.first, tc.last)
		}
	}
}
