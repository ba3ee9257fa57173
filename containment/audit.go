package containment

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
	"github.com/wormsign/wormsign/sink"
)

// ChangeIDHeader repeats the change's id in webhook requests; EventHeader
// says "containment", to tell them from alerts.
const (
	ChangeIDHeader = "X-Wormsign-Change-Id"
	EventHeader    = "X-Wormsign-Event"
)

// runAudit writes every change of the topic to ClickHouse and the webhooks,
// in order, and commits it after both succeeded. On Kafka its consumer
// group (<group>-audit) is shared by the instances, so each change is
// written once (a duplicate record of a timer carries the same id: the
// table collapses it, and webhooks skip an id just delivered).
func (c *Component) runAudit(ctx context.Context, cons bus.Consumer) {
	backoff := retry.Backoff{Min: 200 * time.Millisecond, Max: 30 * time.Second}
	client := auditClient()
	last := map[string]string{} // prefix -> id of the last change delivered
	for {
		msg, err := bus.FetchRetrying(ctx, cons, backoff, nil)
		if err != nil {
			return
		}
		var ch Change
		if err := json.Unmarshal(msg.Value, &ch); err != nil {
			c.metrics.errors.WithLabelValues("decode").Inc()
		} else if last[ch.Entry.Prefix.String()] != ch.ID {
			if c.deps.ClickHouse != nil {
				err := retry.Do(ctx, backoff, func(ctx context.Context) error { return c.insert(ctx, ch) },
					func(err error, wait time.Duration) {
						c.metrics.errors.WithLabelValues("clickhouse").Inc()
						c.deps.Logger.Warn("cannot write containment action", "error", err, "retry_in", wait)
					})
				if err != nil {
					return
				}
				c.metrics.audited.Inc()
			}
			for _, w := range c.deps.Webhooks {
				if !c.deliver(ctx, client, w, msg.Value, ch.ID, backoff) {
					return
				}
			}
			last[ch.Entry.Prefix.String()] = ch.ID
		}
		if err := retry.Do(ctx, backoff, func(ctx context.Context) error { return cons.Commit(ctx, msg) }, nil); err != nil {
			return
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

// auditClient follows no redirect (it would turn the POST into a GET, or
// carry the change elsewhere): a 3xx counts as a failure and is retried.
func auditClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// deliver posts body to a webhook target until it answers 2xx, signed with
// the sink's signature (sink.Sign) so receivers verify alerts and changes
// alike.
func (c *Component) deliver(ctx context.Context, client *http.Client, w sink.WebhookConfiguration, body []byte, id string, backoff retry.Backoff) bool {
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	attempt := 0
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		attempt++
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodPost, w.URL, bytes.NewReader(body))
		if err != nil {
			return retry.Permanent(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(sink.SignatureHeader, sink.Sign([]byte(w.Secret), body))
		req.Header.Set(ChangeIDHeader, id)
		req.Header.Set(EventHeader, "containment")
		req.Header.Set(sink.AttemptHeader, fmt.Sprint(attempt))
		resp, err := client.Do(req)
		if err != nil {
			c.metrics.webhooks.WithLabelValues(w.Name, "error").Inc()
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			c.metrics.webhooks.WithLabelValues(w.Name, "rejected").Inc()
			return fmt.Errorf("webhook %s answered %s", w.Name, resp.Status)
		}
		c.metrics.webhooks.WithLabelValues(w.Name, "delivered").Inc()
		return nil
	}, func(err error, wait time.Duration) {
		c.deps.Logger.Warn("cannot deliver containment change", "target", w.Name, "error", err, "retry_in", wait)
	})
	return err == nil
}
