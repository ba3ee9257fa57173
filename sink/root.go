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
	"hash/crc32"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
)

// Dependencies of the sink.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	FlowsTopic  string
	AlertsTopic string
	// ClickHouse, when set, receives flows and alerts.
	ClickHouse *ClickHouse
	// Stdout receives alerts when the configuration asks for it.
	Stdout io.Writer
}

// Component is the sink.
type Component struct {
	config    Configuration
	deps      Dependencies
	metrics   *metrics
	pipelines []*pipeline
	webhooks  []*webhookTarget
	// offsetBase is added to bus offsets in the ledger. Kafka offsets are
	// durable and it is 0; the in-process bus numbers from 0 on every
	// start, so its offsets are moved past every earlier run's by the
	// start time in microseconds (a run cannot pass a million messages a
	// second).
	offsetBase uint64

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
	if !durable {
		c.offsetBase = uint64(time.Now().UnixMicro())
	}
	newPipeline := func(name, topic string, workers int, write func(context.Context, []bus.Message, attempt) error) error {
		consumer, err := deps.Bus.Consumer(topic, config.Group)
		if err != nil {
			return fmt.Errorf("cannot consume %s: %w", topic, err)
		}
		c.pipelines = append(c.pipelines, &pipeline{
			name: name, consumer: consumer, write: write,
			maxMessages: config.BatchMessages, maxBytes: config.BatchBytes, interval: config.FlushInterval,
			workers: workers, maxBackoff: config.RetryMaxBackoff, drain: config.DrainTimeout,
			logger: deps.Logger, metrics: c.metrics,
		})
		return nil
	}
	if deps.ClickHouse != nil {
		if err := newPipeline("flows", deps.FlowsTopic, config.Workers, c.writeFlows); err != nil {
			return nil, err
		}
	}
	if deps.ClickHouse != nil || config.Stdout {
		// One worker: alerts are few and stdout readers want their order.
		if err := newPipeline("alerts", deps.AlertsTopic, 1, c.writeAlerts); err != nil {
			return nil, err
		}
	}
	for _, w := range config.Webhooks {
		group := config.Group + "-webhook-" + w.Name
		consumer, err := deps.Bus.Consumer(deps.AlertsTopic, group)
		if err != nil {
			return nil, fmt.Errorf("cannot consume %s for webhook %s: %w", deps.AlertsTopic, w.Name, err)
		}
		c.webhooks = append(c.webhooks, newWebhookTarget(w, consumer, durable, config, deps.Logger, c.metrics))
	}
	return c, nil
}

// Start consumes until Stop.
func (c *Component) Start() error {
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
		errs = append(errs, p.consumer.Close())
	}
	for _, w := range c.webhooks {
		errs = append(errs, w.consumer.Close())
	}
	return errors.Join(errs...)
}

