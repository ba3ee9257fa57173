package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/retry"
)

// ClickHouse keeps the history of bindings beyond what the Table holds:
// subscriber_bindings (schemas/clickhouse/007_subscriber_bindings.sql),
// one row per record of a holding, so that an analyst (or the console)
// can ask who held an address at any time within identity.retention.

// ClickHouseGroup is the consumer group the writer reads the bindings
// topic in: one group for all instances, so that each record is written
// by one of them.
const ClickHouseGroup = "wormsign-identity-clickhouse"

// The tables: bindingsTable by address then time, byCustomerTable (kept
// by a materialized view) by customer then time.
const (
	bindingsTable   = "subscriber_bindings"
	byCustomerTable = "subscriber_bindings_by_customer"
)

const bindingColumns = "prefix, first_addr, last_addr, port_lo, port_hi, inside, customer, source, session, " +
	"nas, nas_identifier, start, end, expires, updated, end_reason"

// Writer defaults.
const (
	writerMaxRows  = 10000
	writerInterval = time.Second
	writerDrain    = 30 * time.Second
	// retentionInterval is how often retention runs, as in the sink.
	retentionInterval = time.Hour
)

// BindingsWriter writes the records of the bindings topic into
// subscriber_bindings: it gathers them into batches (writerMaxRows or
// writerInterval, whichever comes first), INSERTs each until it succeeds
// (waiting longer after each failure) and commits the batch's offsets
// only after that, so that a record that reached Kafka is in ClickHouse
// eventually, whatever fails in between. Writing a record twice (a
// re-delivery after a crash between INSERT and commit, a replay) adds
// nothing: the table collapses the records of a holding. It also runs
// the table's retention.
type BindingsWriter struct {
	config Configuration
	bus    bus.Bus
	db     *clickhousedb.DB
	logger *slog.Logger

	rows   prometheus.Counter
	errors *prometheus.CounterVec // by op: insert, commit, malformed, retention

	// Set by NewBindingsWriter; tests shorten them.
	group             string
	maxRows           int
	interval          time.Duration
	drain             time.Duration
	retentionInterval time.Duration
	now               func() time.Time

	consumer    bus.Consumer
	consumerErr error
	cancelFetch context.CancelFunc
	cancelWrite context.CancelFunc
	cancelBack  context.CancelFunc
	done        chan struct{}
	stopped     bool
	background  sync.WaitGroup
}

// NewBindingsWriter prepares a writer of cfg.Topic on b into db. On the
// in-process bus it joins the topic at once, since records published
// before a consumer exists are not kept for it: create it before the
// identity sources start. It starts nothing else.
func NewBindingsWriter(cfg Configuration, b bus.Bus, db *clickhousedb.DB, logger *slog.Logger, registry prometheus.Registerer) *BindingsWriter {
	if logger == nil {
		logger = slog.Default()
	}
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	w := &BindingsWriter{
		config: cfg, bus: b, db: db, logger: logger.With("component", "identity-clickhouse"),
		rows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_clickhouse_rows_total", Help: "Binding records written to ClickHouse subscriber_bindings.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_identity_clickhouse_errors_total",
			Help: "Failures of the bindings writer, by op: insert and commit (retried), malformed (record skipped), retention.",
		}, []string{"op"}),
		group: ClickHouseGroup, maxRows: writerMaxRows, interval: writerInterval, drain: writerDrain,
		retentionInterval: retentionInterval, now: time.Now,
	}
	registry.MustRegister(w.rows, w.errors)
	if b != nil && !b.Durable() {
		w.consumer, w.consumerErr = b.Consumer(cfg.Topic, w.group)
	}
	return w
}

// Start joins the topic's consumer group (on Kafka) and writes until Stop.
func (w *BindingsWriter) Start() error {
	if w.bus == nil || w.db == nil {
		return errors.New("identity: the bindings writer needs a bus and ClickHouse")
	}
	if w.consumer == nil && w.consumerErr == nil {
		w.consumer, w.consumerErr = w.bus.Consumer(w.config.Topic, w.group)
	}
	if w.consumerErr != nil {
		return fmt.Errorf("cannot consume the bindings topic %s: %w", w.config.Topic, w.consumerErr)
	}
	fetchCtx, cancelFetch := context.WithCancel(context.Background())
	// Writes outlive the fetch by the drain timeout, so that Stop writes
	// what is in hand.
	writeCtx, cancelWrite := context.WithCancel(context.Background())
	backCtx, cancelBack := context.WithCancel(context.Background())
	w.cancelFetch, w.cancelWrite, w.cancelBack = cancelFetch, cancelWrite, cancelBack
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		w.run(fetchCtx, writeCtx)
	}()
	w.background.Add(1)
	go func() {
		defer w.background.Done()
		w.runRetention(backCtx)
	}()
	return nil
}

