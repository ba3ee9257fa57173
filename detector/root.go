package detector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
)

// Dependencies of the detector.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	FlowsTopic  string
	AlertsTopic string
	// Subscribers says which flows are a subscriber's own (outbound):
	// only those are evaluated (network.Subscribers has the rule).
	Subscribers network.Subscribers
	// ResolveAtEnd resolves every open incident when the flows topic ends,
	// as replay wants at the end of its captures.
	ResolveAtEnd bool
	// Clock is the wall clock: what idle sources and idle partitions are
	// judged by. Nil is the system clock; tests drive their own.
	Clock Clock
	// Identity, when set, gives alerts of customers the binding behind
	// their address (source, session, since).
	Identity *identity.Table
}

// Component is the detector.
type Component struct {
	config   Configuration
	deps     Dependencies
	metrics  *metrics
	clock    Clock
	group    bus.GroupConsumer
	producer bus.Producer
	mapping  atomic.Pointer[Mapping]
	// budget is max_subscribers, shared by the partitions' engines.
	budget *SubscriberBudget

	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	partitions map[int]struct{} // for tests and introspection

	// The open incidents read back from the alerts topic, shared by the
	// partitions of one assignment (they all start together).
	historyMu  sync.Mutex
	history    []alert.Alert
	historyGen int32
	historyOK  bool
}

// New prepares a detector; it consumes nothing until Start. A configured
// subscriber map must load.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	c := &Component{
		config:     config,
		deps:       deps,
		metrics:    newMetrics(deps.Registry),
		clock:      cmp.Or[Clock](deps.Clock, systemClock{}),
		done:       make(chan struct{}),
		partitions: map[int]struct{}{},
		budget:     NewSubscriberBudget(config.MaxSubscribers),
	}
	if config.SubscriberMap != "" {
		m, err := LoadMapping(config.SubscriberMap)
		if err != nil {
			return nil, err
		}
		c.mapping.Store(m)
		c.metrics.mapEntries.Set(float64(m.Len()))
	}
	group, err := deps.Bus.Partitioned(deps.FlowsTopic, config.Group)
	if err != nil {
		return nil, fmt.Errorf("cannot join consumer group %s: %w", config.Group, err)
	}
	producer, err := deps.Bus.Producer(deps.AlertsTopic)
	if err != nil {
		group.Close()
		return nil, fmt.Errorf("cannot create alerts producer: %w", err)
	}
	c.group, c.producer = group, producer
	return c, nil
}

// Start consumes flows until Stop.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if c.config.SubscriberMap != "" {
		go c.reloadMapping(ctx)
	}
	go func() {
		defer close(c.done)
		if err := c.group.Consume(ctx, c.consume); err != nil {
			c.deps.Logger.Error("flow consumption stopped", "error", err)
		}
	}()
	return nil
}

// Drain, on a bus that is not durable, ends the flows topic and waits
// until the detector has evaluated every flow queued in it and published
// the alerts (resolving what is open with ResolveAtEnd): replay's output
// is complete only then. Call it once the collector has stopped; Stop
// follows. On Kafka it does nothing: a Kafka topic has no end, and what
// Stop leaves uncommitted is re-delivered.
func (c *Component) Drain() {
	if c.deps.Bus.Durable() || c.cancel == nil {
		return
	}
	c.deps.Bus.CloseTopic(c.deps.FlowsTopic)
	<-c.done
}

// Stop ends consumption after the message in hand; uncommitted offsets are
// re-delivered on the next start.
func (c *Component) Stop() error {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
	return errors.Join(c.group.Close(), c.producer.Close())
}

// Partitions lists the partitions this instance holds.
func (c *Component) Partitions() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.partitions))
	for p := range c.partitions {
		out = append(out, p)
	}
	return out
}

func (c *Component) subscriberID(a netip.Addr) string { return c.mapping.Load().Lookup(a) }

