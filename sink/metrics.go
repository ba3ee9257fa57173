package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows        *prometheus.CounterVec // table
	batches     *prometheus.CounterVec // table
	writeErrors *prometheus.CounterVec // table
	badMessages *prometheus.CounterVec // topic
	stdoutLines prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_rows_total", Help: "Rows written to ClickHouse."}, []string{"table"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_batches_total", Help: "INSERT batches written to ClickHouse."}, []string{"table"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_write_errors_total", Help: "Failed writes (retried; offsets not committed)."}, []string{"table"}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_sink_bad_messages_total", Help: "Messages that failed to decode (skipped)."}, []string{"topic"}),
		stdoutLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_sink_stdout_alerts_total", Help: "Alerts printed on stdout."}),
	}
	reg.MustRegister(m.rows, m.batches, m.writeErrors, m.badMessages, m.stdoutLines)
	return m
}