// runRetention drops expired partitions now and every interval.
func (c *Component) runRetention(ctx context.Context) {
	r := c.config.Retention
	if r.FlowsDays == 0 && r.RollupDays == 0 && r.AlertsDays == 0 && r.LedgerDays == 0 {
		return
	}
	if err := c.deps.ClickHouse.ApplyTTL(ctx, r); err != nil && ctx.Err() == nil {
		c.deps.Logger.Warn("cannot set table TTLs; retention still drops partitions", "error", err)
	}
	ticker := time.NewTicker(r.Interval)
	defer ticker.Stop()
	for {
		n, err := c.deps.ClickHouse.DropExpired(ctx, time.Now(), r)
		c.metrics.dropped.Add(float64(n))
		if err != nil && ctx.Err() == nil {
			c.metrics.retentionErr.Inc()
			c.deps.Logger.Warn("cannot apply retention", "error", err)
		} else if n > 0 {
			c.deps.Logger.Info("dropped expired partitions", "partitions", n)
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// coordinates returns what the rows of m record as their bus partition
// and offset, the ledger's key. The partition carries a hash of the topic
// name in its upper 16 bits, so that the ledger of one topic never skips
// the messages of another (kafka.flows_topic renamed) with the same
// offsets. Offsets are shifted by offsetBase.
func (c *Component) coordinates(table string, m bus.Message) (uint32, uint64) {
	topic := c.deps.FlowsTopic
	if table == "alerts" {
		topic = c.deps.AlertsTopic
	}
	return crc32.ChecksumIEEE([]byte(topic))<<16 | uint32(m.Partition)&0xffff, c.offsetBase + uint64(m.Offset)
}

// offsetRanges returns the offset range per partition of msgs.
func (c *Component) offsetRanges(table string, msgs []bus.Message) []offsetRange {
	ranges := map[uint32]*offsetRange{}
	var order []uint32
	for _, m := range msgs {
		p, o := c.coordinates(table, m)
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
func (c *Component) unwritten(ctx context.Context, table string, msgs []bus.Message) ([]bus.Message, error) {
	done, err := c.deps.ClickHouse.written(ctx, table, c.offsetRanges(table, msgs))
	if err != nil || len(done) == 0 {
		return msgs, err
	}
	out := make([]bus.Message, 0, len(msgs))
	for _, m := range msgs {
		p, o := c.coordinates(table, m)
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
	c.metrics.duplicates.WithLabelValues(table).Add(float64(len(msgs) - len(out)))
	return out, nil
}

// writeFlows writes the flows of msgs that are not in ClickHouse yet.
//
// The ledger says which messages earlier INSERTs wrote. It is written by a
// view right after the flows part of the same INSERT, so a server that dies
// between the two leaves flows without their ledger row: on 18.16 there is
// no insert deduplication to fall back on. A retry therefore also looks at
// the flows themselves, in the parts created since the first attempt (so
// the probe reads little), and skips the rows that landed there. Parts are
// per day and each is atomic, hence the count per message and day.
func (c *Component) writeFlows(ctx context.Context, msgs []bus.Message, try attempt) error {
	if try.n > 0 {
		// An earlier try may still run on the server (which then got
		// our data but not our patience): wait for it to end, or it
		// could land after the probe below and double the batch. A
		// server that was frozen reads the earlier try's buffered query
		// when it wakes, maybe after answering ours: look twice, a
		// moment apart.
		for look := range 2 {
			running, err := c.deps.ClickHouse.running(ctx, try.batch)
			if err != nil {
				return err
			}
			if running > 0 {
				return fmt.Errorf("an earlier INSERT of this batch still runs on the server")
			}
			if look == 0 {
				select {
				case <-time.After(500 * time.Millisecond):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
	}
	msgs, err := c.unwritten(ctx, "flows", msgs)
	if err != nil || len(msgs) == 0 {
		return err
	}
	var landed map[landedKey]uint64
	if try.n > 0 {
		if landed, err = c.deps.ClickHouse.landed(ctx, time.Since(try.first), c.offsetRanges("flows", msgs)); err != nil {
			return err
		}
	}
	ipv6, err := c.deps.ClickHouse.ipv6Columns(ctx)
	if err != nil {
		return err
	}
	// Size the columns from the encoded size (a real flow takes 40 to 60
	// bytes on the wire) so that they are rarely copied while growing.
	size := 0
	for _, m := range msgs {
		size += len(m.Value)
	}
	block := flowBlocks.Get().(*flowBlock)
	defer func() {
		block.reset()
		flowBlocks.Put(block)
	}()
	block.reserve(size/32+1, ipv6)
	var flows []flow.Flow
	var wholeMessages []offsetRange // landed entirely: for the ledger
	for _, m := range msgs {
		flows, err = flow.DecodeBatch(flows[:0], m.Value)
		if err != nil {
			c.metrics.badMessages.WithLabelValues("flows").Inc()
			c.deps.Logger.Warn("skipping undecodable flow batch", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		subscriber := ""
		if a, ok := netip.AddrFromSlice(m.Key); ok {
			subscriber = a.Unmap().String()
		}
		p, o := c.coordinates("flows", m)
		added := 0
		for i := range flows {
			if landed != nil && landed[landedKey{p, o, day(flows[i].End())}] > 0 {
				continue
			}
			block.add(subscriber, &flows[i], p, o, ipv6)
			added++
		}
		if added < len(flows) {
			c.metrics.duplicates.WithLabelValues("flows").Inc()
		}
		if added == 0 && len(flows) > 0 {
			wholeMessages = append(wholeMessages, offsetRange{Partition: p, First: o, Last: o, Rows: uint64(len(flows))})
		}
	}
	// Messages that landed whole get no ledger row from this INSERT's
	// view: record them by hand, so that a re-delivery skips them too.
	if err := c.deps.ClickHouse.recordLedger(ctx, "flows", wholeMessages); err != nil {
		return err
	}
	if err := c.deps.ClickHouse.insertFlowBlock(clickhouse.Context(ctx, clickhouse.WithQueryID(try.queryID())), block, ipv6); err != nil {
		return err
	}
	rows := block.rows()
	if rows == 0 {
		return nil
	}
	c.metrics.rows.WithLabelValues("flows").Add(float64(rows))
	c.metrics.batches.WithLabelValues("flows").Inc()
	return nil
}

// writeAlerts writes alerts through the ledger like flows; an event that
// a server crash leaves twice collapses in ReplacingMergeTree (FINAL).
func (c *Component) writeAlerts(ctx context.Context, msgs []bus.Message, _ attempt) error {
	if c.deps.ClickHouse != nil {
		var err error
		if msgs, err = c.unwritten(ctx, "alerts", msgs); err != nil {
			return err
		}
	}
	alerts := make([]AlertRow, 0, len(msgs))
	for _, m := range msgs {
		a, err := alert.Unmarshal(m.Value)
		if err != nil {
			c.metrics.badMessages.WithLabelValues("alerts").Inc()
			c.deps.Logger.Warn("skipping undecodable alert", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		p, o := c.coordinates("alerts", m)
		alerts = append(alerts, AlertRow{Alert: a, Partition: p, Offset: o})
	}
	if len(alerts) == 0 {
		return nil
	}
	if c.deps.ClickHouse != nil {
		if err := c.deps.ClickHouse.InsertAlerts(ctx, alerts); err != nil {
			return err
		}
		c.metrics.rows.WithLabelValues("alerts").Add(float64(len(alerts)))
		c.metrics.batches.WithLabelValues("alerts").Inc()
	}
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
	return nil
}
