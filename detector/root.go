// Package detector consumes flows, keeps sliding event-time windows per
// subscriber and publishes alerts on the alerts topic.
package detector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
)

// Dependencies of the detector.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	FlowsTopic  string
	AlertsTopic string
	// SubscriberNetworks: only flows from these sources are evaluated.
	// Empty means every source.
	SubscriberNetworks []netip.Prefix
	// ResolveAtEnd resolves every open incident when the flows topic ends,
	// as replay wants at the end of its captures.
	ResolveAtEnd bool
}

// Component is the detector.
type Component struct {
	config   Configuration
	deps     Dependencies
	metrics  *metrics
	engine   *Engine
	consumer bus.Consumer
	producer bus.Producer

	cancel context.CancelFunc
	done   chan struct{}
	prev   EngineStats
}

// New prepares a detector; it consumes nothing until Start.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	consumer, err := deps.Bus.Consumer(deps.FlowsTopic, config.Group)
	if err != nil {
		return nil, fmt.Errorf("cannot join consumer group %s: %w", config.Group, err)
	}
	producer, err := deps.Bus.Producer(deps.AlertsTopic)
	if err != nil {
		return nil, fmt.Errorf("cannot create alerts producer: %w", err)
	}
	return &Component{
		config:   config,
		deps:     deps,
		metrics:  newMetrics(deps.Registry),
		engine:   NewEngine(config),
		consumer: consumer,
		producer: producer,
		done:     make(chan struct{}),
	}, nil
}

// Start consumes flows until Stop.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(ctx)
	return nil
}

// Stop ends consumption after the message in hand; uncommitted offsets are
// re-delivered on the next start.
func (c *Component) Stop() error {
	c.cancel()
	c.Wait()
	return errors.Join(c.consumer.Close(), c.producer.Close())
}

func (c *Component) run(ctx context.Context) {
	defer close(c.done)
	messages := make(chan bus.Message, 64)
	go func() {
		defer close(messages)
		for {
			msg, err := c.consumer.Fetch(ctx)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, bus.ErrClosed) {
					c.deps.Logger.Error("cannot fetch flows", "error", err)
				}
				return
			}
			select {
			case messages <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var uncommitted []bus.Message
	lastFlowWall, lastCommit := time.Now(), time.Now()
	var flows []flow.Flow
	for {
		select {
		case msg, ok := <-messages:
			if !ok {
				if c.deps.ResolveAtEnd {
					c.emit(ctx, c.engine.Flush())
				}
				c.commit(ctx, uncommitted)
				return
			}
			flows = c.decode(msg, flows[:0])
			for i := range flows {
				if !c.subscriber(flows[i].SrcAddr) {
					continue
				}
				if !c.emit(ctx, c.engine.Process(&flows[i])) {
					return
				}
			}
			lastFlowWall = time.Now()
			uncommitted = append(uncommitted, msg)
		case now := <-tick.C:
			// Without traffic event time stands still and incidents would
			// never resolve: let it follow the wall clock while idle.
			if idle := now.Sub(lastFlowWall); idle >= c.config.IdleAdvance && c.engine.Watermark() > 0 {
				if !c.emit(ctx, c.engine.Advance(c.engine.Watermark()+time.Second.Milliseconds())) {
					return
				}
			}
		case <-ctx.Done():
			return
		}
		c.observe()
		if len(uncommitted) > 0 && time.Since(lastCommit) >= c.config.CommitInterval {
			if c.commit(ctx, uncommitted) {
				uncommitted = uncommitted[:0]
				lastCommit = time.Now()
			}
		}
	}
}

func (c *Component) commit(ctx context.Context, msgs []bus.Message) bool {
	if err := c.consumer.Commit(ctx, msgs...); err != nil {
		c.deps.Logger.Warn("cannot commit flow offsets", "error", err)
		return false
	}
	return true
}

// Wait blocks until the detector has stopped, by Stop or because its input
// ended (a closed in-process topic).
func (c *Component) Wait() { <-c.done }

func (c *Component) decode(msg bus.Message, dst []flow.Flow) []flow.Flow {
	c.metrics.messages.Inc()
	flows, err := flow.DecodeBatch(dst, msg.Value)
	if err != nil {
		c.metrics.badMessages.Inc()
		c.deps.Logger.Warn("skipping undecodable flow batch", "partition", msg.Partition, "offset", msg.Offset, "error", err)
	}
	return flows
}

func (c *Component) subscriber(a netip.Addr) bool {
	if len(c.deps.SubscriberNetworks) == 0 {
		return true
	}
	for _, p := range c.deps.SubscriberNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// emit publishes alerts, retrying until it succeeds or the detector stops:
// offsets are committed only after, so no alert is lost on a crash.
func (c *Component) emit(ctx context.Context, alerts []alert.Alert) bool {
	if len(alerts) == 0 {
		return true
	}
	msgs := make([]bus.Message, 0, len(alerts))
	for i := range alerts {
		b, err := alerts[i].Marshal()
		if err != nil {
			c.deps.Logger.Error("dropping alert", "error", err)
			continue
		}
		msgs = append(msgs, bus.Message{Key: []byte(alerts[i].SubscriberIP), Value: b})
		c.metrics.alerts.WithLabelValues(alerts[i].Kind, alerts[i].State).Inc()
	}
	backoff := 100 * time.Millisecond
	for {
		err := c.producer.Publish(ctx, msgs...)
		if err == nil {
			return true
		}
		if ctx.Err() != nil || errors.Is(err, bus.ErrClosed) {
			return false
		}
		c.metrics.publishErrs.Inc()
		c.deps.Logger.Warn("cannot publish alerts, retrying", "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Component) observe() {
	// The engine counts for itself (it knows nothing of Prometheus);
	// mirror what changed since the last look.
	s := c.engine.Stats()
	c.metrics.flows.Add(float64(s.Flows - c.prev.Flows))
	c.metrics.lateFlows.Add(float64(s.LateFlows - c.prev.LateFlows))
	c.metrics.invalidFlows.Add(float64(s.InvalidFlows - c.prev.InvalidFlows))
	c.metrics.allowListed.Add(float64(s.AllowListed - c.prev.AllowListed))
	c.prev = s
	c.metrics.subscribers.Set(float64(c.engine.Subscribers()))
	c.metrics.watermark.Set(float64(c.engine.Watermark()) / 1000)
}