// reloadMapping re-reads the subscriber map when the file changes. A
// broken file is logged and counted; the previous map stays in use.
func (c *Component) reloadMapping(ctx context.Context) {
	tick := time.NewTicker(c.config.SubscriberMapReload)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		changed, err := c.mapping.Load().changed(c.config.SubscriberMap)
		if err == nil && !changed {
			continue
		}
		var m *Mapping
		if err == nil {
			m, err = LoadMapping(c.config.SubscriberMap)
		}
		if err != nil {
			c.metrics.mapErrors.Inc()
			c.deps.Logger.Warn("cannot reload subscriber map, keeping the previous one", "error", err)
			continue
		}
		c.mapping.Store(m)
		c.metrics.mapEntries.Set(float64(m.Len()))
		c.metrics.mapReloads.Inc()
		c.deps.Logger.Info("subscriber map reloaded", "entries", m.Len())
	}
}

// partition is the state of one claimed partition.
type partition struct {
	c      *Component
	claim  bus.Claim
	engine *Engine
	flows  []flow.Flow
	alerts []alert.Alert
	prev   EngineStats
	// prevLate is the late flows per exporter at the last observe.
	prevLate map[netip.Addr]uint64
	subs     int
	label    string
}

// consume runs one claimed partition: rebuild, then detect.
func (c *Component) consume(ctx context.Context, claim bus.Claim) {
	p := &partition{c: c, claim: claim, engine: c.newEngine(), label: strconv.Itoa(claim.Partition()),
		prevLate: map[netip.Addr]uint64{}}
	c.mu.Lock()
	c.partitions[claim.Partition()] = struct{}{}
	c.mu.Unlock()
	c.metrics.partitions.Inc()
	defer func() {
		c.mu.Lock()
		delete(c.partitions, claim.Partition())
		c.mu.Unlock()
		c.metrics.partitions.Dec()
		c.metrics.subscribers.Sub(float64(p.subs))
		c.metrics.watermark.DeleteLabelValues(p.label)
		// The next owner of the partition holds these subscribers now: they
		// no longer count against this instance's max_subscribers.
		p.engine.Release()
	}()
	if !p.rebuild(ctx) || !p.inherit(ctx) {
		return
	}
	p.run(ctx)
}

func (c *Component) newEngine() *Engine {
	e := NewEngine(c.config)
	e.SetSubscriberIDs(c.subscriberID)
	e.SetSubscribers(c.deps.Subscribers)
	if t := c.deps.Identity; t != nil {
		e.SetIdentity(func(a netip.Addr, ms int64) (identity.Binding, bool) {
			res, ok := t.Resolve(a, 0, ms)
			return res.Binding, ok && res.Customer != ""
		})
	}
	e.SetSubscriberBudget(c.budget)
	return e
}

// readBackBackoff paces the read-backs of a new partition owner while
// Kafka cannot serve them, typically for the seconds after a broker is
// lost and before its partitions have new leaders.
var readBackBackoff = retry.Backoff{Min: 250 * time.Millisecond, Max: 5 * time.Second, Jitter: true}

// readBack runs one of a new owner's read-backs until it succeeds (true)
// or the partition is taken away (false): only the end of ctx stops the
// retries. Each failure is logged with failure and counted.
func (p *partition) readBack(ctx context.Context, failure string, read func(ctx context.Context) error) bool {
	err := retry.Do(ctx, readBackBackoff, read, func(err error, wait time.Duration) {
		p.c.metrics.rebuildErrors.Inc()
		p.c.deps.Logger.Warn(failure+", retrying before detecting",
			"partition", p.claim.Partition(), "error", err, "retry_in", wait.Round(time.Millisecond))
	})
	return err == nil
}

// rebuild re-reads rebuild_lookback of the partition into the engine
// without publishing. It retries until it succeeds or the partition is
// taken away (false): detecting from an empty state would open again, or
// miss, what the previous owner's windows held.
func (p *partition) rebuild(ctx context.Context) bool {
	c := p.c
	if c.config.RebuildLookback <= 0 {
		return true
	}
	began := time.Now()
	n := 0
	ok := p.readBack(ctx, "cannot rebuild partition state", func(ctx context.Context) error {
		if n > 0 {
			// A read-back that broke off part-way left part of the
			// lookback in the engine: start again from nothing.
			p.engine.Release()
			p.engine = c.newEngine()
			n = 0
		}
		return p.claim.ReadBack(ctx, time.Now().Add(-c.config.RebuildLookback), func(msg bus.Message) error {
			// What the previous owner already published is not published
			// again: only the state is wanted.
			p.process(ctx, msg, false)
			n++
			return nil
		})
	})
	if !ok {
		return false
	}
	if n > 0 {
		c.deps.Logger.Info("partition state rebuilt", "partition", p.claim.Partition(),
			"messages", n, "subscribers", p.engine.Subscribers(), "duration", time.Since(began).Round(time.Millisecond))
	}
	c.metrics.rebuildMessages.Add(float64(n))
	p.observe()
	return true
}

