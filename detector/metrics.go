package detector

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages        prometheus.Counter
	badMessages     prometheus.Counter
	fetchErrors     prometheus.Counter
	flows           prometheus.Counter
	lateFlows       *prometheus.CounterVec // exporter
	invalidFlows    prometheus.Counter
	futureFlows     prometheus.Counter
	allowListed     prometheus.Counter
	evicted         prometheus.Counter
	answers         prometheus.Counter
	keyCollisions   prometheus.Counter
	received        prometheus.Counter
	displaced       prometheus.Counter
	refused         prometheus.Counter
	alerts          *prometheus.CounterVec // kind, state
	publishErrs     prometheus.Counter
	subscribers     prometheus.Gauge
	partitions      prometheus.Gauge
	watermark       *prometheus.GaugeVec // partition
	rebuildMessages prometheus.Counter
	rebuildErrors   prometheus.Counter
	mapEntries      prometheus.Gauge
	mapReloads      prometheus.Counter
	mapErrors       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_messages_total", Help: "Flow batches consumed, rebuilds included."}),
		badMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_bad_messages_total", Help: "Flow batches that failed to decode (skipped)."}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_fetch_errors_total", Help: "Failed reads of the flows topic (retried)."}),
		flows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_flows_total", Help: "Subscriber flows evaluated."}),
		lateFlows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_detector_late_flows_total",
			Help: "Flows older than the watermark minus the allowed lateness (dropped), by exporter (past a thousand exporters, the rest as \"other\")."},
			[]string{"exporter"}),
		invalidFlows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_invalid_flows_total", Help: "Flows without an end time or source (dropped)."}),
		futureFlows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_future_flows_total", Help: "Flows ending after they were received (exporter clock ahead); their end time is taken as the receive time."}),
		allowListed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_allow_listed_flows_total", Help: "Flows from allow-listed sources (never alerted)."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_evicted_subscribers_total", Help: "Subscribers whose state was dropped after idling past the longest window."}),
		keyCollisions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_customer_key_collisions_total",
			Help: "Flows of a customer whose key (identity.Key) another customer's state held; kept under their address."}),
		answers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_answer_flows_total", Help: "Outbound flows that answer something the subscriber was sent (replies, errors, RSTs, SYN-ACKs): never counted as its behaviour."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_exchanges_total", Help: "Inbound flows recorded to tell the subscribers' answers."}),
		displaced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_displaced_subscribers_total", Help: "Subscribers without incidents dropped to make room at max_subscribers."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_refused_subscribers_total", Help: "New subscribers not tracked at max_subscribers (every candidate to give way had an open incident)."}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_detector_alerts_total", Help: "Alert events emitted."}, []string{"kind", "state"}),
		publishErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_publish_errors_total", Help: "Failed writes to the alerts topic (retried)."}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_detector_subscribers", Help: "Subscribers with window state."}),
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_detector_partitions", Help: "Flow partitions this instance holds."}),
		watermark: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_detector_watermark_seconds", Help: "Event time the detector has reached, per partition."}, []string{"partition"}),
		rebuildMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_rebuild_messages_total", Help: "Flow batches re-read to rebuild the state of newly assigned partitions."}),
		rebuildErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_rebuild_errors_total", Help: "Failed read-backs of a newly assigned partition (its lookback of flows or the open incidents on the alerts topic); each is retried before the partition detects."}),
		mapEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_detector_subscriber_map_entries", Help: "Entries in the subscriber map in use."}),
		mapReloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_subscriber_map_reloads_total", Help: "Times the subscriber map was re-read after a change."}),
		mapErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_detector_subscriber_map_errors_total", Help: "Failed subscriber map reloads (previous map kept)."}),
	}
	reg.MustRegister(m.messages, m.badMessages, m.fetchErrors, m.flows, m.lateFlows, m.invalidFlows, m.futureFlows, m.allowListed, m.evicted,
		m.answers, m.keyCollisions, m.received, m.displaced, m.refused,
		m.alerts, m.publishErrs, m.subscribers, m.partitions, m.watermark, m.rebuildMessages, m.rebuildErrors,
		m.mapEntries, m.mapReloads, m.mapErrors)
	return m
}
