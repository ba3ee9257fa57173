// Package sink writes flows and alerts from the bus into ClickHouse, alerts
// as JSON lines on stdout, and alerts to signed webhooks. Offsets are
// committed only after the write that covers them succeeded, so a crash
// re-delivers rather than loses; a ledger in ClickHouse keeps a re-delivered
// or retried batch from being written twice.
package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// Dependencies of the sink.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	FlowsTopic  string
	AlertsTopic string
	// ClickHouse, when set, receives flows and alerts. The sink does not
	// migrate or close it.
	ClickHouse *clickhousedb.DB
	// Stdout receives alerts when the configuration asks for it.
	Stdout io.Writer
	// Subscribers names the subscriber of a flow in the flows table, as
	// alerts name it (an IPv6 subscriber is its prefix).
	Subscribers network.Subscribers
}

// Component is the sink.
type Component struct {
	config    Configuration
	deps      Dependencies
	metrics   *metrics
	pipelines []*pipeline
	webhooks  []*webhookTarget
	// ledger writes to ClickHouse; nil without it.
	ledger *ledgerWriter
	// shards are the ledgers of a cluster's shards (clickhouse.cluster),
	// each on a connection to that shard's replicas, set by Start; with
	// one server, only ledger.
	shards   []*ledgerWriter
	shardDBs []*clickhousedb.DB

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// background holds the webhook and retention loops, which Drain does
	// not wait for: they end on Stop.
	background sync.WaitGroup
}

// New prepares the sink; it consumes nothing until Start.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	config = config.withDefaults()
	if deps.ClickHouse == nil && !config.Stdout && len(config.Webhooks) == 0 {
		return nil, errors.New("sink has nowhere to write: set clickhouse.addr, sink.stdout or sink.webhooks")
	}
	c := &Component{config: config, deps: deps, metrics: newMetrics(deps.Registry)}
	durable := deps.Bus.Durable()
	if deps.ClickHouse != nil {
		c.ledger = &ledgerWriter{db: deps.ClickHouse, flowsTopic: deps.FlowsTopic, alertsTopic: deps.AlertsTopic, subscribers: deps.Subscribers,
			duplicates: c.metrics.duplicates}
		if !durable {
			c.ledger.offsetBase = uint64(time.Now().UnixMicro())
		}
	}
	newPipeline := func(name, topic, groupID string, workers int, write func(context.Context, []bus.Message, attempt) error) error {
		group, err := deps.Bus.Partitioned(topic, groupID)
		if err != nil {
			return fmt.Errorf("cannot consume %s: %w", topic, err)
		}
		c.pipelines = append(c.pipelines, &pipeline{
			name: name, group: group, write: write,
			maxMessages: config.BatchMessages, maxBytes: config.BatchBytes, interval: config.FlushInterval,
			workers: workers, maxBackoff: config.RetryMaxBackoff, drain: config.DrainTimeout, durable: durable,
			logger: deps.Logger, metrics: c.metrics,
		})
		return nil
	}
	if deps.ClickHouse != nil {
		if err := newPipeline("flows", deps.FlowsTopic, config.Group, config.Workers, c.writeFlows); err != nil {
			return nil, err
		}
	}
	if deps.ClickHouse != nil || config.Stdout {
		// One worker: alerts are few and stdout readers want their order.
		// A group of its own: in the flows' group, every alerts member
		// coming or going would stop every sink's flows for a rebalance.
		if err := newPipeline("alerts", deps.AlertsTopic, config.Group+"-alerts", 1, c.writeAlerts); err != nil {
			return nil, err
		}
	}
	for _, w := range config.Webhooks {
		group := config.Group + "-webhook-" + w.Name
		consumer, err := deps.Bus.Consumer(deps.AlertsTopic, group)
		if err != nil {
			return nil, fmt.Errorf("cannot consume %s for webhook %s: %w", deps.AlertsTopic, w.Name, err)
		}
		target, err := newWebhookTarget(w, consumer, durable, config, deps, c.metrics)
		if err != nil {
			consumer.Close()
			return nil, err
		}
		c.webhooks = append(c.webhooks, target)
	}
	return c, nil
}

