package containment

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	alerts        prometheus.Counter
	changes       *prometheus.CounterVec
	errors        *prometheus.CounterVec
	audited       prometheus.Counter
	webhooks      *prometheus.CounterVec
	apiRequests   *prometheus.CounterVec
	entriesActive prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, c *Component) metrics {
	m := metrics{
		alerts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_containment_alerts_total", Help: "Alerts the policy took in.",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_changes_total", Help: "Changes to the block list this process made, by type.",
		}, []string{"type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_errors_total", Help: "Errors, by stage.",
		}, []string{"stage"}),
		audited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_containment_audited_changes_total", Help: "Changes written to ClickHouse containment_actions.",
		}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_webhook_attempts_total", Help: "Webhook deliveries of changes, by target and result.",
		}, []string{"target", "result"}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_api_requests_total", Help: "Block list API requests, by status code.",
		}, []string{"code"}),
	}
	m.entriesActive = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wormsign_containment_entries", Help: "Entries on the exported block list.",
	}, func() float64 { return float64(len(c.List().Active)) })
	reg.MustRegister(m.alerts, m.changes, m.errors, m.audited, m.webhooks, m.apiRequests, m.entriesActive)
	return m
}
