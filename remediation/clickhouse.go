package remediation

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/wormsign/wormsign/retry"
)

// persist writes events and cases, the cases they changed as they are
// now, to ClickHouse, retrying until ctx ends: a decision is in ClickHouse before the alert
// behind it is committed, so a restart never forgets a case. Without
// ClickHouse it does nothing.
func (c *Component) persist(ctx context.Context, events []Event, cases []Case) error {
	if c.deps.ClickHouse == nil || len(events) == 0 {
		return nil
	}
	return retry.Do(ctx, retry.Backoff{Min: 200 * time.Millisecond, Max: 10 * time.Second}, func(ctx context.Context) error {
		return c.insert(ctx, cases, events)
	}, func(err error, wait time.Duration) {
		c.metrics.errors.WithLabelValues("clickhouse").Inc()
		c.deps.Logger.Warn("cannot write cases to ClickHouse", "error", err, "retry_in", wait)
	})
}

func (c *Component) insert(ctx context.Context, cases []Case, events []Event) error {
	db := c.deps.ClickHouse
	batch, err := db.Conn().PrepareBatch(ctx, "INSERT INTO "+db.Database()+".case_events (date, at, id, case_id, seq, customer, type, actor, note, state)")
	if err != nil {
		return fmt.Errorf("cannot prepare case_events insert: %w", err)
	}
	for _, ev := range events {
		at := ev.At.UTC()
		if err := batch.Append(at, at, ev.ID, ev.CaseID, ev.Seq, ev.Customer, ev.Type, ev.Actor, ev.Note, ev.State); err != nil {
			batch.Abort()
			return fmt.Errorf("cannot append case event: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert case events: %w", err)
	}
	if len(cases) == 0 {
		return nil
	}
	batch, err = db.Conn().PrepareBatch(ctx, "INSERT INTO "+db.Database()+".cases (id, customer, subscriber_id, subscriber_ip, state, kinds, opened, updated, version, data)")
	if err != nil {
		return fmt.Errorf("cannot prepare cases insert: %w", err)
	}
	for _, cs := range cases {
		data, err := json.Marshal(cs)
		if err != nil {
			batch.Abort()
			return fmt.Errorf("cannot encode case: %w", err)
		}
		kinds := cs.Kinds
		if kinds == nil {
			kinds = []string{}
		}
		if err := batch.Append(cs.ID, cs.Customer, cs.SubscriberID, cs.SubscriberIP, cs.State, kinds,
			cs.Opened.UTC(), cs.Updated.UTC(), cs.Version, string(data)); err != nil {
			batch.Abort()
			return fmt.Errorf("cannot append case: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert cases: %w", err)
	}
	return nil
}

// load restores the cases that may still matter (not over, or over within
// reopen_within) and their histories.
func (c *Component) load(ctx context.Context) error {
	db := c.deps.ClickHouse
	since := c.deps.Now().Add(-c.config.ReopenWithin - c.config.CloseAfter).UTC()
	rows, err := db.Conn().Query(ctx, "SELECT data FROM "+db.Database()+".cases FINAL WHERE state NOT IN ('closed', 'false_positive') OR updated >= ? ORDER BY updated LIMIT ?",
		since, c.config.MaxCases)
	if err != nil {
		return fmt.Errorf("cannot read cases: %w", err)
	}
	var cases []Case
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			rows.Close()
			return fmt.Errorf("cannot read cases: %w", err)
		}
		var cs Case
		if err := json.Unmarshal([]byte(data), &cs); err != nil {
			c.metrics.errors.WithLabelValues("decode").Inc()
			continue
		}
		cases = append(cases, cs)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cannot read cases: %w", err)
	}
	for _, cs := range cases {
		events, err := c.loadEvents(ctx, cs.ID)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.book.Restore(cs, events)
		c.mu.Unlock()
	}
	if len(cases) > 0 {
		c.deps.Logger.Info("remediation cases restored", "cases", len(cases))
	}
	return nil
}

func (c *Component) loadEvents(ctx context.Context, id string) ([]Event, error) {
	db := c.deps.ClickHouse
	rows, err := db.Conn().Query(ctx, "SELECT at, id, seq, customer, type, actor, note, state FROM "+db.Database()+
		".case_events FINAL WHERE case_id = ? ORDER BY seq DESC LIMIT ?", id, maxEvents)
	if err != nil {
		return nil, fmt.Errorf("cannot read case events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		ev := Event{CaseID: id}
		if err := rows.Scan(&ev.At, &ev.ID, &ev.Seq, &ev.Customer, &ev.Type, &ev.Actor, &ev.Note, &ev.State); err != nil {
			return nil, fmt.Errorf("cannot read case events: %w", err)
		}
		out = append(out, ev)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, rows.Err()
}
