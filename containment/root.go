// Package containment turns incidents into a port-25 block list the edge
// applies: a policy (which alert kinds lead to block_smtp, walled or
// quarantine, after what grace, for how long; remediation's case steps
// through Contain), the list's state shared by every
// instance, an audit trail of every change (ClickHouse containment_actions,
// webhooks), and its exports (nftables, ipset, ExaBGP FlowSpec, plain,
// JSON) over the HTTP API and `wormsign blocklist`.
//
// State. With Kafka, the list is the compacted topic containment.topic
// (wormsign-containment-v1), keyed by prefix: each record is a Change
// carrying the entry as it is after it. Every instance reads the whole
// topic at start and follows it, applying records in log order (the last
// record of a prefix wins), so every instance, and `wormsign blocklist`,
// holds the same list, and it survives restarts. The instances share the
// alerts topic in consumer group containment.group: the owner of an
// alert's partition decides on it and publishes the change; timers (grace
// ends, expiries) run on every instance and record the same change with
// the same id, which the audit deduplicates. Without Kafka the list lives
// in memory and, with containment.state_file, in a file rewritten after
// every change.
//
// Time. Decisions run on event time: an alert's last_seen moves the
// policy's clock, and grace, hold and expiry are judged against it
// (Policy is pure, see policy.go). In live operation the wall clock also
// moves it every containment.tick, so that blocks end when no alert comes.
// The exports give each entry the time left until Expires at the time of
// the export.
package containment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
	"github.com/wormsign/wormsign/webhook"
)

// Holder is what the console calls when an acknowledgement asks to hold
// containment for an incident. The Component implements it, and
// HoldWithUndo, with which the console records an ack and its hold both or
// neither.
type Holder interface {
	Hold(ctx context.Context, incidentID, by, note string) error
}

// Dependencies of the component.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	AlertsTopic string
	// ClickHouse, when set, receives the audit trail.
	ClickHouse *clickhousedb.DB
	// Webhooks receive every change, signed as the sink signs alerts (the
	// targets of sink.webhooks).
	Webhooks []webhook.Configuration
	// The detector's allow list and groups (name -> networks).
	DetectorAllowList []network.Prefix
	DetectorGroups    map[string][]network.Prefix
	// Authorize checks a request to the API for the role its route needs
	// (the console's guard: see console.Guard.Authorize) and says who it
	// authenticated as: the actor of a hold, add or release. When it
	// returns false it has answered the request (401, 403, or 429 while
	// the client is throttled). Nil refuses every request.
	Authorize httpserver.AuthorizeFunc
	// Now is the wall clock; time.Now when nil.
	Now func() time.Time
}

// Component runs the policy on the alerts and keeps the list.
type Component struct {
	config  Configuration
	deps    Dependencies
	metrics metrics

	mu     sync.Mutex
	policy *Policy
	recent []Change // the latest changes, for the API without ClickHouse

	producer bus.Producer
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	// moved hears of customers whose bindings changed.
	moved chan string
	// coa sends RADIUS CoA requests; nil unless containment.coa.enabled.
	coa *coaSender
}

