package sink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
)

// Webhook request headers. The body is the alert's JSON exactly as the
// detector published it on the alerts topic.
const (
	// SignatureHeader carries "sha256=" and the lower-case hex HMAC-SHA256
	// of the raw request body, keyed with the target's secret.
	SignatureHeader = "X-Wormsign-Signature"
	// AlertIDHeader repeats the alert's id.
	AlertIDHeader = "X-Wormsign-Alert-Id"
	// AttemptHeader counts delivery attempts of this alert by this sink
	// process, from 1. Deliveries are at least once: a receiver that must
	// not see an event twice keys it on (id, state, window_end).
	AttemptHeader = "X-Wormsign-Attempt"
)

// Sign returns the SignatureHeader value for body.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// VerifySignature checks a SignatureHeader value in constant time.
func VerifySignature(secret, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

// webhookTarget delivers every alert of the alerts topic to one URL, in
// order, each until the target accepts it (2xx). It consumes in a consumer
// group of its own: a target that is down holds back only its own position,
// which Kafka keeps across restarts, while the other targets go on.
type webhookTarget struct {
	config     WebhookConfiguration
	secret     []byte
	consumer   bus.Consumer
	durable    bool
	minBackoff time.Duration
	maxBackoff time.Duration
	drain      time.Duration
	backlog    int
	client     *http.Client
	logger     *slog.Logger
	metrics    *metrics
}

func newWebhookTarget(config WebhookConfiguration, consumer bus.Consumer, durable bool, sink Configuration,
	logger *slog.Logger, m *metrics) *webhookTarget {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 2
	return &webhookTarget{
		config: config, secret: []byte(config.Secret), consumer: consumer, durable: durable,
		minBackoff: sink.WebhookMinBackoff, maxBackoff: sink.WebhookMaxBackoff, drain: sink.DrainTimeout,
		backlog: sink.WebhookBacklog,
		client: &http.Client{
			Transport: transport,
			// A redirect would turn the POST into a GET: report it as a
			// failure instead, so that the target gets fixed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		logger: logger.With("webhook", config.Name), metrics: m,
	}
}

func (w *webhookTarget) run(ctx context.Context) {
	// With Kafka, Stop stops at once: what was not delivered is
	// re-delivered from the committed position on the next start. The
	// in-process bus keeps nothing, so there Stop first delivers what is
	// queued, within the drain timeout.
	workCtx := ctx
	if !w.durable {
		var cancel context.CancelFunc
		workCtx, cancel = context.WithCancel(context.Background())
		defer cancel()
		stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.drain, cancel) })
		defer stop()
	}
	var consumer bus.Consumer = w.consumer
	if !w.durable {
		consumer = newBacklog(workCtx, w.consumer, w.backlog, w.metrics.webhookDropped.WithLabelValues(w.config.Name).Inc)
	}
	for {
		msg, err := bus.FetchRetrying(workCtx, consumer, fetchBackoff, fetchWarning(w.logger))
		if err != nil {
			return
		}
		a, err := alert.Unmarshal(msg.Value)
		if err != nil {
			w.metrics.badMessages.WithLabelValues("alerts").Inc()
			w.logger.Warn("skipping undecodable alert", "partition", msg.Partition, "offset", msg.Offset, "error", err)
		} else if !w.deliver(workCtx, msg.Value, a.ID) {
			return
		}
		if !w.commit(workCtx, msg) {
			return
		}
	}
}

// deliver posts body until the target accepts it or ctx ends.
func (w *webhookTarget) deliver(ctx context.Context, body []byte, id string) bool {
	target := w.config.Name
	attempt := 0
	result := ""
	// Jitter: half the backoff plus a random part of the other half keeps
	// many sinks from hammering a recovering receiver in step.
	backoff := retry.Backoff{Min: w.minBackoff, Max: w.maxBackoff, Jitter: true}
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		attempt++
		start := time.Now()
		var err error
		result, err = w.post(ctx, body, id, attempt)
		w.metrics.webhookSeconds.WithLabelValues(target).Observe(time.Since(start).Seconds())
		w.metrics.webhookAttempts.WithLabelValues(target, result).Inc()
		return err
	}, func(err error, wait time.Duration) {
		w.metrics.webhookRetrying.WithLabelValues(target).Set(1)
		w.logger.Warn("webhook delivery failed, retrying", "alert", id, "attempt", attempt, "result", result,
			"error", err, "retry_in", wait.Round(time.Millisecond))
	})
	if err != nil {
		return false
	}
	w.metrics.webhookDelivered.WithLabelValues(target).Inc()
	w.metrics.webhookRetrying.WithLabelValues(target).Set(0)
	w.metrics.webhookLastUnixOK.WithLabelValues(target).SetToCurrentTime()
	return true
}

// post makes one attempt and classifies its result for the metrics.
func (w *webhookTarget) post(ctx context.Context, body []byte, id string, attempt int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, w.config.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.config.URL, bytes.NewReader(body))
	if err != nil {
		return "error", fmt.Errorf("cannot build webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "wormsign-sink")
	req.Header.Set(SignatureHeader, Sign(w.secret, body))
	req.Header.Set(AlertIDHeader, id)
	req.Header.Set(AttemptHeader, strconv.Itoa(attempt))
	resp, err := w.client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return "timeout", fmt.Errorf("webhook %s timed out after %s: %w", w.config.Name, w.config.Timeout, err)
		}
		return "error", fmt.Errorf("webhook %s: %w", w.config.Name, err)
	}
	// Drain a little so that the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return "ok", nil
	case resp.StatusCode >= 500:
		return "http_5xx", fmt.Errorf("webhook %s answered %s", w.config.Name, resp.Status)
	case resp.StatusCode >= 400:
		// 4xx is retried too: a receiver rejecting our signature or
		// payload is a configuration error to fix, not a reason to lose
		// the alert.
		return "http_4xx", fmt.Errorf("webhook %s answered %s", w.config.Name, resp.Status)
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return "http_3xx", fmt.Errorf("webhook %s answered %s: redirects are not followed, set its url to the final address",
			w.config.Name, resp.Status)
	}
	return "error", fmt.Errorf("webhook %s answered %s", w.config.Name, resp.Status)
}

// commit records the delivery, retrying while Kafka is away.
func (w *webhookTarget) commit(ctx context.Context, msg bus.Message) bool {
	err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}, func(ctx context.Context) error {
		return w.consumer.Commit(ctx, msg)
	}, func(err error, wait time.Duration) {
		w.logger.Warn("cannot commit webhook position, retrying", "error", err, "backoff", wait)
	})
	return err == nil
}
