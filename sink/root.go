// Package sink writes flows and alerts from the bus into ClickHouse, and
// alerts as JSON lines on stdout. Offsets are committed only after the write
// that covers them succeeded, so a crash re-delivers rather than loses.
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
	config  Configuration
	deps    Dependencies
	metrics *metrics
	loops   []*batchLoop

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New prepares the sink; it consumes nothing until Start.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if deps.ClickHouse == nil && !config.Stdout {
		return nil, errors.New("sink has nowhere to write: set clickhouse.addr or sink.stdout")
	}
	c := &Component{config: config, deps: deps, metrics: newMetrics(deps.Registry)}
	if deps.ClickHouse != nil {
		consumer, err := deps.Bus.Consumer(deps.FlowsTopic, config.Group)
		if err != nil {
			return nil, fmt.Errorf("cannot consume %s: %w", deps.FlowsTopic, err)
		}
		c.loops = append(c.loops, &batchLoop{name: "flows", consumer: consumer, write: c.writeFlows})
	}
	consumer, err := deps.Bus.Consumer(deps.AlertsTopic, config.Group)
	if err != nil {
		return nil, fmt.Errorf("cannot consume %s: %w", deps.AlertsTopic, err)
	}
	c.loops = append(c.loops, &batchLoop{name: "alerts", consumer: consumer, write: c.writeAlerts})
	return c, nil
}

// Start consumes until Stop.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for _, l := range c.loops {
		l.maxMessages, l.interval, l.logger = c.config.BatchMessages, c.config.FlushInterval, c.deps.Logger
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			l.run(ctx)
		}()
	}
	return nil
}

// Wait blocks until every loop has ended (Stop, or closed input topics).
func (c *Component) Wait() { c.wg.Wait() }

// Stop writes the batches in hand and stops.
func (c *Component) Stop() error {
	c.cancel()
	c.wg.Wait()
	var errs []error
	for _, l := range c.loops {
		errs = append(errs, l.consumer.Close())
	}
	return errors.Join(errs...)
}

func (c *Component) writeFlows(ctx context.Context, msgs []bus.Message) error {
	var rows []FlowRow
	var flows []flow.Flow
	for _, m := range msgs {
		var err error
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
		for _, f := range flows {
			rows = append(rows, FlowRow{Subscriber: subscriber, Flow: f})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	if err := c.deps.ClickHouse.InsertFlows(ctx, rows); err != nil {
		c.metrics.writeErrors.WithLabelValues("flows").Inc()
		return err
	}
	c.metrics.rows.WithLabelValues("flows").Add(float64(len(rows)))
	c.metrics.batches.WithLabelValues("flows").Inc()
	return nil
}

func (c *Component) writeAlerts(ctx context.Context, msgs []bus.Message) error {
	alerts := make([]alert.Alert, 0, len(msgs))
	for _, m := range msgs {
		a, err := alert.Unmarshal(m.Value)
		if err != nil {
			c.metrics.badMessages.WithLabelValues("alerts").Inc()
			c.deps.Logger.Warn("skipping undecodable alert", "partition", m.Partition, "offset", m.Offset, "error", err)
			continue
		}
		alerts = append(alerts, a)
	}
	if len(alerts) == 0 {
		return nil
	}
	if c.deps.ClickHouse != nil {
		if err := c.deps.ClickHouse.InsertAlerts(ctx, alerts); err != nil {
			c.metrics.writeErrors.WithLabelValues("alerts").Inc()
			return err
		}
		c.metrics.rows.WithLabelValues("alerts").Add(float64(len(alerts)))
		c.metrics.batches.WithLabelValues("alerts").Inc()
	}
	if c.config.Stdout {
		for i := range alerts {
			line, err := alerts[i].Marshal()
			if err != nil {
				return err
			}
			if _, err := c.deps.Stdout.Write(append(line, '\n')); err != nil {
				return fmt.Errorf("cannot print alert: %w", err)
			}
			c.metrics.stdoutLines.Inc()
		}
	}
	return nil
}

// batchLoop reads one topic into batches bounded by rows and time, writes
// each batch until it succeeds and only then commits its offsets.
type batchLoop struct {
	name        string
	consumer    bus.Consumer
	write       func(context.Context, []bus.Message) error
	maxMessages int
	interval    time.Duration
	logger      *slog.Logger
}

func (l *batchLoop) run(ctx context.Context) {
	messages := make(chan bus.Message, 1024)
	go func() {
		defer close(messages)
		for {
			msg, err := l.consumer.Fetch(ctx)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, bus.ErrClosed) {
					l.logger.Error("cannot fetch", "topic", l.name, "error", err)
				}
				return
			}
			messages <- msg
		}
	}()
	var batch []bus.Message
	timer := time.NewTicker(l.interval)
	defer timer.Stop()
	for {
		select {
		case msg, ok := <-messages:
			if !ok {
				// Input ended (Stop or a closed topic): write what is in hand
				// with a fresh deadline, since ctx may be cancelled already.
				flushCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				l.flush(flushCtx, batch)
				cancel()
				return
			}
			batch = append(batch, msg)
			if len(batch) >= l.maxMessages {
				if !l.flush(ctx, batch) {
					continue
				}
				batch = batch[:0]
			}
		case <-timer.C:
			if l.flush(ctx, batch) {
				batch = batch[:0]
			}
		}
	}
}

// flush writes and commits batch, retrying with backoff until it succeeds
// or ctx ends. It reports whether the batch is done.
func (l *batchLoop) flush(ctx context.Context, batch []bus.Message) bool {
	if len(batch) == 0 {
		return true
	}
	backoff := 200 * time.Millisecond
	for {
		err := l.write(ctx, batch)
		if err == nil {
			err = l.consumer.Commit(ctx, batch...)
		}
		if err == nil {
			return true
		}
		l.logger.Warn("cannot write batch, retrying", "topic", l.name, "messages", len(batch), "error", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