// New checks the configuration; it starts nothing.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if err := webhook.ValidateTargets("sink.webhooks", deps.Webhooks); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Component{config: config, deps: deps,
		policy: NewPolicy(config, deps.DetectorAllowList, deps.DetectorGroups), moved: make(chan string, 1024)}
	c.metrics = newMetrics(deps.Registry, c)
	if config.CoA.Enabled {
		var err error
		if c.coa, err = newCoASender(config.CoA, &c.metrics, deps.Logger, deps.Now); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// FollowIdentity makes a customer's entries follow it: when the bindings
// say its address changed, the block moves (see Policy.Follow). Call it
// before Start.
func (c *Component) FollowIdentity(store *identity.Store) {
	table := store.Table()
	c.policy.SetHoldings(func(customer string, t time.Time) []netip.Prefix {
		var out []netip.Prefix
		for _, b := range table.Holdings(customer, t.UnixMilli()) {
			if b.Source != identity.SourceCGNAT {
				out = append(out, b.Prefix)
			}
		}
		return out
	})
	if c.coa != nil {
		c.coa.holdings = func(customer string, t time.Time) []identity.Binding {
			return table.Holdings(customer, t.UnixMilli())
		}
	}
	store.OnApply(func(res identity.Applied) {
		for _, customer := range res.Customers {
			select {
			case c.moved <- customer:
			default: // the next tick follows every customer on the list
			}
		}
	})
}

const recentChanges = 1000

// kafkaBus is what containment needs of the Kafka bus.
type kafkaBus interface {
	EnsureTopic(ctx context.Context, topic string, partitions int, configs map[string]string) error
	Follow(ctx context.Context, topic string, fn func(bus.Message) error, caughtUp func()) error
}

// TopicConfig is the containment topic's configuration: compacted, and
// changes kept uncompacted for a week so the audit consumers see each.
var TopicConfig = map[string]string{
	"cleanup.policy":        "compact",
	"min.compaction.lag.ms": "604800000",
}

// Start loads the list (from the topic or the state file), then consumes
// alerts, runs the timers and writes the audit trail.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if err := c.load(ctx); err != nil {
		cancel()
		return err
	}
	var err error
	if c.producer, err = c.deps.Bus.Producer(c.config.Topic); err != nil {
		cancel()
		return fmt.Errorf("cannot publish containment changes: %w", err)
	}
	audit, err := c.deps.Bus.Consumer(c.config.Topic, c.config.Group+"-audit")
	if err != nil {
		cancel()
		return fmt.Errorf("cannot consume containment changes: %w", err)
	}
	alerts, err := c.deps.Bus.Consumer(c.deps.AlertsTopic, c.config.Group)
	if err != nil {
		cancel()
		return fmt.Errorf("cannot consume alerts: %w", err)
	}
	if c.coa != nil {
		c.coa.start(ctx)
	}
	c.wg.Add(4)
	go func() { defer c.wg.Done(); c.follow(ctx) }()
	go func() { defer c.wg.Done(); defer alerts.Close(); c.consumeAlerts(ctx, alerts) }()
	go func() { defer c.wg.Done(); defer audit.Close(); c.runAudit(ctx, audit) }()
	go func() { defer c.wg.Done(); c.tick(ctx) }()
	c.deps.Logger.Info("containment started", "entries", len(c.Entries()), "dry_run", c.config.DryRun,
		"grace", c.config.Grace, "duration", c.config.Duration)
	return nil
}

// load restores the list and, on Kafka, keeps following the topic.
func (c *Component) load(ctx context.Context) error {
	if kb, ok := c.deps.Bus.(kafkaBus); ok && c.deps.Bus.Durable() {
		if err := kb.EnsureTopic(ctx, c.config.Topic, 1, TopicConfig); err != nil {
			return err
		}
		caught := make(chan struct{})
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			err := retry.Do(ctx, retry.Backoff{Min: time.Second, Max: 30 * time.Second}, func(ctx context.Context) error {
				return kb.Follow(ctx, c.config.Topic, c.restoreMessage, func() { close(caught) })
			}, func(err error, wait time.Duration) {
				c.deps.Logger.Warn("cannot follow the containment topic", "error", err, "retry_in", wait)
			})
			if err != nil && ctx.Err() == nil {
				c.deps.Logger.Error("containment topic no longer followed", "error", err)
			}
		}()
		select {
		case <-caught:
			return nil
		case <-time.After(time.Minute):
			return fmt.Errorf("cannot read the containment topic %s within a minute", c.config.Topic)
		}
	}
	if c.config.StateFile == "" {
		c.deps.Logger.Info("containment list in memory only: it does not survive a restart (set containment.state_file)")
		return nil
	}
	entries, err := ReadStateFile(c.config.StateFile)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		c.policy.Restore(Change{Entry: e}, true)
	}
	return nil
}

// restoreMessage applies a record of the topic in log order. A Follow
// restart reads them all again from the start, which ends in the same
// list.
func (c *Component) restoreMessage(m bus.Message) error {
	if len(m.Value) == 0 {
		// A tombstone: the entry was removed (released_retention).
		if pfx, err := netip.ParsePrefix(string(m.Key)); err == nil {
			c.mu.Lock()
			c.policy.Remove(pfx)
			c.mu.Unlock()
		}
		return nil
	}
	var ch Change
	if err := json.Unmarshal(m.Value, &ch); err != nil {
		c.metrics.errors.WithLabelValues("decode").Inc()
		return nil
	}
	c.mu.Lock()
	c.policy.Restore(ch, true)
	c.mu.Unlock()
	return nil
}

// Stop ends the goroutines; the list is already where it is kept.
func (c *Component) Stop() error {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
	if c.coa != nil {
		c.coa.wait()
	}
	if c.producer != nil {
		return c.producer.Close()
	}
	return nil
}

func (c *Component) consumeAlerts(ctx context.Context, cons bus.Consumer) {
	bus.Each(ctx, cons, retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}, func(msg bus.Message) error {
		a, err := alert.Unmarshal(msg.Value)
		if err != nil {
			c.metrics.errors.WithLabelValues("decode").Inc()
			return nil
		}
		c.metrics.alerts.Inc()
		c.mu.Lock()
		changes := c.policy.Apply(a)
		c.mu.Unlock()
		// Fails only when ctx ended: the alert is read again after a restart.
		return c.record(ctx, changes)
	})
}

