package containment

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
	"github.com/wormsign/wormsign/webhook"
)

// ChangeIDHeader repeats the change's id in webhook requests; EventHeader
// says "containment", to tell them from alerts. Both come beside the
// headers of every webhook (webhook.SignatureHeader, webhook.AttemptHeader):
// receivers verify alerts and changes alike.
const (
	ChangeIDHeader = "X-Wormsign-Change-Id"
	EventHeader    = "X-Wormsign-Event"
)

// auditWebhookPolicy is how the audit delivers a change to a webhook
// target. Unlike ClickHouse, a webhook is not waited for: each change gets
// Attempts attempts (about four minutes of backoff), then it is dropped
// and counted (wormsign_webhook_dropped_total{component="containment",
// reason="gave_up"}); while a target is down the changes queue up to Queue,
// and beyond it the oldest are dropped (reason="queue_full"). Either way
// the audit then commits past the change: it is in ClickHouse.
var auditWebhookPolicy = webhook.Policy{MinBackoff: time.Second, MaxBackoff: time.Minute, Attempts: 10, Queue: 10000, DropOldest: true}

// auditClickHouseQueue bounds the changes waiting for ClickHouse, which
// must have every one: while it is full the audit reads no further (the
// changes wait in the topic, uncommitted).
const auditClickHouseQueue = 1000

