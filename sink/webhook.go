package sink

import (
	"context"
	"net/http"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
	"github.com/wormsign/wormsign/webhook"
)

// AlertIDHeader repeats the alert's id in a webhook request, beside the
// headers every webhook carries (webhook.SignatureHeader,
// webhook.AttemptHeader). The body is the alert's JSON exactly as the
// detector published it on the alerts topic. A receiver that must not see
// an event twice keys it on (id, state, window_end).
const AlertIDHeader = "X-Wormsign-Alert-Id"

// webhookReadAhead is how many alerts a target's deliverer holds with
// Kafka: the broker keeps the rest, and the fetch waits for room.
const webhookReadAhead = 16

// webhookTarget delivers every alert of the alerts topic to one URL, in
// order, each until the target accepts it (2xx), and commits it after. It
// consumes in a consumer group of its own: a target that is down holds
// back only its own position, which Kafka keeps across restarts, while the
// other targets go on.
type webhookTarget struct {
	consumer  bus.Consumer
	deliverer *webhook.Deliverer
	durable   bool
	drain     time.Duration
	deps      Dependencies
	metrics   *metrics
}

func newWebhookTarget(config webhook.Configuration, consumer bus.Consumer, durable bool, sink Configuration,
	deps Dependencies, m *metrics) (*webhookTarget, error) {
	policy := webhook.Policy{MinBackoff: sink.WebhookMinBackoff, MaxBackoff: sink.WebhookMaxBackoff, Queue: webhookReadAhead}
	if !durable {
		// The in-process bus blocks its producer while any group's queue
		// is full, so a target down for an hour would stall the
		// detector: the deliverer's queue is the backlog instead, up to
		// webhook_backlog alerts, and drops the oldest beyond (counted).
		policy.Queue, policy.DropOldest = sink.WebhookBacklog, true
	}
	d, err := webhook.New(config, policy, webhook.Dependencies{
		Logger: deps.Logger, Registry: deps.Registry, Component: "sink"})
	if err != nil {
		return nil, err
	}
	return &webhookTarget{consumer: consumer, deliverer: d, durable: durable, drain: sink.DrainTimeout,
		deps: deps, metrics: m}, nil
}

func (w *webhookTarget) run(ctx context.Context) {
	w.deliverer.Start()
	defer w.deliverer.Stop()
	if w.durable {
		// With Kafka, Stop stops at once: what was not delivered is
		// re-delivered from the committed position on the next start.
		w.fetch(ctx, ctx)
		return
	}
	// The in-process bus keeps nothing, so there Stop first delivers what
	// is queued, in the bus (read until its topic is closed) and in the
	// deliverer, within the drain timeout.
	drainCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.drain, cancel) })
	defer stop()
	w.fetch(drainCtx, ctx)
	<-ctx.Done()
	w.deliverer.Drain(drainCtx)
}

// fetch hands the alerts to the deliverer, which commits each once done
// with it, in order, until the input or ctx ends.
func (w *webhookTarget) fetch(ctx, commitCtx context.Context) {
	logger := w.deps.Logger.With("webhook", w.deliverer.Name())
	for {
		msg, err := bus.FetchRetrying(ctx, w.consumer, fetchBackoff, fetchWarning(logger))
		if err != nil {
			return
		}
		a, err := alert.Unmarshal(msg.Value)
		if err != nil {
			// Skipped; the next commit covers its offset (until then a
			// restart reads it, and skips it, again).
			w.metrics.badMessages.WithLabelValues("alerts").Inc()
			logger.Warn("skipping undecodable alert", "partition", msg.Partition, "offset", msg.Offset, "error", err)
			continue
		}
		header := http.Header{}
		header.Set(AlertIDHeader, a.ID)
		ev := webhook.Event{Body: msg.Value, ID: a.ID, Header: header,
			// Without Kafka the commit does nothing, and an overflowed
			// alert is gone; with Kafka every alert is delivered.
			Done: func(webhook.Result) { w.commit(commitCtx, msg) }}
		if err := w.deliverer.Enqueue(ctx, ev); err != nil {
			return
		}
	}
}

// commit records the delivery, retrying while Kafka is away.
func (w *webhookTarget) commit(ctx context.Context, msg bus.Message) {
	retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}, func(ctx context.Context) error {
		return w.consumer.Commit(ctx, msg)
	}, func(err error, wait time.Duration) {
		w.deps.Logger.Warn("cannot commit webhook position, retrying", "webhook", w.deliverer.Name(), "error", err, "backoff", wait)
	})
}