// Start consumes until Stop. In a cluster it first connects to every
// shard.
func (c *Component) Start() error {
	if c.ledger != nil && c.deps.ClickHouse.Cluster() != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		dbs, err := c.deps.ClickHouse.Shards(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
		c.shardDBs = dbs
		for _, db := range dbs {
			c.shards = append(c.shards, &ledgerWriter{db: db, flowsTopic: c.ledger.flowsTopic, alertsTopic: c.ledger.alertsTopic,
				offsetBase: c.ledger.offsetBase, duplicates: c.ledger.duplicates, subscribers: c.ledger.subscribers})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for _, p := range c.pipelines {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			p.run(ctx)
		}()
	}
	for _, w := range c.webhooks {
		c.background.Add(1)
		go func() {
			defer c.background.Done()
			w.run(ctx)
		}()
	}
	if c.deps.ClickHouse != nil {
		c.background.Add(1)
		go func() {
			defer c.background.Done()
			c.runRetention(ctx)
		}()
	}
	return nil
}

// Drain, on a bus that is not durable, ends the input topics and waits
// until the ClickHouse and stdout pipelines have written what they read
// (each within sink.drain_timeout): without it Stop would leave the
// in-process queues unread, and nothing keeps them for a next start. Call
// it once the stages feeding the sink have stopped; Stop follows. On
// Kafka it does nothing: a Kafka topic has no end, and what Stop leaves
// is re-delivered.
func (c *Component) Drain() {
	if c.deps.Bus.Durable() {
		return
	}
	c.deps.Bus.CloseTopic(c.deps.FlowsTopic)
	c.deps.Bus.CloseTopic(c.deps.AlertsTopic)
	c.wg.Wait()
}

// Stop writes the batches in hand (within sink.drain_timeout) and stops.
func (c *Component) Stop() error {
	c.cancel()
	c.wg.Wait()
	c.background.Wait()
	var errs []error
	for _, p := range c.pipelines {
		errs = append(errs, p.group.Close())
	}
	for _, w := range c.webhooks {
		errs = append(errs, w.consumer.Close())
	}
	for _, db := range c.shardDBs {
		errs = append(errs, db.Close())
	}
	return errors.Join(errs...)
}

// writeFlows writes the flows of msgs that are not in ClickHouse yet.
func (c *Component) writeFlows(ctx context.Context, msgs []bus.Message, try attempt) error {
	if len(c.shards) > 1 {
		return c.writeFlowsSharded(ctx, msgs, try)
	}
	insert, err := c.ledger.beginFlows(ctx, msgs, try)
	if err != nil || insert == nil {
		return err
	}
	defer insert.release()
	var flows []flow.Flow
	var subs []netip.Addr
	for _, m := range insert.msgs {
		if flows, subs, err = flow.DecodeBatchSubscribers(flows[:0], subs[:0], m.Value); err != nil {
			c.metrics.badMessages.WithLabelValues("flows").Inc()
			c.deps.Logger.Warn("skipping undecodable flow batch", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		insert.add(m, flows, subs)
	}
	rows, err := insert.finish(ctx)
	if err != nil || rows == 0 {
		return err
	}
	c.metrics.rows.WithLabelValues("flows").Add(float64(rows))
	c.metrics.batches.WithLabelValues("flows").Inc()
	return nil
}

// writeAlerts writes alerts through the ledger like flows; an event that
// a server crash leaves twice collapses in ReplacingMergeTree (FINAL).
func (c *Component) writeAlerts(ctx context.Context, msgs []bus.Message, _ attempt) error {
	if len(c.shards) > 1 {
		return c.writeAlertsSharded(ctx, msgs)
	}
	if c.ledger != nil {
		var err error
		if msgs, err = c.ledger.unwritten(ctx, "alerts", msgs); err != nil {
			return err
		}
	}
	alerts := make([]alertRow, 0, len(msgs))
	for _, m := range msgs {
		a, ok := c.decodeAlert(m)
		if !ok {
			continue
		}
		row := alertRow{Alert: a}
		if c.ledger != nil {
			row.Partition, row.Offset = c.ledger.coordinates("alerts", m)
		}
		alerts = append(alerts, row)
	}
	if len(alerts) == 0 {
		return nil
	}
	if c.ledger != nil {
		if err := c.ledger.insertAlerts(ctx, alerts); err != nil {
			return err
		}
		c.metrics.rows.WithLabelValues("alerts").Add(float64(len(alerts)))
		c.metrics.batches.WithLabelValues("alerts").Inc()
	}
	c.printAlerts(alerts)
	return nil
}

// printAlerts prints alerts on stdout where the configuration asks for
// it.
func (c *Component) printAlerts(alerts []alertRow) {
	if c.config.Stdout {
		// Printed once the INSERT succeeded and never retried: a retry
		// would print the batch twice, and a broken stdout is not a reason
		// to hold the alerts back from ClickHouse and the webhooks.
		for i := range alerts {
			line, err := alerts[i].Alert.Marshal()
			if err == nil {
				_, err = c.deps.Stdout.Write(append(line, '\n'))
			}
			if err != nil {
				c.deps.Logger.Error("cannot print alert", "id", alerts[i].Alert.ID, "error", err)
				continue
			}
			c.metrics.stdoutLines.Inc()
		}
	}
}

// decodeAlert decodes the alert of m; one that does not decode is counted
// and logged, and the caller skips it.
func (c *Component) decodeAlert(m bus.Message) (alert.Alert, bool) {
	a, err := alert.Unmarshal(m.Value)
	if err != nil {
		c.metrics.badMessages.WithLabelValues("alerts").Inc()
		c.deps.Logger.Warn("skipping undecodable alert", "partition", m.Partition, "offset", m.Offset, "error", err)
		return alert.Alert{}, false
	}
	return a, true
}