// inherit takes over the incidents the partition's previous owners left
// open. It retries until it succeeds or the partition is taken away
// (false): detecting without them would open each again under a new id,
// a second case for the same customer at the abuse desk.
func (p *partition) inherit(ctx context.Context) bool {
	c := p.c
	h, ok := c.deps.Bus.(bus.History)
	if !ok || c.config.IncidentLookback <= 0 {
		return true
	}
	var open []alert.Alert
	ok = p.readBack(ctx, "cannot read open incidents back", func(ctx context.Context) error {
		var err error
		open, err = c.openIncidents(ctx, h, p.claim.Generation())
		return err
	})
	if !ok {
		return false
	}
	p.engine.Inherit(open)
	return true
}

// openIncidents reads the alerts topic back over incident_lookback and
// returns the last event of every incident not resolved. The alerts are
// keyed by subscriber, so each incident's events are in order.
func (c *Component) openIncidents(ctx context.Context, h bus.History, generation int32) ([]alert.Alert, error) {
	c.historyMu.Lock()
	defer c.historyMu.Unlock()
	if c.historyOK && c.historyGen == generation {
		return c.history, nil
	}
	last := map[string]alert.Alert{}
	err := h.ReadSince(ctx, c.deps.AlertsTopic, time.Now().Add(-c.config.IncidentLookback), func(m bus.Message) error {
		a, err := alert.Unmarshal(m.Value)
		if err != nil {
			return nil // not ours to judge; the sink counts it
		}
		last[a.SubscriberIP+"|"+a.Kind] = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	var open []alert.Alert
	for _, a := range last {
		if a.State != alert.StateResolved {
			open = append(open, a)
		}
	}
	c.history, c.historyGen, c.historyOK = open, generation, true
	return open, nil
}

// run detects on the claimed partition's messages: whole fetches, read
// and processed in this goroutine, with the clock's ticks looked at
// between them (a fetch waits at most 250 ms for new messages).
func (p *partition) run(ctx context.Context) {
	c := p.c
	ticks, stopTicks := c.clock.Ticker()
	defer stopTicks()
	// Only the last finished message's offset matters to a commit; it is
	// kept without its flows, which are garbage once processed.
	var finished bus.Message
	var uncommitted bool
	lastFlowWall, lastCommit, lastObserve := c.clock.Now(), time.Now(), time.Now()
	// Whatever ends this loop, commit what was finished: on a rebalance
	// the next owner starts exactly after it.
	defer func() {
		if uncommitted {
			p.commit(finished)
		}
		p.observe()
	}()
	var batch []bus.Message
	for {
		var err error
		batch, err = p.claim.FetchBatch(ctx, batch[:0])
		for i := range batch {
			if !p.process(ctx, batch[i], true) {
				return
			}
			finished, uncommitted = bus.Message{Partition: batch[i].Partition, Offset: batch[i].Offset}, true
		}
		if len(batch) > 0 {
			lastFlowWall = c.clock.Now()
			clear(batch) // the values are garbage once processed
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, bus.ErrClosed):
			if c.deps.ResolveAtEnd {
				c.emit(ctx, p.engine.Flush())
			}
			return
		case err != nil:
			// Keep the partition through fetch errors: giving up would
			// stall it until the next rebalance.
			c.metrics.fetchErrors.Inc()
			c.deps.Logger.Error("cannot fetch flows, retrying", "partition", p.claim.Partition(), "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		select {
		case now := <-ticks:
			p.engine.SetWallClock(now.UnixMilli())
			// Without traffic event time stands still and incidents would
			// never resolve: let it follow the wall clock while idle.
			if idle := now.Sub(lastFlowWall); idle >= c.config.IdleAdvance && p.engine.Watermark() > 0 {
				if !c.emit(ctx, p.engine.Advance(p.engine.Watermark()+time.Second.Milliseconds())) {
					return
				}
			}
		default:
		}
		// The metrics follow the engine when the partition catches up and
		// every 100 ms under load: reading them per message cost as much
		// as detecting in some flows.
		if len(batch) == 0 || time.Since(lastObserve) >= 100*time.Millisecond {
			p.observe()
			lastObserve = time.Now()
		}
		if uncommitted && time.Since(lastCommit) >= c.config.CommitInterval {
			if p.commit(finished) {
				uncommitted = false
				lastCommit = time.Now()
			}
		}
	}
}

func (p *partition) commit(last bus.Message) bool {
	// Not the consumption context: the final commit of a revoked
	// partition runs after it ended.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.claim.Commit(ctx, last); err != nil {
		p.c.deps.Logger.Warn("cannot commit flow offsets", "partition", p.claim.Partition(), "error", err)
		return false
	}
	return true
}

// process evaluates one message's flows; with publish false (rebuilding)
// the alerts are dropped. It reports false when the detector stops.
func (p *partition) process(ctx context.Context, msg bus.Message, publish bool) bool {
	c := p.c
	c.metrics.messages.Inc()
	var err error
	p.flows, err = flow.DecodeBatch(p.flows[:0], msg.Value)
	if err != nil {
		c.metrics.badMessages.Inc()
		c.deps.Logger.Warn("skipping undecodable flow batch", "partition", msg.Partition, "offset", msg.Offset, "error", err)
	}
	// One write for the alerts of the whole message: each write waits for
	// the brokers.
	p.alerts = p.alerts[:0]
	p.engine.SetWallClock(c.clock.Now().UnixMilli())
	for i := range p.flows {
		// In the subscriber's order, so that an answer finds the flow it
		// answers recorded (network.Attempt), the same way in a replay.
		switch _, dir := c.deps.Subscribers.Of(p.flows[i].SrcAddr, p.flows[i].DstAddr); dir {
		case network.Outbound:
			p.alerts = append(p.alerts, p.engine.ProcessFrom(msg.Origin, msg.LowMs, &p.flows[i])...)
		case network.Inbound:
			p.engine.Receive(&p.flows[i])
		}
	}
	return !publish || c.emit(ctx, p.alerts)
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
	err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
		err := c.producer.Publish(ctx, msgs...)
		if errors.Is(err, bus.ErrClosed) {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, _ time.Duration) {
		c.metrics.publishErrs.Inc()
		c.deps.Logger.Warn("cannot publish alerts, retrying", "error", err)
	})
	return err == nil
}

