package console

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests      *prometheus.CounterVec
	unauthorized  prometheus.Counter
	forbidden     *prometheus.CounterVec
	crossOrigin   prometheus.Counter
	alerts        prometheus.Counter
	flows         prometheus.Counter
	badMessages   *prometheus.CounterVec
	acks          prometheus.Counter
	streamClients prometheus.Gauge
	streamDropped prometheus.Counter
	incidents     prometheus.GaugeFunc
	subscribers   prometheus.GaugeFunc
	storeErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, c *Component) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_console_requests_total", Help: "API and console requests by route and status code (\"200\", \"404\", \"503\"...).",
		}, []string{"route", "code"}),
		unauthorized: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_unauthorized_total", Help: "Requests refused for a missing or wrong token.",
		}),
		forbidden: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_console_forbidden_total", Help: "Requests refused (403) because the role of the name they authenticated as lacks the route's, by route.",
		}, []string{"route"}),
		crossOrigin: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_cross_origin_refused_total", Help: "Cookie-authenticated POSTs refused by the CSRF rule (403).",
		}),
		alerts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_alerts_total", Help: "Alert events read from the alerts topic.",
		}),
		flows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_flows_total", Help: "Flows counted into the in-memory minute counters.",
		}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_console_bad_messages_total", Help: "Undecodable messages skipped, by topic.",
		}, []string{"topic"}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_acks_total", Help: "Acknowledgements recorded.",
		}),
		streamClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wormsign_console_stream_clients", Help: "Clients connected to the alert stream.",
		}),
		streamDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_stream_dropped_clients_total", Help: "Stream clients disconnected for reading too slowly.",
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_console_store_errors_total", Help: "Failed reads or writes of the store (ClickHouse).",
		}),
	}
	m.incidents = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wormsign_console_memory_incidents", Help: "Incidents held by the in-memory store.",
	}, func() float64 { return float64(c.memory.incidentCount()) })
	m.subscribers = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wormsign_console_memory_subscribers", Help: "Subscribers with minute counters in memory.",
	}, func() float64 { return float64(c.memory.subscriberCount()) })
	reg.MustRegister(m.requests, m.unauthorized, m.forbidden, m.crossOrigin, m.alerts, m.flows, m.badMessages, m.acks,
		m.streamClients, m.streamDropped, m.storeErrors, m.incidents, m.subscribers)
	return m
}