// Stop writes what the writer holds and stops, within the drain timeout
// (after it, what is left is re-delivered by Kafka on the next start).
// On the in-process bus it first reads what the topic still queues, so
// stop the identity sources (the Store) before the writer. A second Stop
// does nothing.
func (w *BindingsWriter) Stop() {
	if w.done == nil || w.stopped {
		return
	}
	w.stopped = true
	timer := time.AfterFunc(w.drain, func() {
		w.cancelFetch()
		w.cancelWrite()
	})
	defer timer.Stop()
	if w.bus.Durable() {
		w.cancelFetch()
	} else {
		// The queue ends in ErrClosed once read, which ends the loop.
		w.bus.CloseTopic(w.config.Topic)
	}
	<-w.done
	w.cancelFetch()
	w.cancelWrite()
	w.cancelBack()
	w.background.Wait()
	if err := w.consumer.Close(); err != nil {
		w.logger.Warn("cannot close the bindings consumer", "error", err)
	}
}

var writerFetchBackoff = retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// run gathers batches and writes them in order: one batch at a time, so
// that offsets are committed in order without more bookkeeping; bindings
// are few next to flows.
func (w *BindingsWriter) run(fetchCtx, writeCtx context.Context) {
	msgs := make(chan bus.Message, 64)
	go bus.Feed(fetchCtx, w.consumer, writerFetchBackoff, func(err error, wait time.Duration) {
		w.logger.Warn("cannot fetch bindings, retrying", "error", err, "backoff", wait)
	}, msgs)
	ticker := time.NewTicker(w.interval)
	defer ticker.Stop()
	var batch []bus.Message
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				w.flush(writeCtx, batch)
				return
			}
			batch = append(batch, m)
			if len(batch) >= w.maxRows {
				if !w.flush(writeCtx, batch) {
					return
				}
				batch = nil
			}
		case <-ticker.C:
			if len(batch) > 0 {
				if !w.flush(writeCtx, batch) {
					return
				}
				batch = nil
			}
		}
	}
}

// flush writes the records of msgs and then commits them, each retried
// until it succeeds or ctx ends; it reports whether both happened.
func (w *BindingsWriter) flush(ctx context.Context, msgs []bus.Message) bool {
	if len(msgs) == 0 {
		return true
	}
	bs := w.decode(msgs)
	backoff := retry.Backoff{Min: 100 * time.Millisecond, Max: 30 * time.Second, Jitter: true}
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		err := insertBindings(ctx, w.db, bs)
		if err != nil {
			w.errors.WithLabelValues("insert").Inc()
		}
		return err
	}, func(err error, wait time.Duration) {
		w.logger.Warn("cannot write bindings, retrying", "records", len(bs), "error", err, "backoff", wait)
	})
	if err != nil {
		// Not committed: Kafka hands the batch to the next start.
		w.logger.Error("gave up writing bindings at shutdown; Kafka re-delivers them on the next start", "records", len(bs), "error", err)
		return false
	}
	w.rows.Add(float64(len(bs)))
	backoff = retry.Backoff{Min: 100 * time.Millisecond, Max: 30 * time.Second, Jitter: true}
	err = retry.Do(ctx, backoff, func(ctx context.Context) error {
		err := w.consumer.Commit(ctx, msgs...)
		if err != nil {
			w.errors.WithLabelValues("commit").Inc()
		}
		return err
	}, func(err error, wait time.Duration) {
		w.logger.Warn("cannot commit bindings offsets, retrying", "error", err, "backoff", wait)
	})
	if err != nil {
		// Written but not committed: re-delivered, and collapsing.
		w.logger.Error("gave up committing bindings offsets at shutdown", "error", err)
		return false
	}
	return true
}