// runAudit writes every change of the topic to ClickHouse and the webhooks.
// Each target has a queue and a goroutine of its own, so a target that is
// down or slow holds back none of the others; ClickHouse is retried until
// it succeeds, a webhook as auditWebhookPolicy says. The audit commits a
// change once every target is done with it (ClickHouse wrote it, each
// webhook delivered it or gave it up), in the topic's order, so that a
// restart delivers again what a target did not have. On Kafka its consumer
// group (<group>-audit) is shared by the instances, so each change is
// written once (a duplicate record of a timer carries the same id: the
// table collapses it, and webhooks skip an id just delivered).
func (c *Component) runAudit(ctx context.Context, cons bus.Consumer) {
	a := &auditor{c: c, cons: cons, commits: newCommitTracker()}
	var err error
	a.webhooks, err = webhook.StartAll(c.deps.Webhooks, auditWebhookPolicy, webhook.Dependencies{
		Logger: c.deps.Logger, Registry: c.deps.Registry, Component: "containment"})
	if err != nil { // New validated the targets: does not happen
		c.deps.Logger.Error("containment changes not sent to a webhook", "error", err)
	}
	var wg sync.WaitGroup
	if c.deps.ClickHouse != nil {
		a.clickhouse = make(chan *auditItem, auditClickHouseQueue)
		wg.Add(1)
		go func() { defer wg.Done(); a.writeClickHouse(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); a.commitLoop(ctx) }()
	a.read(ctx)
	for _, d := range a.webhooks {
		d.Stop()
	}
	wg.Wait()
	// What the targets finished before the stop is committed now, so that
	// a restart does not deliver it again.
	final, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.commit(final)
}

// auditor runs the audit of one component's Start.
type auditor struct {
	c          *Component
	cons       bus.Consumer
	webhooks   []*webhook.Deliverer
	clickhouse chan *auditItem // nil without ClickHouse
	commits    *commitTracker
}

// auditItem is a record of the topic on its way to the targets.
type auditItem struct {
	msg  bus.Message
	ch   Change
	left int // targets not done with it yet; under commitTracker.mu
}

var auditBackoff = retry.Backoff{Min: 200 * time.Millisecond, Max: 30 * time.Second}

// read hands every change to each target's queue until ctx ends.
func (a *auditor) read(ctx context.Context) {
	last := map[string]string{} // prefix -> id of the last change handed on
	for {
		msg, err := bus.FetchRetrying(ctx, a.cons, auditBackoff, nil)
		if err != nil {
			return
		}
		item := &auditItem{msg: msg}
		record := false
		switch {
		case len(msg.Value) == 0:
			// A tombstone (a released entry removed from the topic):
			// nothing to record, committed in its turn.
		case json.Unmarshal(msg.Value, &item.ch) != nil:
			a.c.metrics.errors.WithLabelValues("decode").Inc()
		case last[item.ch.Entry.Prefix.String()] != item.ch.ID:
			last[item.ch.Entry.Prefix.String()] = item.ch.ID
			record = true
		}
		if !record {
			a.commits.add(item, 0)
			continue
		}
		targets := len(a.webhooks)
		if a.clickhouse != nil {
			targets++
		}
		a.commits.add(item, targets)
		if a.clickhouse != nil {
			select {
			case a.clickhouse <- item:
			case <-ctx.Done():
				return
			}
		}
		for _, d := range a.webhooks {
			header := http.Header{}
			header.Set(ChangeIDHeader, item.ch.ID)
			header.Set(EventHeader, "containment")
			// Never waits: a full queue drops its oldest change.
			d.Enqueue(ctx, webhook.Event{Body: msg.Value, ID: item.ch.ID, Header: header,
				Done: func(webhook.Result) { a.commits.done(item) }})
		}
	}
}

// writeClickHouse writes the changes of its queue to containment_actions,
// each retried until it succeeds or ctx ends.
func (a *auditor) writeClickHouse(ctx context.Context) {
	for {
		var item *auditItem
		select {
		case item = <-a.clickhouse:
		case <-ctx.Done():
			return
		}
		err := retry.Do(ctx, auditBackoff, func(ctx context.Context) error { return a.c.insert(ctx, item.ch) },
			func(err error, wait time.Duration) {
				a.c.metrics.errors.WithLabelValues("clickhouse").Inc()
				a.c.deps.Logger.Warn("cannot write containment action", "error", err, "retry_in", wait)
			})
		if err != nil {
			return // ctx ended: not committed, written after a restart
		}
		a.c.metrics.audited.Inc()
		a.commits.done(item)
	}
}

// commitLoop commits what the targets are done with, as they finish.
func (a *auditor) commitLoop(ctx context.Context) {
	for {
		select {
		case <-a.commits.ready:
		case <-ctx.Done():
			return
		}
		a.commit(ctx)
	}
}

// commit commits the records every target is done with, retrying while
// Kafka is away; what ctx cuts short is kept for the next commit.
func (a *auditor) commit(ctx context.Context) {
	msgs := a.commits.take()
	if len(msgs) == 0 {
		return
	}
	err := retry.Do(ctx, auditBackoff, func(ctx context.Context) error { return a.cons.Commit(ctx, msgs...) },
		func(err error, wait time.Duration) {
			a.c.metrics.errors.WithLabelValues("commit").Inc()
			a.c.deps.Logger.Warn("cannot commit the containment audit position", "error", err, "retry_in", wait)
		})
	if err != nil {
		a.commits.putBack(msgs)
	}
}

// commitTracker keeps the records read in order until every target is
// done with them: only then, and only after every record before them, may
// their offsets be committed.
type commitTracker struct {
	mu       sync.Mutex
	pending  []*auditItem        // in the order read
	finished map[int]bus.Message // partition -> the latest record done, uncommitted
	ready    chan struct{}       // a record is done
}

func newCommitTracker() *commitTracker {
	return &commitTracker{finished: map[int]bus.Message{}, ready: make(chan struct{}, 1)}
}

// add appends item, which targets targets have to be done with.
func (t *commitTracker) add(item *auditItem, targets int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	item.left = targets
	t.pending = append(t.pending, item)
	t.advance()
}

// done says one target is done with item.
func (t *commitTracker) done(item *auditItem) {
	t.mu.Lock()
	defer t.mu.Unlock()
	item.left--
	t.advance()
}

// advance moves the done records at the head of pending to finished; t.mu
// is held.
func (t *commitTracker) advance() {
	n := 0
	for n < len(t.pending) && t.pending[n].left <= 0 {
		m := t.pending[n].msg
		if o, ok := t.finished[m.Partition]; !ok || m.Offset > o.Offset {
			t.finished[m.Partition] = m
		}
		t.pending[n] = nil
		n++
	}
	if n == 0 {
		return
	}
	t.pending = t.pending[n:]
	select {
	case t.ready <- struct{}{}:
	default:
	}
}

// take returns the records to commit (the latest done per partition).
func (t *commitTracker) take() []bus.Message {
	t.mu.Lock()
	defer t.mu.Unlock()
	msgs := make([]bus.Message, 0, len(t.finished))
	for p, m := range t.finished {
		msgs = append(msgs, m)
		delete(t.finished, p)
	}
	return msgs
}

// putBack returns records take gave but that were not committed.
func (t *commitTracker) putBack(msgs []bus.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		if o, ok := t.finished[m.Partition]; !ok || m.Offset > o.Offset {
			t.finished[m.Partition] = m
		}
	}
}

func (c *Component) insert(ctx context.Context, ch Change) error {
	db := c.deps.ClickHouse
	batch, err := db.Conn().PrepareBatch(ctx, "INSERT INTO "+db.Database()+".containment_actions "+
		"(date, at, id, type, prefix, action, subscriber_id, incident_id, kind, actor, note, since, expires, dry_run)")
	if err != nil {
		return fmt.Errorf("cannot prepare containment_actions insert: %w", err)
	}
	e := ch.Entry
	dry := uint8(0)
	if ch.DryRun {
		dry = 1
	}
	at := ch.At.UTC()
	if err := batch.Append(at, at, ch.ID, ch.Type, e.Prefix.String(), e.Action, e.SubscriberID, e.IncidentID,
		e.Kind, ch.Actor, ch.Note, clampTime(e.Since), clampTime(e.Expires), dry); err != nil {
		batch.Abort()
		return fmt.Errorf("cannot append containment action: %w", err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert containment action: %w", err)
	}
	return nil
}

// clampTime maps the zero time to the epoch, which DateTime can hold.
func clampTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return t.UTC()
}
