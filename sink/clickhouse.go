package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/schemas"
)

// ClickHouse writes flows and alerts over the native protocol.
type ClickHouse struct {
	config   ClickHouseConfiguration
	conn     driver.Conn
	version  string
	features schemas.Features

	// ipv6 tells whether the address columns of flows are IPv6 (else
	// String). It is read from the table, not guessed from the version,
	// so that a database migrated by another release is written right.
	typesOnce sync.Mutex
	typesRead bool
	ipv6      bool
}

// OpenClickHouse connects and checks that the server answers.
func OpenClickHouse(ctx context.Context, config ClickHouseConfiguration) (*ClickHouse, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{config.Addr},
		Auth:         clickhouse.Auth{Database: "default", Username: config.Username, Password: config.Password},
		DialTimeout:  config.DialTimeout,
		ReadTimeout:  config.ReadTimeout,
		MaxOpenConns: 16,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open ClickHouse at %s (clickhouse.addr): %w", config.Addr, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, config.DialTimeout)
	defer cancel()
	if err := conn.Ping(pingCtx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot reach ClickHouse at %s (clickhouse.addr): %w", config.Addr, err)
	}
	c := &ClickHouse{config: config, conn: conn}
	if err := conn.QueryRow(pingCtx, "SELECT version()").Scan(&c.version); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot read ClickHouse version: %w", err)
	}
	if c.features, err = schemas.FeaturesOf(c.version); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close releases the connections.
func (c *ClickHouse) Close() error { return c.conn.Close() }

// Ping checks that the server answers.
func (c *ClickHouse) Ping(ctx context.Context) error { return c.conn.Ping(ctx) }

// Version is the server's version() text.
func (c *ClickHouse) Version() string { return c.version }

