package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
)

// ledgerWriter writes flows and alerts into ClickHouse so that a batch
// re-delivered by the bus or retried after an error of unknown outcome is
// not written twice (schemas/clickhouse/README.md, "No duplicates, nothing
// lost"). Every row carries the bus coordinates of its message; the
// ledger views record, with each INSERT, the offset ranges it wrote; and
// a write first drops the messages the ledger covers.
type ledgerWriter struct {
	db          *clickhousedb.DB
	flowsTopic  string
	alertsTopic string
	// offsetBase is added to bus offsets in the ledger. Kafka offsets are
	// durable and it is 0; the in-process bus numbers from 0 on every
	// start, so its offsets are moved past every earlier run's by the
	// start time in microseconds (a run cannot pass a million messages a
	// second).
	offsetBase uint64
	duplicates *prometheus.CounterVec // table
	// subscribers names a flow's subscriber (its Kafka key) as alerts do:
	// an IPv6 one as its prefix.
	subscribers network.Subscribers

	// ipv6 tells whether the address columns of flows are IPv6 (else
	// String). It is read from the table, not guessed from the version,
	// so that a database migrated by another release is written right.
	typesMu   sync.Mutex
	typesRead bool
	ipv6      bool
}

// coordinates returns what the rows of m record as their bus partition
// and offset, the ledger's key. The partition carries a hash of the topic
// name in its upper 16 bits, so that the ledger of one topic never skips
// the messages of another (kafka.flows_topic renamed) with the same
// offsets. Offsets are shifted by offsetBase.
func (l *ledgerWriter) coordinates(table string, m bus.Message) (uint32, uint64) {
	topic := l.flowsTopic
	if table == "alerts" {
		topic = l.alertsTopic
	}
	return crc32.ChecksumIEEE([]byte(topic))<<16 | uint32(m.Partition)&0xffff, l.offsetBase + uint64(m.Offset)
}

// offsetRange is a closed range of message offsets in one bus partition.
type offsetRange struct {
	Partition   uint32
	First, Last uint64
	// Rows is what the range holds, for ledger rows written by hand.
	Rows uint64
}

// offsetRanges returns the offset range per partition of msgs.
func (l *ledgerWriter) offsetRanges(table string, msgs []bus.Message) []offsetRange {
	ranges := map[uint32]*offsetRange{}
	var order []uint32
	for _, m := range msgs {
		p, o := l.coordinates(table, m)
		r := ranges[p]
		if r == nil {
			ranges[p] = &offsetRange{Partition: p, First: o, Last: o}
			order = append(order, p)
			continue
		}
		r.First, r.Last = min(r.First, o), max(r.Last, o)
	}
	out := make([]offsetRange, 0, len(order))
	for _, p := range order {
		out = append(out, *ranges[p])
	}
	return out
}

// unwritten returns msgs without those the ledger shows in table already.
func (l *ledgerWriter) unwritten(ctx context.Context, table string, msgs []bus.Message) ([]bus.Message, error) {
	done, err := l.written(ctx, table, l.offsetRanges(table, msgs))
	if err != nil || len(done) == 0 {
		return msgs, err
	}
	out := make([]bus.Message, 0, len(msgs))
	for _, m := range msgs {
		p, o := l.coordinates(table, m)
		covered := false
		for _, r := range done {
			if r.Partition == p && r.First <= o && o <= r.Last {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, m)
		}
	}
	l.duplicates.WithLabelValues(table).Add(float64(len(msgs) - len(out)))
	return out, nil
}

