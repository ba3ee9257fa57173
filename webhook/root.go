// Package webhook delivers signed events to HTTP targets: the sink's alerts
// and containment's changes. A target is configured once (Configuration,
// the entries of sink.webhooks) and its receiver checks every body alike
// (SignatureHeader, VerifySignature). Each component that sends makes a
// Deliverer per target: a bounded queue of its own, one goroutine that
// POSTs the events in order, each with a timeout and retried with backoff
// as the component's Policy says, and the metrics wormsign_webhook_*, told
// apart by the labels component and target.
//
// A Deliverer does not commit anything: it reports each event it is done
// with (Event.Done), and the component commits its offsets from there.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/retry"
)

// Result is how a Deliverer was done with an event.
type Result int

const (
	// Delivered: the target accepted the event (2xx).
	Delivered Result = iota
	// GaveUp: every attempt Policy.Attempts allows failed; the event is
	// dropped.
	GaveUp
	// Overflowed: the event was the oldest waiting in a full queue
	// (Policy.DropOldest) and was dropped without an attempt.
	Overflowed
)

func (r Result) String() string {
	switch r {
	case Delivered:
		return "delivered"
	case GaveUp:
		return "gave_up"
	case Overflowed:
		return "overflowed"
	}
	return "unknown"
}

// Event is one body to POST to the target.
type Event struct {
	// Body is sent as is (application/json) and signed.
	Body []byte
	// ID names the event in logs.
	ID string
	// Header is added to every attempt's request (the event's id header,
	// for one).
	Header http.Header
	// Done, when set, is called once when the Deliverer is done with the
	// event, in queue order but for overflowed events (called from
	// Enqueue). It is not called for the events that Stop leaves queued or
	// in delivery. Done runs on the Deliverer's goroutine: the next event
	// waits for it.
	Done func(Result)
}

// ErrStopped is returned by Enqueue after Stop.
var ErrStopped = errors.New("webhook deliverer stopped")

// Dependencies of a Deliverer.
type Dependencies struct {
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Component names the sender: the component label of the metrics and
	// the User-Agent wormsign-<Component>.
	Component string
}

// Deliverer sends the events of one component to one target.
type Deliverer struct {
	config  Configuration
	policy  Policy
	deps    Dependencies
	secret  []byte
	client  *http.Client
	logger  *slog.Logger
	metrics targetMetrics

	mu      sync.Mutex
	queue   []Event
	busy    bool // an event is in delivery
	stopped bool
	changed chan struct{} // closed and replaced on every change of the above
	dropLog time.Time     // when a drop from a full queue was last logged

	cancel context.CancelFunc
	done   chan struct{}
}

