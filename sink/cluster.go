package sink

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/go-faster/city"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
)

// In a ClickHouse cluster (clickhouse.cluster) the sink writes the local
// replicated tables of each shard itself, each row on the shard of its
// subscriber, and keeps one ledger per shard: each shard's ledger views
// record what that shard's INSERT wrote, and before writing a shard the
// sink drops the messages that shard's ledger covers. A batch is one
// INSERT per shard; when one shard fails, the batch is retried whole and
// the shards that took it skip it by their ledger. Through a Distributed
// table instead, a failed INSERT could leave some shards written and
// others not, and a ledger read through the Distributed table could not
// tell which.
//
// Within a shard, a replica killed mid-INSERT is the single server's
// case (ledger.go), with one more safety: replicated tables deduplicate
// INSERT blocks on every version by their hash in ZooKeeper, so a retry
// on the other replica that sends the very block the dead one had
// committed (its parts not fetched yet, so the probe did not find them)
// is dropped there, in the table and in the rollup its view feeds.

// shardOf is the index (0-based, in remote_servers order) of the shard
// that holds subscriber's rows among shards of weight 1: what a
// Distributed table with the sharding key cityHash64(subscriber_ip)
// chooses (schemas.ShardingKeys), so that a row the sink writes and one
// inserted through the Distributed table meet on one shard.
func shardOf(subscriber string, shards int) int {
	return int(city.CH64([]byte(subscriber)) % uint64(shards))
}

// writeFlowsSharded writes msgs into the shards of a cluster.
func (c *Component) writeFlowsSharded(ctx context.Context, msgs []bus.Message, try attempt) error {
	inserts := make([]*flowInsert, len(c.shards))
	defer func() {
		for _, w := range inserts {
			if w != nil {
				w.release()
			}
		}
	}()
	// want[s] are the messages shard s has not written yet.
	want := make([]map[uint64]bool, len(c.shards))
	for s, l := range c.shards {
		w, err := l.beginFlows(ctx, msgs, try)
		if err != nil {
			return fmt.Errorf("shard %d: %w", s+1, err)
		}
		if w == nil {
			continue
		}
		w.shard, w.shards = s, len(c.shards)
		inserts[s] = w
		want[s] = make(map[uint64]bool, len(w.msgs))
		for _, m := range w.msgs {
			want[s][messageKey(m)] = true
		}
	}
	var flows []flow.Flow
	var subs []netip.Addr
	var err error
	for _, m := range msgs {
		key := messageKey(m)
		wanted := false
		for s := range want {
			wanted = wanted || want[s][key]
		}
		if !wanted {
			continue
		}
		// Decoded once for every shard.
		if flows, subs, err = flow.DecodeBatchSubscribers(flows[:0], subs[:0], m.Value); err != nil {
			c.metrics.badMessages.WithLabelValues("flows").Inc()
			c.deps.Logger.Warn("skipping undecodable flow batch", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		for s, w := range inserts {
			if w != nil && want[s][key] {
				w.add(m, flows, subs)
			}
		}
	}
	// Shard by shard: one that fails fails the batch, which is then
	// retried whole; the shards written meanwhile skip it by their ledger.
	var errs []error
	rows := 0
	for s, w := range inserts {
		if w == nil {
			continue
		}
		n, err := w.finish(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s+1, err))
			continue
		}
		rows += n
	}
	if rows > 0 {
		c.metrics.rows.WithLabelValues("flows").Add(float64(rows))
		c.metrics.batches.WithLabelValues("flows").Inc()
	}
	return errors.Join(errs...)
}

// messageKey identifies a message of one batch (one topic).
func messageKey(m bus.Message) uint64 { return uint64(m.Partition)<<48 | uint64(m.Offset)&(1<<48-1) }

// writeAlertsSharded writes alerts like flows: each into the shard of
// its subscriber, each shard through its own ledger.
func (c *Component) writeAlertsSharded(ctx context.Context, msgs []bus.Message) error {
	// Decoded first: the shard follows from the alert's subscriber.
	byShard := make([][]bus.Message, len(c.shards))
	decoded := make(map[uint64]alert.Alert, len(msgs))
	for _, m := range msgs {
		a, ok := c.decodeAlert(m)
		if !ok {
			continue
		}
		s := shardOf(a.SubscriberIP, len(c.shards))
		byShard[s] = append(byShard[s], m)
		decoded[messageKey(m)] = a
	}
	var errs []error
	for s, l := range c.shards {
		if len(byShard[s]) == 0 {
			continue
		}
		unwritten, err := l.unwritten(ctx, "alerts", byShard[s])
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s+1, err))
			continue
		}
		alerts := make([]alertRow, 0, len(unwritten))
		for _, m := range unwritten {
			row := alertRow{Alert: decoded[messageKey(m)]}
			row.Partition, row.Offset = l.coordinates("alerts", m)
			alerts = append(alerts, row)
		}
		if len(alerts) == 0 {
			continue
		}
		if err := l.insertAlerts(ctx, alerts); err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s+1, err))
			continue
		}
		c.metrics.rows.WithLabelValues("alerts").Add(float64(len(alerts)))
		c.metrics.batches.WithLabelValues("alerts").Inc()
		// Printed once its shard took them, as on one server.
		c.printAlerts(alerts)
	}
	return errors.Join(errs...)
}