// Migrate creates the database and applies the migrations not yet recorded
// in its schema_migrations table. Running it again changes nothing. The
// column types follow the server's version (schemas.Features).
func (c *ClickHouse) Migrate(ctx context.Context, logger *slog.Logger) error {
	db := c.config.Database
	if err := c.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return fmt.Errorf("cannot create database %s: %w", db, err)
	}
	if err := c.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+db+`.schema_migrations (
		version UInt32, name String, applied_at DateTime
	) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return fmt.Errorf("cannot create migrations table: %w", err)
	}
	applied := map[uint32]bool{}
	rows, err := c.conn.Query(ctx, "SELECT version FROM "+db+".schema_migrations")
	if err != nil {
		return fmt.Errorf("cannot read applied migrations: %w", err)
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("cannot read applied migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	migrations, err := schemas.ClickHouseMigrations(db, c.features)
	if err != nil {
		return fmt.Errorf("cannot load migrations: %w", err)
	}
	for _, m := range migrations {
		if applied[uint32(m.Version)] {
			continue
		}
		// Every statement is IF NOT EXISTS: a migration interrupted half
		// way is simply applied again.
		for _, stmt := range m.Statements {
			if err := c.conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s failed: %w", m.Name, err)
			}
		}
		if err := c.recordMigration(ctx, m); err != nil {
			return fmt.Errorf("cannot record migration %s: %w", m.Name, err)
		}
		logger.Info("applied clickhouse migration", "name", m.Name, "database", db, "server", c.version)
	}
	return nil
}

// recordMigration inserts through a batch: ClickHouse 18.16 does not answer
// an INSERT with bound VALUES over the native protocol.
func (c *ClickHouse) recordMigration(ctx context.Context, m schemas.Migration) error {
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	defer batch.Abort()
	if err := batch.Append(uint32(m.Version), m.Name, time.Now().UTC()); err != nil {
		return err
	}
	return batch.Send()
}

// readTypes learns whether flows stores addresses as IPv6 or String.
func (c *ClickHouse) readTypes(ctx context.Context) error {
	c.typesOnce.Lock()
	defer c.typesOnce.Unlock()
	if c.typesRead {
		return nil
	}
	var typ string
	err := c.conn.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = ? AND table = 'flows' AND name = 'dst_addr'",
		c.config.Database).Scan(&typ)
	if err != nil {
		return fmt.Errorf("cannot read the type of flows.dst_addr (was the database migrated?): %w", err)
	}
	c.ipv6 = typ == "IPv6"
	c.typesRead = true
	return nil
}

// Column lists are spelled out: ClickHouse 18.16 needs named INSERT columns
// over the native protocol.
const flowColumns = "date, time_received, time_start, time_end, subscriber_ip, exporter, observation_domain, " +
	"sampling_rate, src_addr, dst_addr, src_port, dst_port, proto, tcp_flags, bytes, packets, in_if, out_if, flow_type, " +
	"sink_partition, sink_offset"

const alertColumns = "date, id, kind, state, subscriber_ip, subscriber_id, window_start, window_end, " +
	"first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence, sink_partition, sink_offset"

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func day(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }

// FlowRow is a flow with the subscriber it is keyed by and the bus
// coordinates of the message it came in (recorded in the ledger).
type FlowRow struct {
	Subscriber string
	Flow       flow.Flow
	Partition  uint32
	Offset     uint64
}

// flowBlock holds one INSERT column by column: appending whole columns
// spares clickhouse-go a reflection step per value.
type flowBlock struct {
	date, received, start, end []time.Time
	subscriber                 []string
	exporter, src, dst         []netip.Addr
	exporterS, srcS, dstS      []string
	obsDomain, sampling        []uint32
	srcPort, dstPort           []uint16
	proto, flags, typ          []uint8
	bytes, packets             []uint64
	inIf, outIf, partition     []uint32
	offset                     []uint64
}

// flowBlocks recycles blocks between batches: a batch's columns are tens
// of megabytes, and allocating them afresh costs more than filling them.
var flowBlocks = sync.Pool{New: func() any { return new(flowBlock) }}

// reset empties b, keeping its memory.
func (b *flowBlock) reset() {
	b.date, b.received, b.start, b.end = b.date[:0], b.received[:0], b.start[:0], b.end[:0]
	clear(b.subscriber)
	clear(b.exporterS)
	clear(b.srcS)
	clear(b.dstS)
	b.subscriber, b.exporterS, b.srcS, b.dstS = b.subscriber[:0], b.exporterS[:0], b.srcS[:0], b.dstS[:0]
	b.exporter, b.src, b.dst = b.exporter[:0], b.src[:0], b.dst[:0]
	b.obsDomain, b.sampling, b.srcPort, b.dstPort = b.obsDomain[:0], b.sampling[:0], b.srcPort[:0], b.dstPort[:0]
	b.proto, b.flags, b.typ, b.bytes, b.packets = b.proto[:0], b.flags[:0], b.typ[:0], b.bytes[:0], b.packets[:0]
	b.inIf, b.outIf, b.partition, b.offset = b.inIf[:0], b.outIf[:0], b.partition[:0], b.offset[:0]
}

// reserve makes room for n more rows, so that appending does not copy.
func (b *flowBlock) reserve(n int, ipv6 bool) {
	grow := func(s []time.Time) []time.Time { return slices.Grow(s, n) }
	b.date, b.received, b.start, b.end = grow(b.date), grow(b.received), grow(b.start), grow(b.end)
	b.subscriber = slices.Grow(b.subscriber, n)
	if ipv6 {
		b.exporter, b.src, b.dst = slices.Grow(b.exporter, n), slices.Grow(b.src, n), slices.Grow(b.dst, n)
	} else {
		b.exporterS, b.srcS, b.dstS = slices.Grow(b.exporterS, n), slices.Grow(b.srcS, n), slices.Grow(b.dstS, n)
	}
	b.obsDomain, b.sampling = slices.Grow(b.obsDomain, n), slices.Grow(b.sampling, n)
	b.srcPort, b.dstPort = slices.Grow(b.srcPort, n), slices.Grow(b.dstPort, n)
	b.proto, b.flags, b.typ = slices.Grow(b.proto, n), slices.Grow(b.flags, n), slices.Grow(b.typ, n)
	b.bytes, b.packets = slices.Grow(b.bytes, n), slices.Grow(b.packets, n)
	b.inIf, b.outIf, b.partition = slices.Grow(b.inIf, n), slices.Grow(b.outIf, n), slices.Grow(b.partition, n)
	b.offset = slices.Grow(b.offset, n)
}

// add appends one flow.
func (b *flowBlock) add(subscriber string, f *flow.Flow, partition uint32, offset uint64, ipv6 bool) {
	end := time.UnixMilli(f.EndMs).UTC()
	b.date, b.end = append(b.date, day(end)), append(b.end, end)
	b.received = append(b.received, time.UnixMilli(f.TimeReceivedMs).UTC())
	b.start = append(b.start, time.UnixMilli(f.StartMs).UTC())
	b.subscriber = append(b.subscriber, subscriber)
	if ipv6 {
		// An absent address is stored as :: (the column's default).
		b.exporter = append(b.exporter, orUnspecified(f.Exporter))
		b.src, b.dst = append(b.src, orUnspecified(f.SrcAddr)), append(b.dst, orUnspecified(f.DstAddr))
	} else {
		b.exporterS = append(b.exporterS, addrText(f.Exporter))
		b.srcS, b.dstS = append(b.srcS, addrText(f.SrcAddr)), append(b.dstS, addrText(f.DstAddr))
	}
	b.obsDomain, b.sampling = append(b.obsDomain, f.ObservationDomain), append(b.sampling, f.SamplingRate)
	b.srcPort, b.dstPort = append(b.srcPort, f.SrcPort), append(b.dstPort, f.DstPort)
	b.proto, b.flags, b.typ = append(b.proto, f.Proto), append(b.flags, f.TCPFlags), append(b.typ, uint8(f.Type))
	b.bytes, b.packets = append(b.bytes, f.Bytes), append(b.packets, f.Packets)
	b.inIf, b.outIf = append(b.inIf, f.InIf), append(b.outIf, f.OutIf)
	b.partition, b.offset = append(b.partition, partition), append(b.offset, offset)
}

func (b *flowBlock) rows() int { return len(b.date) }

func orUnspecified(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return netip.IPv6Unspecified()
	}
	return a
}

func (b *flowBlock) columns(ipv6 bool) []any {
	var exporter, src, dst any = b.exporterS, b.srcS, b.dstS
	if ipv6 {
		exporter, src, dst = b.exporter, b.src, b.dst
	}
	return []any{b.date, b.received, b.start, b.end, b.subscriber, exporter, b.obsDomain,
		b.sampling, src, dst, b.srcPort, b.dstPort, b.proto, b.flags, b.bytes, b.packets, b.inIf, b.outIf, b.typ,
		b.partition, b.offset}
}

// ipv6Columns tells whether flows stores addresses as IPv6 (else String).
func (c *ClickHouse) ipv6Columns(ctx context.Context) (bool, error) {
	if err := c.readTypes(ctx); err != nil {
		return false, err
	}
	return c.ipv6, nil
}

// InsertFlows writes rows in one INSERT.
func (c *ClickHouse) InsertFlows(ctx context.Context, rows []FlowRow) error {
	ipv6, err := c.ipv6Columns(ctx)
	if err != nil {
		return err
	}
	var block flowBlock
	block.reserve(len(rows), ipv6)
	for i := range rows {
		block.add(rows[i].Subscriber, &rows[i].Flow, rows[i].Partition, rows[i].Offset, ipv6)
	}
	return c.insertFlowBlock(ctx, &block, ipv6)
}

// insertFlowBlock writes a block in one INSERT, hence one block on the
// server: the ledger view sees the whole batch at once.
func (c *ClickHouse) insertFlowBlock(ctx context.Context, block *flowBlock, ipv6 bool) error {
	if block.rows() == 0 {
		return nil
	}
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".flows ("+flowColumns+")")
	if err != nil {
		return fmt.Errorf("cannot prepare flows insert: %w", err)
	}
	defer batch.Abort()
	for i, col := range block.columns(ipv6) {
		if err := batch.Column(i).Append(col); err != nil {
			return fmt.Errorf("cannot append flows column %d: %w", i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert %d flows: %w", block.rows(), err)
	}
	return nil
}

// AlertRow is an alert with the bus coordinates of its message.
type AlertRow struct {
	Alert     alert.Alert
	Partition uint32
	Offset    uint64
}

// InsertAlerts writes alerts in one INSERT.
func (c *ClickHouse) InsertAlerts(ctx context.Context, alerts []AlertRow) error {
	if len(alerts) == 0 {
		return nil
	}
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".alerts ("+alertColumns+")")
	if err != nil {
		return fmt.Errorf("cannot prepare alerts insert: %w", err)
	}
	defer batch.Abort()
	for i := range alerts {
		a := &alerts[i].Alert
		evidence, err := json.Marshal(a.Evidence)
		if err != nil {
			return fmt.Errorf("cannot encode evidence of alert %s: %w", a.ID, err)
		}
		if err := batch.Append(
			day(a.WindowEnd.UTC()), a.ID, a.Kind, a.State, a.SubscriberIP, a.SubscriberID,
			a.WindowStart.UTC(), a.WindowEnd.UTC(), a.FirstSeen.UTC(), a.LastSeen.UTC(),
			a.DistinctDsts, a.Flows, a.Score, a.Exporter, string(evidence),
			alerts[i].Partition, alerts[i].Offset,
		); err != nil {
			return fmt.Errorf("cannot append alert row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert %d alerts: %w", len(alerts), err)
	}
	return nil
}

// offsetRange is a closed range of message offsets in one bus partition.
type offsetRange struct {
	Partition   uint32
	First, Last uint64
	// Rows is what the range holds, for ledger rows written by hand.
	Rows uint64
}

// written returns the ledger's ranges of source that overlap want: those
// messages are in the table already.
func (c *ClickHouse) written(ctx context.Context, source string, want []offsetRange) ([]offsetRange, error) {
	if len(want) == 0 {
		return nil, nil
	}
	rows, err := c.conn.Query(ctx, "SELECT sink_partition, first_offset, last_offset FROM "+c.config.Database+
		".sink_ledger WHERE source = '"+source+"' AND ("+rangeCondition(want, "first_offset", "last_offset")+")")
	if err != nil {
		return nil, fmt.Errorf("cannot read the sink ledger: %w", err)
	}
	defer rows.Close()
	var out []offsetRange
	for rows.Next() {
		var r offsetRange
		if err := rows.Scan(&r.Partition, &r.First, &r.Last); err != nil {
			return nil, fmt.Errorf("cannot read the sink ledger: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func rangeCondition(ranges []offsetRange, first, last string) string {
	var cond []string
	for _, r := range ranges {
		cond = append(cond, fmt.Sprintf("(sink_partition = %d AND %s >= %d AND %s <= %d)", r.Partition, last, r.First, first, r.Last))
	}
	return strings.Join(cond, " OR ")
}

// landedKey is one message's rows of one day: one part of an INSERT.
type landedKey struct {
	Partition uint32
	Offset    uint64
	Day       time.Time
}

// landed counts the flows of the given offsets in the parts of flows that
// were created (by an INSERT or a merge) within the last age, by message
// and day. Any part holding rows of an INSERT started age ago is that
// recent, and there are few such parts, so this reads little.
func (c *ClickHouse) landed(ctx context.Context, age time.Duration, ranges []offsetRange) (map[landedKey]uint64, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	// The server's own clock decides what is recent; a few seconds more
	// cover the part's modification time being rounded down.
	seconds := int(age.Seconds()) + 5
	parts, err := c.conn.Query(ctx, fmt.Sprintf("SELECT name FROM system.parts WHERE database = ? AND table = 'flows' AND active"+
		" AND modification_time >= now() - %d", seconds), c.config.Database)
	if err != nil {
		return nil, fmt.Errorf("cannot list recent parts of flows: %w", err)
	}
	var names []string
	for parts.Next() {
		var name string
		if err := parts.Scan(&name); err != nil {
			parts.Close()
			return nil, fmt.Errorf("cannot list recent parts of flows: %w", err)
		}
		names = append(names, "'"+name+"'")
	}
	parts.Close()
	out := map[landedKey]uint64{}
	if len(names) == 0 {
		return out, nil
	}
	rows, err := c.conn.Query(ctx, "SELECT sink_partition, sink_offset, date, count() FROM "+c.config.Database+".flows WHERE _part IN ("+
		strings.Join(names, ", ")+") AND ("+rangeCondition(ranges, "sink_offset", "sink_offset")+") GROUP BY sink_partition, sink_offset, date")
	if err != nil {
		return nil, fmt.Errorf("cannot look for flows of a failed INSERT: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k landedKey
		var n uint64
		if err := rows.Scan(&k.Partition, &k.Offset, &k.Day, &n); err != nil {
			return nil, fmt.Errorf("cannot look for flows of a failed INSERT: %w", err)
		}
		k.Day = day(k.Day.UTC())
		out[k] = n
	}
	return out, rows.Err()
}

// running counts the queries of a batch (query ids batch-N) that the
// server still runs.
func (c *ClickHouse) running(ctx context.Context, batch string) (uint64, error) {
	var n uint64
	if err := c.conn.QueryRow(ctx, "SELECT count() FROM system.processes WHERE startsWith(query_id, ?)", batch+"-").Scan(&n); err != nil {
		return 0, fmt.Errorf("cannot read the server's running queries: %w", err)
	}
	return n, nil
}

// recordLedger writes ledger rows for messages found written without one.
func (c *ClickHouse) recordLedger(ctx context.Context, source string, ranges []offsetRange) error {
	if len(ranges) == 0 {
		return nil
	}
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+
		".sink_ledger (source, sink_partition, first_offset, last_offset, rows, written_at)")
	if err != nil {
		return fmt.Errorf("cannot prepare ledger insert: %w", err)
	}
	defer batch.Abort()
	now := time.Now().UTC()
	for _, r := range ranges {
		if err := batch.Append(source, r.Partition, r.First, r.Last, r.Rows, now); err != nil {
			return fmt.Errorf("cannot append ledger row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot write the ledger: %w", err)
	}
	return nil
}

// retentionTables names each table's partition date and how long it keeps.
func retentionTables(r RetentionConfiguration) []struct {
	table, date string
	days        int
} {
	return []struct {
		table, date string
		days        int
	}{
		{"flows", "date", r.FlowsDays},
		{"flows_1m", "toDate(minute)", r.RollupDays},
		{"alerts", "date", r.AlertsDays},
		{"sink_ledger", "toDate(written_at)", r.LedgerDays},
	}
}

// DropExpired drops the daily partitions whose whole day is older than the
// retention of their table, and returns how many it dropped. It works on
// every version: DROP PARTITION ID needs nothing newer than 18.16.
func (c *ClickHouse) DropExpired(ctx context.Context, now time.Time, r RetentionConfiguration) (int, error) {
	dropped := 0
	for _, t := range retentionTables(r) {
		if t.days <= 0 {
			continue
		}
		cutoff, _ := strconv.Atoi(day(now).AddDate(0, 0, -t.days).Format("20060102"))
		rows, err := c.conn.Query(ctx, "SELECT DISTINCT partition_id FROM system.parts WHERE database = ? AND table = ? AND active",
			c.config.Database, t.table)
		if err != nil {
			return dropped, fmt.Errorf("cannot list partitions of %s: %w", t.table, err)
		}
		var expired []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return dropped, fmt.Errorf("cannot list partitions of %s: %w", t.table, err)
			}
			// Daily partitions are named YYYYMMDD; anything else is
			// not ours to drop.
			if n, err := strconv.Atoi(id); err == nil && len(id) == 8 && n < cutoff {
				expired = append(expired, id)
			}
		}
		rows.Close()
		sort.Strings(expired)
		for _, id := range expired {
			if err := c.conn.Exec(ctx, "ALTER TABLE "+c.config.Database+"."+t.table+" DROP PARTITION ID '"+id+"'"); err != nil {
				return dropped, fmt.Errorf("cannot drop partition %s of %s: %w", id, t.table, err)
			}
			dropped++
		}
	}
	return dropped, nil
}

// ApplyTTL sets each table's TTL to its retention where the server has TTL
// (19.6 and later), so that the server drops old rows between sink runs.
// It changes nothing where the TTL is already the configured one.
func (c *ClickHouse) ApplyTTL(ctx context.Context, r RetentionConfiguration) error {
	if !c.features.TTL {
		return nil
	}
	for _, t := range retentionTables(r) {
		if t.days <= 0 {
			continue
		}
		expr := fmt.Sprintf("%s + toIntervalDay(%d)", t.date, t.days)
		var engine string
		if err := c.conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?",
			c.config.Database, t.table).Scan(&engine); err != nil {
			return fmt.Errorf("cannot read the engine of %s: %w", t.table, err)
		}
		if strings.Contains(engine, "TTL "+expr) {
			continue
		}
		if err := c.conn.Exec(ctx, "ALTER TABLE "+c.config.Database+"."+t.table+" MODIFY TTL "+expr); err != nil {
			return fmt.Errorf("cannot set the TTL of %s: %w", t.table, err)
		}
	}
	return nil
}