// New prepares a Deliverer for the target; it sends nothing until Start,
// but queues what Enqueue gives it.
func New(config Configuration, policy Policy, deps Dependencies) (*Deliverer, error) {
	if err := config.Validate("webhook " + config.Name); err != nil {
		return nil, err
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if config.Timeout == 0 {
		config.Timeout = DefaultTimeout
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Component == "" {
		return nil, errors.New("webhook deliverer: no component named")
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 2
	d := &Deliverer{
		config: config, policy: policy, deps: deps, secret: []byte(config.Secret),
		client: &http.Client{
			Transport: transport,
			// A redirect would turn the POST into a GET, or carry the
			// signed body elsewhere: report it as a failure instead, so
			// that the target gets fixed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		logger:  deps.Logger.With("webhook", config.Name),
		metrics: newMetrics(deps.Registry).target(deps.Component, config.Name),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	// The series exist from the start, so that a rate over them does.
	d.metrics.delivered.Add(0)
	d.metrics.queueFull.Add(0)
	d.metrics.gaveUp.Add(0)
	d.metrics.retrying.Add(0)
	return d, nil
}

// StartAll makes and starts a Deliverer for each target with policy. The
// targets passed ValidateTargets at the component's New, so an error
// names one that did not; it is left out, the others run.
func StartAll(targets []Configuration, policy Policy, deps Dependencies) ([]*Deliverer, error) {
	var out []*Deliverer
	var errs []error
	for _, t := range targets {
		d, err := New(t, policy, deps)
		if err != nil {
			errs = append(errs, fmt.Errorf("webhook %s: %w", t.Name, err))
			continue
		}
		d.Start()
		out = append(out, d)
	}
	return out, errors.Join(errs...)
}

// Name is the target's name.
func (d *Deliverer) Name() string { return d.config.Name }

// Start launches the goroutine that delivers the queue.
func (d *Deliverer) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go d.run(ctx)
	return nil
}

// Stop ends the delivery at once: the attempt in flight is cut, and the
// events queued or in delivery are left (not reported done). To deliver
// them first, call Drain.
func (d *Deliverer) Stop() error {
	d.mu.Lock()
	d.stopped = true
	left := len(d.queue)
	d.queue = nil
	d.signal()
	d.mu.Unlock()
	d.metrics.queued.Sub(float64(left))
	if d.cancel != nil {
		d.cancel()
		<-d.done
	}
	d.client.CloseIdleConnections()
	return nil
}

// Enqueue adds ev to the queue. On a full queue it drops the oldest event
// waiting (Policy.DropOldest), or waits for room until ctx ends.
func (d *Deliverer) Enqueue(ctx context.Context, ev Event) error {
	for {
		d.mu.Lock()
		if d.stopped {
			d.mu.Unlock()
			return ErrStopped
		}
		if len(d.queue) < d.policy.Queue {
			d.queue = append(d.queue, ev)
			d.signal()
			d.mu.Unlock()
			d.metrics.queued.Inc()
			return nil
		}
		if d.policy.DropOldest {
			old := d.queue[0]
			d.queue[0] = Event{}
			d.queue = append(d.queue[1:], ev)
			d.signal()
			logIt := time.Since(d.dropLog) >= time.Minute
			if logIt {
				d.dropLog = time.Now()
			}
			d.mu.Unlock()
			d.metrics.queueFull.Inc()
			if logIt {
				d.logger.Warn("webhook queue full, dropping the oldest events (counted in wormsign_webhook_dropped_total)",
					"event", old.ID, "queue", d.policy.Queue)
			}
			if old.Done != nil {
				old.Done(Overflowed)
			}
			return nil
		}
		wait := d.changed
		d.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Drain waits until the queue is empty and no event is in delivery (each
// one delivered or given up, and reported), or ctx ends.
func (d *Deliverer) Drain(ctx context.Context) error {
	for {
		d.mu.Lock()
		if len(d.queue) == 0 && !d.busy {
			d.mu.Unlock()
			return nil
		}
		wait := d.changed
		d.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signal wakes the waiters; d.mu is held.
func (d *Deliverer) signal() {
	close(d.changed)
	d.changed = make(chan struct{})
}

func (d *Deliverer) run(ctx context.Context) {
	defer close(d.done)
	defer d.setBusy(false)
	for {
		ev, ok := d.next(ctx)
		if !ok {
			return
		}
		res, ok := d.deliver(ctx, ev)
		if !ok {
			return // stopped: the event is left
		}
		if ev.Done != nil {
			ev.Done(res)
		}
		d.setBusy(false)
	}
}

// next takes the oldest event of the queue, waiting for one.
func (d *Deliverer) next(ctx context.Context) (Event, bool) {
	for {
		d.mu.Lock()
		if len(d.queue) > 0 {
			ev := d.queue[0]
			d.queue[0] = Event{}
			d.queue = d.queue[1:]
			d.busy = true
			d.signal()
			d.mu.Unlock()
			d.metrics.queued.Dec()
			return ev, true
		}
		wait := d.changed
		d.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Event{}, false
		}
	}
}

func (d *Deliverer) setBusy(busy bool) {
	d.mu.Lock()
	d.busy = busy
	d.signal()
	d.mu.Unlock()
}

// deliver posts ev until the target accepts it, the policy gives up, or
// ctx ends (then it reports false).
func (d *Deliverer) deliver(ctx context.Context, ev Event) (Result, bool) {
	attempt := 0
	result := ""
	// Jitter: half the backoff plus a random part of the other half keeps
	// many senders from hammering a recovering receiver in step.
	backoff := retry.Backoff{Min: d.policy.MinBackoff, Max: d.policy.MaxBackoff, Jitter: true}
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		attempt++
		start := time.Now()
		var err error
		result, err = d.post(ctx, ev, attempt)
		d.metrics.seconds.Observe(time.Since(start).Seconds())
		d.metrics.attempts.WithLabelValues(result).Inc()
		if err != nil && d.policy.Attempts > 0 && attempt >= d.policy.Attempts {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, wait time.Duration) {
		d.metrics.retrying.Set(1)
		d.logger.Warn("webhook delivery failed, retrying", "event", ev.ID, "attempt", attempt, "result", result,
			"error", err, "retry_in", wait.Round(time.Millisecond))
	})
	switch {
	case err == nil:
		d.metrics.delivered.Inc()
		d.metrics.retrying.Set(0)
		d.metrics.lastOK.SetToCurrentTime()
		return Delivered, true
	case ctx.Err() != nil:
		return 0, false
	}
	d.metrics.retrying.Set(1)
	d.metrics.gaveUp.Inc()
	d.logger.Warn("webhook delivery failed, giving up on the event (counted in wormsign_webhook_dropped_total)",
		"event", ev.ID, "attempts", attempt, "result", result, "error", err)
	return GaveUp, true
}

// post makes one attempt and classifies its result for the metrics.
func (d *Deliverer) post(ctx context.Context, ev Event, attempt int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.config.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.config.URL, bytes.NewReader(ev.Body))
	if err != nil {
		return "error", fmt.Errorf("cannot build webhook request: %w", err)
	}
	for k, vs := range ev.Header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "wormsign-"+d.deps.Component)
	req.Header.Set(SignatureHeader, Sign(d.secret, ev.Body))
	req.Header.Set(AttemptHeader, strconv.Itoa(attempt))
	resp, err := d.client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return "timeout", fmt.Errorf("webhook %s timed out after %s: %w", d.config.Name, d.config.Timeout, err)
		}
		return "error", fmt.Errorf("webhook %s: %w", d.config.Name, err)
	}
	// Drain a little so that the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return "ok", nil
	case resp.StatusCode >= 500:
		return "http_5xx", fmt.Errorf("webhook %s answered %s", d.config.Name, resp.Status)
	case resp.StatusCode >= 400:
		// 4xx is retried too: a receiver rejecting our signature or
		// payload is a configuration error to fix, not a reason to lose
		// the event.
		return "http_4xx", fmt.Errorf("webhook %s answered %s", d.config.Name, resp.Status)
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return "http_3xx", fmt.Errorf("webhook %s answered %s: redirects are not followed, set its url to the final address",
			d.config.Name, resp.Status)
	}
	return "error", fmt.Errorf("webhook %s answered %s", d.config.Name, resp.Status)
}