// written returns the ledger's ranges of source that overlap want: those
// messages are in the table already.
func (l *ledgerWriter) written(ctx context.Context, source string, want []offsetRange) ([]offsetRange, error) {
	if len(want) == 0 {
		return nil, nil
	}
	rows, err := l.db.Query(ctx, "SELECT sink_partition, first_offset, last_offset FROM "+l.db.Local("sink_ledger")+
		" WHERE source = '"+source+"' AND ("+rangeCondition(want, "first_offset", "last_offset")+")")
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
func (l *ledgerWriter) landed(ctx context.Context, age time.Duration, ranges []offsetRange) (map[landedKey]uint64, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	// The server's own clock decides what is recent; a few seconds more
	// cover the part's modification time being rounded down.
	seconds := int(age.Seconds()) + 5
	parts, err := l.db.Query(ctx, fmt.Sprintf("SELECT name FROM system.parts WHERE database = ? AND table = ? AND active"+
		" AND modification_time >= now() - %d", seconds), l.db.Database(), l.db.LocalName("flows"))
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
	rows, err := l.db.Query(ctx, "SELECT sink_partition, sink_offset, date, count() FROM "+l.db.Local("flows")+" WHERE _part IN ("+
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
func (l *ledgerWriter) running(ctx context.Context, batch string) (uint64, error) {
	var n uint64
	if err := l.db.QueryRow(ctx, "SELECT count() FROM system.processes WHERE startsWith(query_id, ?)", batch+"-").Scan(&n); err != nil {
		return 0, fmt.Errorf("cannot read the server's running queries: %w", err)
	}
	return n, nil
}

// recordLedger writes ledger rows for messages found written without one.
func (l *ledgerWriter) recordLedger(ctx context.Context, source string, ranges []offsetRange) error {
	if len(ranges) == 0 {
		return nil
	}
	batch, err := l.db.PrepareBatch(ctx, "INSERT INTO "+l.db.Local("sink_ledger")+
		" (source, sink_partition, first_offset, last_offset, rows, written_at)")
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

// ipv6Columns tells whether flows stores addresses as IPv6 (else String).
func (l *ledgerWriter) ipv6Columns(ctx context.Context) (bool, error) {
	l.typesMu.Lock()
	defer l.typesMu.Unlock()
	if l.typesRead {
		return l.ipv6, nil
	}
	var typ string
	err := l.db.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = 'dst_addr'",
		l.db.Database(), l.db.LocalName("flows")).Scan(&typ)
	if err != nil {
		return false, fmt.Errorf("cannot read the type of flows.dst_addr (was the database migrated?): %w", err)
	}
	l.ipv6, l.typesRead = typ == "IPv6", true
	return l.ipv6, nil
}

// flowInsert is one try at writing a batch of flows through the ledger:
// beginFlows finds what to write, add gathers the rows, finish writes them.
type flowInsert struct {
	l      *ledgerWriter
	try    attempt
	msgs   []bus.Message // the batch's messages the ledger does not know
	landed map[landedKey]uint64
	ipv6   bool
	block  *flowBlock
	// whole are the messages that landed entirely in an earlier try,
	// for the ledger.
	whole []offsetRange
	// shard of shards: in a cluster, add keeps the flows whose
	// subscriber belongs to this shard (shardOf); shards 0 keeps all.
	shard, shards int
}

// beginFlows prepares try at writing msgs into flows, or returns nil when
// the ledger shows all of them written.
//
// The ledger says which messages earlier INSERTs wrote. It is written by a
// view right after the flows part of the same INSERT, so a server that dies
// between the two leaves flows without their ledger row: on 18.16 there is
// no insert deduplication to fall back on. A retry therefore also looks at
// the flows themselves, in the parts created since the first attempt (so
// the probe reads little), and skips the rows that landed there. Parts are
// per day and each is atomic, hence the count per message and day.
func (l *ledgerWriter) beginFlows(ctx context.Context, msgs []bus.Message, try attempt) (*flowInsert, error) {
	if try.n > 0 {
		// An earlier try may still run on the server (which then got
		// our data but not our patience): wait for it to end, or it
		// could land after the probe below and double the batch. A
		// server that was frozen reads the earlier try's buffered query
		// when it wakes, maybe after answering ours: look twice, a
		// moment apart.
		for look := range 2 {
			running, err := l.running(ctx, try.batch)
			if err != nil {
				return nil, err
			}
			if running > 0 {
				return nil, errors.New("an earlier INSERT of this batch still runs on the server")
			}
			if look == 0 && !retry.Sleep(ctx, 500*time.Millisecond) {
				return nil, ctx.Err()
			}
		}
	}
	msgs, err := l.unwritten(ctx, "flows", msgs)
	if err != nil || len(msgs) == 0 {
		return nil, err
	}
	w := &flowInsert{l: l, try: try, msgs: msgs}
	if try.n > 0 {
		if w.landed, err = l.landed(ctx, time.Since(try.first), l.offsetRanges("flows", msgs)); err != nil {
			return nil, err
		}
	}
	if w.ipv6, err = l.ipv6Columns(ctx); err != nil {
		return nil, err
	}
	// Size the columns from the encoded size (a real flow takes 40 to 60
	// bytes on the wire) so that they are rarely copied while growing.
	size := 0
	for _, m := range msgs {
		size += len(m.Value)
	}
	w.block = flowBlocks.Get().(*flowBlock)
	w.block.reserve(size/32+1, w.ipv6)
	return w, nil
}

// subscriberOf labels the subscriber of one flow: the inside address
// behind a CGNAT, else the subscriber rule's address.
func (l *ledgerWriter) subscriberOf(f *flow.Flow) string {
	if f.Inside.IsValid() {
		return l.subscribers.Label(f.Inside)
	}
	return l.subscribers.Label(l.subscribers.Key(f.SrcAddr, f.DstAddr))
}

// add adds the flows of m, except those an earlier try landed. subs is
// each flow's subscriber key from its v2 group; invalid for a v1 record's
// flows, whose key is the record's.
func (w *flowInsert) add(m bus.Message, flows []flow.Flow, subs []netip.Addr) {
	recordKey, _ := netip.AddrFromSlice(m.Key)
	// A record's flows come grouped by subscriber: label each group once.
	var labelled netip.Addr
	var label string
	subscriber := func(i int) string {
		key := subs[i]
		if !key.IsValid() {
			key = recordKey
		}
		if identity.IsKey(key) {
			// A customer's key (identity) is no address: each flow's
			// subscriber is the address it had then.
			return w.l.subscriberOf(&flows[i])
		}
		if key != labelled || label == "" {
			labelled, label = key, w.l.subscribers.Label(key)
		}
		return label
	}
	p, o := w.l.coordinates("flows", m)
	added, mine := 0, 0
	for i := range flows {
		sub := subscriber(i)
		if w.shards > 1 && shardOf(sub, w.shards) != w.shard {
			continue
		}
		mine++
		if w.landed != nil && w.landed[landedKey{p, o, day(flows[i].End())}] > 0 {
			continue
		}
		w.block.add(sub, &flows[i], p, o, w.ipv6)
		added++
	}
	if added < mine {
		w.l.duplicates.WithLabelValues("flows").Inc()
	}
	if added == 0 && mine > 0 {
		w.whole = append(w.whole, offsetRange{Partition: p, First: o, Last: o, Rows: uint64(mine)})
	}
}

// finish writes the rows added and returns how many.
func (w *flowInsert) finish(ctx context.Context) (int, error) {
	defer w.release()
	// Messages that landed whole get no ledger row from this INSERT's
	// view: record them by hand, so that a re-delivery skips them too.
	if err := w.l.recordLedger(ctx, "flows", w.whole); err != nil {
		return 0, err
	}
	// The query id lets a retry find this INSERT still running.
	ctx = clickhouse.Context(ctx, clickhouse.WithQueryID(w.try.queryID()))
	if err := w.l.insertFlowBlock(ctx, w.block, w.ipv6); err != nil {
		return 0, err
	}
	return w.block.rows(), nil
}

// release gives the block back for the next batch.
func (w *flowInsert) release() {
	if w.block != nil {
		w.block.reset()
		flowBlocks.Put(w.block)
		w.block = nil
	}
}

// insertFlowBlock writes a block in one INSERT, hence one block on the
// server: the ledger view sees the whole batch at once.
func (l *ledgerWriter) insertFlowBlock(ctx context.Context, block *flowBlock, ipv6 bool) error {
	if block.rows() == 0 {
		return nil
	}
	ctx = l.db.InsertContext(ctx)
	batch, err := l.db.PrepareBatch(ctx, "INSERT INTO "+l.db.Local("flows")+" ("+flowColumns+")")
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

// insertAlerts writes alerts in one INSERT; the ledger view records them.
func (l *ledgerWriter) insertAlerts(ctx context.Context, alerts []alertRow) error {
	if len(alerts) == 0 {
		return nil
	}
	ctx = l.db.InsertContext(ctx)
	batch, err := l.db.PrepareBatch(ctx, "INSERT INTO "+l.db.Local("alerts")+" ("+alertColumns+")")
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