func (c *Component) tick(ctx context.Context) {
	t := time.NewTicker(c.config.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		now := c.deps.Now()
		changes := c.policy.Advance(now)
		// A session that expired, or a record missed, sends no word:
		// every customer on the list is followed each tick.
		changes = append(changes, c.policy.FollowAll(now)...)
		c.mu.Unlock()
		if c.record(ctx, changes) != nil {
			return
		}
		c.syncCoA("")
	}
}

// follow moves the entries of customers whose bindings changed.
func (c *Component) follow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case customer := <-c.moved:
			c.mu.Lock()
			changes := c.policy.Follow(customer, c.deps.Now())
			c.mu.Unlock()
			if c.record(ctx, changes) != nil {
				return
			}
			c.syncCoA(customer)
		}
	}
}

// record publishes changes (retrying until ctx ends) and saves the state
// file.
func (c *Component) record(ctx context.Context, changes []Change) error {
	// The timers a manual call ran before its own change happened first.
	c.mu.Lock()
	if d := c.policy.Deferred(); len(d) > 0 {
		changes = append(d, changes...)
	}
	c.mu.Unlock()
	if len(changes) == 0 {
		return nil
	}
	msgs := make([]bus.Message, len(changes))
	audited := make([]Change, 0, len(changes))
	for i, ch := range changes {
		// A removal is a tombstone: the key with no value, which
		// compaction turns into no record of the prefix at all.
		var body []byte
		if ch.Type != ChangeRemove {
			var err error
			if body, err = json.Marshal(ch); err != nil {
				return fmt.Errorf("cannot encode containment change: %w", err)
			}
			audited = append(audited, ch)
		}
		msgs[i] = bus.Message{Key: []byte(ch.Entry.Prefix.String()), Value: body}
		c.metrics.changes.WithLabelValues(ch.Type).Inc()
		c.deps.Logger.Info("containment "+ch.Type, "prefix", ch.Entry.Prefix, "action", ch.Entry.Action,
			"incident", ch.Entry.IncidentID, "kind", ch.Entry.Kind, "actor", ch.Actor, "note", ch.Note,
			"expires", ch.Entry.Expires, "dry_run", ch.DryRun)
	}
	c.mu.Lock()
	c.recent = append(c.recent, audited...)
	if len(c.recent) > recentChanges {
		c.recent = c.recent[len(c.recent)-recentChanges:]
	}
	c.mu.Unlock()
	err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}, func(ctx context.Context) error {
		return c.producer.Publish(ctx, msgs...)
	}, func(err error, wait time.Duration) {
		c.metrics.errors.WithLabelValues("publish").Inc()
		c.deps.Logger.Warn("cannot publish containment change", "error", err, "retry_in", wait)
	})
	if err != nil {
		return err
	}
	if c.config.StateFile != "" && !c.deps.Bus.Durable() {
		c.mu.Lock()
		records := c.policy.Records()
		c.mu.Unlock()
		if err := WriteStateFile(c.config.StateFile, records); err != nil {
			c.metrics.errors.WithLabelValues("state_file").Inc()
			c.deps.Logger.Error("cannot save the containment state", "error", err)
		}
	}
	if c.coa != nil {
		c.coa.record(changes)
	}
	return nil
}

// Entries returns the list as it is now: active, pending and held.
func (c *Component) Entries() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy.Entries()
}

// List is the export at the wall clock's now.
func (c *Component) List() List {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.deps.Now()
	c.policy.advanceTo(now)
	l := MakeList(c.policy.Entries(), c.policy.Now(), c.config.DryRun)
	l.Released = c.policy.Released()
	return l
}

// Add puts a prefix on the list by hand.
func (c *Component) Add(ctx context.Context, pfx network.Prefix, action, by, note string, d time.Duration) (Change, error) {
	c.mu.Lock()
	ch, err := c.policy.Add(pfx.Prefix, action, by, note, d, c.deps.Now())
	c.mu.Unlock()
	if err != nil {
		return ch, err
	}
	return ch, c.record(ctx, []Change{ch})
}

// Release takes a prefix off the list by hand.
func (c *Component) Release(ctx context.Context, pfx network.Prefix, by, note string) (Change, error) {
	c.mu.Lock()
	ch, err := c.policy.Release(pfx.Prefix, by, note, c.deps.Now())
	c.mu.Unlock()
	if err != nil {
		return ch, err
	}
	return ch, c.record(ctx, []Change{ch})
}

// Contain puts a remediation case's step on the list (see
// Policy.Contain) and records the changes.
func (c *Component) Contain(ctx context.Context, a CaseAction) ([]Change, error) {
	c.mu.Lock()
	changes, err := c.policy.Contain(a, c.deps.Now())
	c.mu.Unlock()
	return c.recordAll(ctx, changes, err)
}

