package detector

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages     prometheus.Counter
	badMessages  prometheus.Counter
	flows        prometheus.Counter
	lateFlows    prometheus.Counter
	invalidFlows prometheus.Counter
	allowListed  prometheus.Counter
	alerts       *prometheus.CounterVec // kind, state
	publishErrs  prometheus.Counter
	subscribers  prometheus.Gauge
	watermark    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_messages_total", Help: "Flow batches consumed."}),
		badMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_bad_messages_total", Help: "Flow batches that failed to decode (skipped)."}),
		flows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_flows_total", Help: "Subscriber flows evaluated."}),
		lateFlows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_late_flows_total", Help: "Flows older than the watermark minus the allowed lateness (dropped)."}),
		invalidFlows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_invalid_flows_total", Help: "Flows without an end time or source (dropped)."}),
		allowListed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_allow_listed_flows_total", Help: "Flows from allow-listed sources (never alerted)."}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_detector_alerts_total", Help: "Alert events emitted."}, []string{"kind", "state"}),
		publishErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_publish_errors_total", Help: "Failed writes to the alerts topic (retried)."}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_detector_subscribers", Help: "Subscribers with window state."}),
		watermark: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_detector_watermark_seconds", Help: "Event time the detector has reached."}),
	}
	reg.MustRegister(m.messages, m.badMessages, m.flows, m.lateFlows, m.invalidFlows, m.allowListed,
		m.alerts, m.publishErrs, m.subscribers, m.watermark)
	return m
}
