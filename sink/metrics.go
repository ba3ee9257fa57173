package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows         *prometheus.CounterVec   // table
	batches      *prometheus.CounterVec   // table
	writeErrors  *prometheus.CounterVec   // table
	commitErrors *prometheus.CounterVec   // table
	committed    *prometheus.CounterVec   // table
	duplicates   *prometheus.CounterVec   // table
	inflight     *prometheus.GaugeVec     // table
	batchSeconds *prometheus.HistogramVec // table
	badMessages  *prometheus.CounterVec   // topic
	stdoutLines  prometheus.Counter
	dropped      prometheus.Counter
	retentionErr prometheus.Counter

	webhookAttempts   *prometheus.CounterVec   // target, result
	webhookDelivered  *prometheus.CounterVec   // target
	webhookSeconds    *prometheus.HistogramVec // target
	webhookRetrying   *prometheus.GaugeVec     // target
	webhookLastUnixOK *prometheus.GaugeVec     // target
	webhookDropped    *prometheus.CounterVec   // target
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_rows_total", Help: "Rows written to ClickHouse."}, []string{"table"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_batches_total", Help: "INSERT batches written to ClickHouse."}, []string{"table"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_write_errors_total", Help: "Failed writes (retried; offsets not committed)."}, []string{"table"}),
		commitErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_commit_errors_total", Help: "Failed offset commits (retried)."}, []string{"table"}),
		committed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_committed_messages_total", Help: "Bus messages whose offsets were committed after their write."}, []string{"table"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_duplicate_messages_total", Help: "Re-delivered or retried messages the ledger showed as written already (skipped)."}, []string{"table"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_sink_inflight_batches", Help: "Batches being written (including retries)."}, []string{"table"}),
		batchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wormsign_sink_batch_write_seconds", Help: "Time of one successful batch write.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}, []string{"table"}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_bad_messages_total", Help: "Messages that failed to decode (skipped)."}, []string{"topic"}),
		stdoutLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_sink_stdout_alerts_total", Help: "Alerts printed on stdout."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_sink_retention_dropped_partitions_total", Help: "Daily partitions dropped by retention."}),
		retentionErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_sink_retention_errors_total", Help: "Failed retention runs."}),
		webhookAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_webhook_attempts_total", Help: "Webhook delivery attempts by result (ok, http_3xx, http_4xx, http_5xx, timeout, error)."},
			[]string{"target", "result"}),
		webhookDelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_webhook_delivered_total", Help: "Alerts a webhook target accepted."}, []string{"target"}),
		webhookSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wormsign_sink_webhook_attempt_seconds", Help: "Duration of one webhook delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}, []string{"target"}),
		webhookRetrying: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_sink_webhook_retrying", Help: "1 while a target is failing and its alerts wait."}, []string{"target"}),
		webhookLastUnixOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wormsign_sink_webhook_last_success_timestamp_seconds", Help: "When a target last accepted an alert."}, []string{"target"}),
		webhookDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_webhook_dropped_total", Help: "Alerts dropped from a full in-memory backlog (in-process bus only)."}, []string{"target"}),
	}
	reg.MustRegister(m.rows, m.batches, m.writeErrors, m.commitErrors, m.committed, m.duplicates, m.inflight,
		m.batchSeconds, m.badMessages, m.stdoutLines, m.dropped, m.retentionErr,
		m.webhookAttempts, m.webhookDelivered, m.webhookSeconds, m.webhookRetrying, m.webhookLastUnixOK, m.webhookDropped)
	return m
}
