package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows         *prometheus.CounterVec // table
	batches      *prometheus.CounterVec // table
	writeErrors  *prometheus.CounterVec // table
	commitErrors *prometheus.CounterVec // table
	committed    *prometheus.CounterVec // table
	// abandoned counts messages read whose partition was taken away before
	// they were written and committed; the next owner re-reads them.
	abandoned *prometheus.CounterVec // table
	// givenUp counts messages whose batch was still not written when the
	// drain timeout ended a stop.
	givenUp      *prometheus.CounterVec   // table
	fetchErrors  *prometheus.CounterVec   // table
	duplicates   *prometheus.CounterVec   // table
	inflight     *prometheus.GaugeVec     // table
	batchSeconds *prometheus.HistogramVec // table
	badMessages  *prometheus.CounterVec   // topic
	stdoutLines  prometheus.Counter
	dropped      prometheus.Counter
	retentionErr prometheus.Counter
	// The webhooks' metrics are the webhook package's, with component
	// "sink".
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
		givenUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_given_up_messages_total", Help: "Messages whose batch was not written within sink.drain_timeout at a stop (Kafka re-delivers them on the next start; the in-process bus loses them)."}, []string{"table"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_abandoned_commit_messages_total", Help: "Messages read whose partition a rebalance took away before they were written and committed (re-read by its next owner; what was written is kept out by the ledger)."}, []string{"table"}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_fetch_errors_total", Help: "Failed fetches from the bus (retried)."}, []string{"table"}),
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
	}
	reg.MustRegister(m.rows, m.batches, m.writeErrors, m.commitErrors, m.committed, m.abandoned, m.givenUp, m.fetchErrors, m.duplicates, m.inflight,
		m.batchSeconds, m.badMessages, m.stdoutLines, m.dropped, m.retentionErr)
	return m
}
