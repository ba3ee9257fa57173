package collector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/collector/decode"
)

type metrics struct {
	datagrams        *prometheus.CounterVec // exporter, protocol
	flows            *prometheus.CounterVec // exporter, protocol
	decodeErrors     *prometheus.CounterVec // exporter, protocol, kind
	templateMisses   *prometheus.CounterVec // exporter
	templatesRefused *prometheus.CounterVec // exporter
	lostDatagrams    *prometheus.CounterVec // exporter
	lostRecords      *prometheus.CounterVec // exporter
	enterprise       *prometheus.CounterVec // exporter
	variableLength   *prometheus.CounterVec // exporter
	optionsRecords   *prometheus.CounterVec // exporter
	natEvents        *prometheus.CounterVec // exporter
	natSkipped       *prometheus.CounterVec // exporter
	dropped          *prometheus.CounterVec // reason
	published        prometheus.Counter
	records          prometheus.Counter
	publishErrors    prometheus.Counter
	queueFlows       prometheus.Gauge
	templateSaves    *prometheus.CounterVec // result
	refusals         *prometheus.CounterVec // reason
	receiveBatch     prometheus.Histogram
	publishSeconds   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	perExporter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wormsign_collector_" + name, Help: help}, []string{"exporter"})
	}
	m := &metrics{
		datagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_datagrams_total", Help: "Export datagrams received.",
		}, []string{"exporter", "protocol"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_flows_total", Help: "Flow records decoded.",
		}, []string{"exporter", "protocol"}),
		decodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_decode_errors_total",
			Help: "Datagrams that failed to decode, and malformed sets (kind malformed_set) inside datagrams that otherwise decoded, by kind.",
		}, []string{"exporter", "protocol", "kind"}),
		templateMisses: perExporter("template_misses_total",
			"NetFlow v9/IPFIX data sets skipped because their template is unknown (other sets of the datagram still decode)."),
		templatesRefused: perExporter("templates_refused_total",
			"Templates not stored: over collector.max_templates_per_exporter, collector.max_state_per_address or collector.decoder_budget_bytes (reasons in decoder_refusals_total)."),
		lostDatagrams: perExporter("lost_datagrams_total",
			"Export datagrams lost between exporter and collector, from NetFlow v9 and sFlow sequence numbers."),
		lostRecords: perExporter("lost_records_total",
			"Flow records lost between exporter and collector, from NetFlow v5 and IPFIX sequence numbers (which count records)."),
		enterprise: perExporter("enterprise_records_total",
			"IPFIX flow records with enterprise-specific fields (decoded; those fields are skipped)."),
		variableLength: perExporter("variable_length_records_total",
			"IPFIX flow records with variable-length fields (decoded)."),
		optionsRecords: perExporter("options_records_total",
			"NetFlow v9/IPFIX options data records (sampling rates, system init time)."),
		natEvents: perExporter("nat_events_total",
			"NAT logging records (RFC 8158) and translations told by flow records, decoded."),
		natSkipped: perExporter("nat_events_skipped_total",
			"NAT logging records naming no binding (pool exhausted, quota, threshold) or without an inside or outside address."),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_dropped_flows_total", Help: "Flows dropped at the UDP edge, by reason.",
		}, []string{"reason"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_collector_published_flows_total", Help: "Flows written to the flows topic.",
		}),
		records: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_collector_published_records_total",
			Help: "Records written to the flows topic; published flows over this is the flows per record.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_collector_publish_errors_total", Help: "Failed writes to the flows topic (retried).",
		}),
		queueFlows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_collector_queue_flows", Help: "Flows waiting for the bus.",
		}),
		templateSaves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_template_saves_total", Help: "Writes of collector.template_file, by result.",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_decoder_refusals_total",
			Help: "Decoder state not kept (templates, exporters, per-domain sampling rates, sequence numbers, system init times), by reason.",
		}, []string{"reason"}),
	}
	m.receiveBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "wormsign_collector_receive_batch_datagrams", Help: "Datagrams one receive system call returned (recvmmsg): near 1 the sockets keep up easily, near its maximum (16) they are busy.",
		Buckets: []float64{1, 2, 4, 8, 16},
	})
	m.publishSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "wormsign_collector_publish_seconds",
		Help: "Time one publisher took to write a batch to the flows topic, retries included: while one write waits, the batches behind it wait in the queue.",
		// From a broker on the same host to one that stalls for seconds.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	// Every reason is exported from the start, at 0.
	for _, r := range decode.RefusalReasons {
		m.refusals.WithLabelValues(r)
	}
	reg.MustRegister(m.datagrams, m.flows, m.decodeErrors, m.templateMisses, m.templatesRefused,
		m.lostDatagrams, m.lostRecords, m.enterprise, m.variableLength, m.optionsRecords, m.natEvents, m.natSkipped,
		m.dropped, m.published, m.records, m.publishErrors, m.queueFlows, m.templateSaves, m.refusals, m.receiveBatch,
		m.publishSeconds)
	return m
}

// registerDecoder exports the decoder's budget and what it holds.
func registerDecoder(reg prometheus.Registerer, d *decode.Decoder) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wormsign_collector_decoder_state_bytes",
			Help: "Decoder state (templates, fields, sampling rates, per-domain entries, exporters) charged against collector.decoder_budget_bytes.",
		}, func() float64 { return float64(d.StateBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wormsign_collector_decoder_budget_bytes",
			Help: "collector.decoder_budget_bytes.",
		}, func() float64 { return float64(d.BudgetBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wormsign_collector_decoder_exporters",
			Help: "Exporters (address and port) the decoder holds state for.",
		}, func() float64 { n, _ := d.Exporters(); return float64(n) }),
	)
}

// report adds what decoding one datagram found to the per-exporter
// metrics; most fields are zero, so most datagrams touch no metric here.
func (m *metrics) report(exporter string, r *decode.Report) {
	add := func(v *prometheus.CounterVec, n float64) {
		if n != 0 {
			v.WithLabelValues(exporter).Add(n)
		}
	}
	add(m.templateMisses, float64(r.TemplateMisses))
	add(m.templatesRefused, float64(r.TemplatesRefused))
	add(m.lostDatagrams, float64(r.LostDatagrams))
	add(m.lostRecords, float64(r.LostRecords))
	add(m.enterprise, float64(r.EnterpriseRecords))
	add(m.variableLength, float64(r.VariableLengthRecords))
	add(m.optionsRecords, float64(r.OptionsRecords))
	add(m.natEvents, float64(len(r.NAT)))
	add(m.natSkipped, float64(r.NATSkipped))
	for i, n := range r.Refused {
		if n != 0 {
			m.refusals.WithLabelValues(decode.RefusalReasons[i]).Add(float64(n))
		}
	}
	if r.SetErrors != 0 {
		m.decodeErrors.WithLabelValues(exporter, r.Protocol, "malformed_set").Add(float64(r.SetErrors))
	}
}
