package collector

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	datagrams     *prometheus.CounterVec // exporter, protocol
	flows         *prometheus.CounterVec // exporter, protocol
	decodeErrors  *prometheus.CounterVec // exporter, protocol, kind
	dropped       *prometheus.CounterVec // reason
	published     prometheus.Counter
	publishErrors prometheus.Counter
	queueFlows    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		datagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_datagrams_total", Help: "Export datagrams received.",
		}, []string{"exporter", "protocol"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_flows_total", Help: "Flow records decoded.",
		}, []string{"exporter", "protocol"}),
		decodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_decode_errors_total", Help: "Datagrams that failed to decode, by kind.",
		}, []string{"exporter", "protocol", "kind"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_collector_dropped_flows_total", Help: "Flows dropped at the UDP edge, by reason.",
		}, []string{"reason"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_collector_published_flows_total", Help: "Flows written to the flows topic.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_collector_publish_errors_total", Help: "Failed writes to the flows topic (retried).",
		}),
		queueFlows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_collector_queue_flows", Help: "Flows waiting for the bus.",
		}),
	}
	reg.MustRegister(m.datagrams, m.flows, m.decodeErrors, m.dropped, m.published, m.publishErrors, m.queueFlows)
	return m
}