func (p *partition) observe() {
	// The engine counts for itself (it knows nothing of Prometheus);
	// mirror what changed since the last look.
	m := p.c.metrics
	s := p.engine.Stats()
	m.flows.Add(float64(s.Flows - p.prev.Flows))
	m.invalidFlows.Add(float64(s.InvalidFlows - p.prev.InvalidFlows))
	m.futureFlows.Add(float64(s.FutureFlows - p.prev.FutureFlows))
	m.allowListed.Add(float64(s.AllowListed - p.prev.AllowListed))
	m.evicted.Add(float64(s.Evicted - p.prev.Evicted))
	m.answers.Add(float64(s.Answers - p.prev.Answers))
	m.keyCollisions.Add(float64(s.KeyCollisions - p.prev.KeyCollisions))
	m.received.Add(float64(s.Received - p.prev.Received))
	m.displaced.Add(float64(s.Displaced - p.prev.Displaced))
	m.refused.Add(float64(s.Refused - p.prev.Refused))
	p.prev = s
	for exporter, n := range p.engine.LateByExporter() {
		if d := n - p.prevLate[exporter]; d > 0 {
			label := "other"
			if exporter.IsValid() {
				label = exporter.String()
			}
			m.lateFlows.WithLabelValues(label).Add(float64(d))
			p.prevLate[exporter] = n
		}
	}
	n := p.engine.Subscribers()
	m.subscribers.Add(float64(n - p.subs))
	p.subs = n
	m.watermark.WithLabelValues(p.label).Set(float64(p.engine.Watermark()) / 1000)
}