// ReleaseIncidents releases the entries of a case's steps (see
// Policy.ReleaseIncidents) and records the changes.
func (c *Component) ReleaseIncidents(ctx context.Context, ids []string, by, note string) ([]Change, error) {
	c.mu.Lock()
	changes, err := c.policy.ReleaseIncidents(ids, by, note, c.deps.Now())
	c.mu.Unlock()
	return c.recordAll(ctx, changes, err)
}

// recordAll records changes even when the call that made them failed:
// the timers it ran are changes every other instance records too.
func (c *Component) recordAll(ctx context.Context, changes []Change, err error) ([]Change, error) {
	if rerr := c.record(ctx, changes); rerr != nil {
		return changes, rerr
	}
	return changes, err
}

// Hold implements Holder.
func (c *Component) Hold(ctx context.Context, incidentID, by, note string) error {
	_, err := c.hold(ctx, incidentID, by, note)
	return err
}

// hold holds every entry of the incident and returns the first change
// (the API's answer); all are recorded.
func (c *Component) hold(ctx context.Context, incidentID, by, note string) (Change, error) {
	c.mu.Lock()
	_, changes, err := c.policy.hold(incidentID, by, note, c.deps.Now())
	c.mu.Unlock()
	if err != nil {
		return Change{}, err
	}
	return changes[0], c.record(ctx, changes)
}

// HoldWithUndo holds as Hold does and returns undo, which takes the hold
// back (the entry gets its state, grace and expiry as they were, recorded
// as a change of its own) as long as the hold is still as it was made.
// The console holds first, then stores the ack that asked for the hold,
// and undoes the hold when the ack cannot be stored: both or neither.
func (c *Component) HoldWithUndo(ctx context.Context, incidentID, by, note string) (undo func(context.Context) error, err error) {
	c.mu.Lock()
	befores, held, err := c.policy.hold(incidentID, by, note, c.deps.Now())
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	undo = func(ctx context.Context) error {
		var changes []Change
		var errs []error
		c.mu.Lock()
		for i := range held {
			ch, err := c.policy.Unhold(befores[i], held[i], by, "hold undone: the acknowledgement that asked for it was not stored", c.deps.Now())
			changes, errs = append(changes, ch...), append(errs, err)
		}
		c.mu.Unlock()
		if err := c.record(ctx, changes); err != nil {
			return err
		}
		return errors.Join(errs...)
	}
	if err := c.record(ctx, held); err != nil {
		// Not published (ctx ended): take it back here too.
		undo(ctx)
		return nil, err
	}
	return undo, nil
}

// Recent returns the latest changes this process made, newest last.
func (c *Component) Recent() []Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Change(nil), c.recent...)
}

// ReadStateFile reads the entries saved by WriteStateFile; a missing file
// is an empty list.
func ReadStateFile(path string) ([]Entry, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read containment.state_file: %w", err)
	}
	var entries []Entry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("cannot parse containment.state_file %s: %w", path, err)
	}
	return entries, nil
}

// WriteStateFile replaces the file atomically (write, sync, rename).
func WriteStateFile(path string, entries []Entry) error {
	raw, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".containment-*")
	if err != nil {
		return fmt.Errorf("cannot write containment.state_file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write containment.state_file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write containment.state_file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write containment.state_file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cannot write containment.state_file: %w", err)
	}
	return nil
}

// ReadState reads the list as `wormsign blocklist` needs it: from the topic
// on Kafka (up to its end now), else from the state file.
func ReadState(ctx context.Context, config Configuration, b bus.Bus) (*Policy, error) {
	p := NewPolicy(config, nil, nil)
	if kb, ok := b.(interface {
		ReadSince(ctx context.Context, topic string, since time.Time, fn func(bus.Message) error) error
	}); ok && b != nil && b.Durable() {
		err := kb.ReadSince(ctx, config.Topic, time.Unix(0, 0), func(m bus.Message) error {
			if len(m.Value) == 0 { // a tombstone: the entry was removed
				if pfx, err := netip.ParsePrefix(string(m.Key)); err == nil {
					p.Remove(pfx)
				}
				return nil
			}
			var ch Change
			if err := json.Unmarshal(m.Value, &ch); err == nil {
				p.Restore(ch, true)
			}
			return nil
		})
		return p, err
	}
	if config.StateFile == "" {
		return nil, errors.New("no kafka.brokers and no containment.state_file: the list lives in the memory of the running wormsign; ask its API (GET /api/v1/blocklist)")
	}
	entries, err := ReadStateFile(config.StateFile)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		p.Restore(Change{Entry: e}, true)
	}
	return p, nil
}
