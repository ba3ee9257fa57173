package webhook

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every Deliverer of a registry: the sink's and
// containment's targets are told apart by the component label.
type metrics struct {
	attempts  *prometheus.CounterVec   // component, target, result
	delivered *prometheus.CounterVec   // component, target
	seconds   *prometheus.HistogramVec // component, target
	retrying  *prometheus.GaugeVec     // component, target
	lastOK    *prometheus.GaugeVec     // component, target
	dropped   *prometheus.CounterVec   // component, target, reason
	queued    *prometheus.GaugeVec     // component, target
}

// Reasons of wormsign_webhook_dropped_total.
const (
	reasonQueueFull = "queue_full"
	reasonGaveUp    = "gave_up"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	target := []string{"component", "target"}
	return &metrics{
		attempts: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_webhook_attempts_total",
			Help: "Webhook delivery attempts by result (ok, http_3xx, http_4xx, http_5xx, timeout, error)."},
			[]string{"component", "target", "result"})),
		delivered: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_webhook_delivered_total", Help: "Events a webhook target accepted."}, target)),
		seconds: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wormsign_webhook_attempt_seconds", Help: "Duration of one webhook delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}, target)),
		retrying: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_webhook_retrying", Help: "1 while a target is failing and its events wait."}, target)),
		lastOK: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_webhook_last_success_timestamp_seconds", Help: "When a target last accepted an event."}, target)),
		dropped: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_webhook_dropped_total",
			Help: "Events dropped undelivered, by reason: queue_full (the oldest waiting, from a full queue), gave_up (every attempt the policy allows failed)."},
			[]string{"component", "target", "reason"})),
		queued: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_webhook_queued", Help: "Events waiting for a target, besides the one in delivery."}, target)),
	}
}

// register registers c, or returns the collector registered under its name
// already (by another Deliverer of the registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

// targetMetrics are the metrics of one Deliverer.
type targetMetrics struct {
	attempts          *prometheus.CounterVec // result
	delivered         prometheus.Counter
	seconds           prometheus.Observer
	retrying, lastOK  prometheus.Gauge
	queueFull, gaveUp prometheus.Counter
	queued            prometheus.Gauge
}

func (m *metrics) target(component, name string) targetMetrics {
	l := prometheus.Labels{"component": component, "target": name}
	return targetMetrics{
		attempts:  m.attempts.MustCurryWith(l),
		delivered: m.delivered.With(l),
		seconds:   m.seconds.With(l),
		retrying:  m.retrying.With(l),
		lastOK:    m.lastOK.With(l),
		queueFull: m.dropped.WithLabelValues(component, name, reasonQueueFull),
		gaveUp:    m.dropped.WithLabelValues(component, name, reasonGaveUp),
		queued:    m.queued.With(l),
	}
}