// decode reads the records of msgs, skipping tombstones (compaction's
// deletes) and counting unreadable ones. Records of one holding in one
// batch are reduced to the last, as the Table would apply them: within a
// second (18.16 keeps whole seconds) the table could not tell them apart.
func (w *BindingsWriter) decode(msgs []bus.Message) []Binding {
	out := make([]Binding, 0, len(msgs))
	at := make(map[holdingID]int, len(msgs))
	for _, m := range msgs {
		if len(m.Value) == 0 {
			continue
		}
		b, err := Unmarshal(m.Value)
		if err != nil {
			w.errors.WithLabelValues("malformed").Inc()
			w.logger.Warn("skipping unreadable binding", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		id := holdingOf(&b)
		if i, ok := at[id]; ok {
			if b.UpdatedMs >= out[i].UpdatedMs {
				out[i] = b
			}
			continue
		}
		at[id] = len(out)
		out = append(out, b)
	}
	return out
}

// holdingID is what Binding.same compares.
type holdingID struct {
	prefix          netip.Prefix
	portLo          uint16
	customer        string
	inside          netip.Addr
	session, source string
	startMs         int64
}

func holdingOf(b *Binding) holdingID {
	return holdingID{b.Prefix, b.PortLo, b.Customer, b.Inside, b.Session, b.Source, b.StartMs}
}

// insertBindings writes bs in one INSERT (a batch: 18.16 wants named
// columns and no bound VALUES over the native protocol).
func insertBindings(ctx context.Context, db *clickhousedb.DB, bs []Binding) error {
	if len(bs) == 0 {
		return nil
	}
	batch, err := db.PrepareBatch(ctx, "INSERT INTO "+db.Database()+"."+bindingsTable+" ("+bindingColumns+")")
	if err != nil {
		return fmt.Errorf("cannot prepare bindings insert: %w", err)
	}
	defer batch.Abort()
	for i := range bs {
		b := &bs[i]
		first, last := addrRange(b.Prefix)
		nas := ""
		if b.NAS.IsValid() {
			nas = b.NAS.String()
		}
		// The FixedString(16) columns take the 16 bytes (IPv4 mapped);
		// :: stands for no inside address.
		inside := b.Inside.As16()
		if !b.Inside.IsValid() {
			inside = [16]byte{}
		}
		if err := batch.Append(b.Prefix.String(), first[:], last[:], b.PortLo, b.PortHi, inside[:],
			b.Customer, b.Source, b.Session, nas, b.NASIdentifier,
			msTime(b.StartMs), msTime(b.EndMs), msTime(b.ExpiresMs), msTime(b.UpdatedMs), b.EndReason); err != nil {
			return fmt.Errorf("cannot append binding of %s: %w", b.Prefix, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert %d bindings: %w", len(bs), err)
	}
	return nil
}

// addrRange returns the first and last address of p as 16 bytes, IPv4
// mapped, the way the range columns hold them.
func addrRange(p netip.Prefix) (first, last [16]byte) {
	p = p.Masked()
	first = p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	last = first
	for i := bits; i < 128; i++ {
		last[i/8] |= 0x80 >> (i % 8)
	}
	return first, last
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// ---- Retention ----

// ttlExpr is the TTL of both tables: retention after the holding's end,
// or after its expiry while open; never for an open holding that does
// not expire. The retention is added in each branch: far-future plus
// retention would overflow DateTime. Written as the server prints it in
// engine_full (SetTTL compares them).
func ttlExpr(retention time.Duration) string {
	s := strconv.FormatInt(int64(retention/time.Second), 10)
	return "if(end > 0, toDateTime(end) + toIntervalSecond(" + s + "), if(expires > 0, toDateTime(expires) + toIntervalSecond(" + s +
		"), toDateTime('2100-01-01 00:00:00', 'UTC')))"
}

// holdingKey is the sorting key of each table: what one holding's
// records share.
var holdingKey = map[string]string{
	bindingsTable:   "first_addr, start, last_addr, port_lo, source, customer, inside, session",
	byCustomerTable: "customer, start, first_addr, last_addr, port_lo, source, inside, session",
}

func (w *BindingsWriter) runRetention(ctx context.Context) {
	if err := w.applyTTL(ctx); err != nil && ctx.Err() == nil {
		w.errors.WithLabelValues("retention").Inc()
		w.logger.Warn("cannot set the TTL of the bindings; retention still drops months", "error", err)
	}
	ticker := time.NewTicker(w.retentionInterval)
	defer ticker.Stop()
	for {
		n, err := w.applyRetention(ctx, w.now())
		if err != nil && ctx.Err() == nil {
			w.errors.WithLabelValues("retention").Inc()
			w.logger.Warn("cannot apply bindings retention", "error", err)
		} else if n > 0 {
			w.logger.Info("dropped expired months of bindings", "partitions", n)
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// applyTTL sets both tables' TTL to identity.retention where the server
// has TTL; nothing changes where it is set already.
func (w *BindingsWriter) applyTTL(ctx context.Context) error {
	for _, table := range []string{bindingsTable, byCustomerTable} {
		if _, err := w.db.SetTTL(ctx, table, ttlExpr(w.config.Retention)); err != nil {
			return err
		}
	}
	return nil
}

// applyRetention keeps both tables to identity.retention after each
// holding ended and returns how many partitions it dropped:
//
//   - On every version it drops a month (the partition of the holdings
//     that started in it) once every holding in it, by its latest
//     record, ended or expired before now - retention. An open holding
//     that never expires keeps its month.
//   - Where the server has TTL, the TTL deletes each row on its own. A
//     row is one record: should the latest record of a holding (its
//     stop) expire while an older one (its start, open and never
//     expiring) still sits in another part, the holding would come back
//     as open. Parts of a month that no longer gets many INSERTs may
//     stay unmerged for long, so a month where such a pair is due
//     within a day is merged first (OPTIMIZE ... FINAL collapses the
//     pair, then the TTL applies).
func (w *BindingsWriter) applyRetention(ctx context.Context, now time.Time) (int, error) {
	cutoff := now.Add(-w.config.Retention)
	dropped := 0
	for _, table := range []string{bindingsTable, byCustomerTable} {
		if w.db.Features().TTL {
			// Rows that ended before this have their TTL within a day.
			if err := w.mergeBeforeTTL(ctx, table, cutoff.Add(24*time.Hour)); err != nil {
				return dropped, err
			}
		}
		months, err := w.expiredMonths(ctx, table, cutoff)
		if err != nil {
			return dropped, err
		}
		for _, m := range months {
			if err := w.db.DropPartition(ctx, table, m); err != nil {
				return dropped, err
			}
			dropped++
		}
	}
	return dropped, nil
}

// expiredMonths lists the months of table whose holdings all ended
// before cutoff. Only months up to the cutoff's can qualify; whole months
// are read, since one holding that lasts keeps the month.
func (w *BindingsWriter) expiredMonths(ctx context.Context, table string, cutoff time.Time) ([]string, error) {
	month, _ := strconv.Atoi(cutoff.UTC().Format("200601"))
	rows, err := w.db.Query(ctx, "SELECT toString(toYYYYMM(start)) AS month FROM "+w.db.Database()+"."+table+" FINAL"+
		" WHERE toYYYYMM(start) <= ? GROUP BY month"+
		" HAVING max(if(end > 0, toDateTime(end), if(expires > 0, toDateTime(expires), toDateTime('2100-01-01 00:00:00', 'UTC'))))"+
		" < toDateTime(?) ORDER BY month", month, cutoff.Unix())
	if err != nil {
		return nil, fmt.Errorf("cannot find expired months of %s: %w", table, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return nil, fmt.Errorf("cannot find expired months of %s: %w", table, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot find expired months of %s: %w", table, err)
	}
	return out, nil
}

// mergeBeforeTTL merges the months of table that hold a holding with
// both an open, never-expiring record and one that ended before
// endedBefore (see applyRetention). Only those records are read: open
// holdings that never expire are few (static bindings, RADIUS sessions
// without interim updates).
func (w *BindingsWriter) mergeBeforeTTL(ctx context.Context, table string, endedBefore time.Time) error {
	name := w.db.Database() + "." + table
	rows, err := w.db.Query(ctx, "SELECT DISTINCT toString(toYYYYMM(start)) FROM "+name+
		" WHERE (end > 0 AND end < toDateTime(?)) OR (end = 0 AND expires = 0)"+
		" GROUP BY "+holdingKey[table]+
		" HAVING countIf(end > 0) > 0 AND countIf(end = 0) > 0", endedBefore.Unix())
	if err != nil {
		return fmt.Errorf("cannot find unmerged bindings of %s: %w", table, err)
	}
	var months []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			rows.Close()
			return fmt.Errorf("cannot find unmerged bindings of %s: %w", table, err)
		}
		months = append(months, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cannot find unmerged bindings of %s: %w", table, err)
	}
	for _, m := range months {
		// In a cluster the local tables of every shard merge.
		if err := w.db.Exec(ctx, "OPTIMIZE TABLE "+w.db.Local(table)+w.db.OnCluster()+" PARTITION ID '"+m+"' FINAL"); err != nil {
			return fmt.Errorf("cannot merge month %s of %s: %w", m, table, err)
		}
	}
	return nil
}

// ---- Reading ----

// ClickHouseBindings answers the Table's history questions from
// subscriber_bindings, over identity.retention rather than identity.keep.
// Its answers are the Table's: the rows are applied to a Table of the
// moment, so that a holding no record ended but a later holder's start
// did ends there (reassigned) here too.
type ClickHouseBindings struct {
	db *clickhousedb.DB
	// limit bounds the rows one question reads.
	limit int
}

// NewClickHouseBindings reads db's subscriber_bindings.
func NewClickHouseBindings(db *clickhousedb.DB) *ClickHouseBindings {
	return &ClickHouseBindings{db: db, limit: 20000}
}

const bindingSelect = "SELECT prefix, port_lo, port_hi, IPv6NumToString(inside), customer, source, session, nas, nas_identifier, " +
	"start, end, expires, updated, end_reason FROM "

// History returns every holding of customer, oldest first, as
// Table.History does.
func (c *ClickHouseBindings) History(ctx context.Context, customer string) ([]Binding, error) {
	// The customer's prefixes, then every holding of them: who came
	// after the customer on an address ends the customer's holding.
	// GLOBAL IN, as the console's: on a cluster both tables are
	// Distributed, where a plain IN over a subquery is refused.
	db := c.db.Database()
	bs, err := c.query(ctx, bindingSelect+db+"."+bindingsTable+" FINAL"+
		" WHERE (first_addr, last_addr) GLOBAL IN (SELECT first_addr, last_addr FROM "+db+"."+byCustomerTable+" WHERE customer = ?)"+
		" AND source != 'cgnat' ORDER BY start DESC LIMIT "+strconv.Itoa(c.limit), customer)
	if err != nil {
		return nil, err
	}
	return tableOf(bs).History(customer), nil
}

// Address returns every holding of addr's prefixes and the port blocks of
// addr, as Table.Address does.
func (c *ClickHouseBindings) Address(ctx context.Context, addr netip.Addr) ([]Binding, error) {
	addr = addr.Unmap()
	mapped := netip.AddrFrom16(addr.As16()).String()
	bs, err := c.query(ctx, bindingSelect+c.db.Database()+"."+bindingsTable+" FINAL"+
		" WHERE first_addr <= IPv6StringToNum(?) AND last_addr >= IPv6StringToNum(?)"+
		" ORDER BY start DESC LIMIT "+strconv.Itoa(c.limit), mapped, mapped)
	if err != nil {
		return nil, err
	}
	return tableOf(bs).Address(addr), nil
}

func (c *ClickHouseBindings) query(ctx context.Context, query string, args ...any) ([]Binding, error) {
	rows, err := c.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("cannot query %s: %w", bindingsTable, err)
	}
	defer rows.Close()
	var out []Binding
	for rows.Next() {
		var b Binding
		var prefix, inside, nas string
		var start, end, expires, updated time.Time
		if err := rows.Scan(&prefix, &b.PortLo, &b.PortHi, &inside, &b.Customer, &b.Source, &b.Session, &nas, &b.NASIdentifier,
			&start, &end, &expires, &updated, &b.EndReason); err != nil {
			return nil, fmt.Errorf("cannot read %s: %w", bindingsTable, err)
		}
		if b.Prefix, err = netip.ParsePrefix(prefix); err != nil {
			return nil, fmt.Errorf("cannot read %s: prefix %q: %w", bindingsTable, prefix, err)
		}
		if a, err := netip.ParseAddr(inside); err == nil && !a.IsUnspecified() {
			b.Inside = a.Unmap()
		}
		if a, err := netip.ParseAddr(nas); err == nil {
			b.NAS = a
		}
		b.StartMs, b.EndMs, b.ExpiresMs, b.UpdatedMs = start.UnixMilli(), end.UnixMilli(), expires.UnixMilli(), updated.UnixMilli()
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", bindingsTable, err)
	}
	return out, nil
}

// tableOf applies bs, in the order their sources wrote them, to a Table
// that keeps them all.
func tableOf(bs []Binding) *Table {
	slices.SortStableFunc(bs, func(a, b Binding) int {
		if a.UpdatedMs != b.UpdatedMs {
			return int(min(max(a.UpdatedMs-b.UpdatedMs, -1), 1))
		}
		return int(min(max(a.StartMs-b.StartMs, -1), 1))
	})
	t := NewTable(len(bs)+1, len(bs)+1)
	for _, b := range bs {
		t.Apply(b)
	}
	return t
}
