package containment

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	alerts        prometheus.Counter
	changes       *prometheus.CounterVec
	errors        *prometheus.CounterVec
	audited       prometheus.Counter
	apiRequests   *prometheus.CounterVec
	apiForbidden  *prometheus.CounterVec
	crossOrigin   prometheus.Counter
	entriesActive prometheus.GaugeFunc
	coaRequests   *prometheus.CounterVec
	coaNAKs       *prometheus.CounterVec
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
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_api_requests_total", Help: "Block list API requests, by status code.",
		}, []string{"code"}),
		apiForbidden: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_api_forbidden_total", Help: "Block list API requests refused (403) because the role of the name they authenticated as lacks the route's, by route.",
		}, []string{"route"}),
		crossOrigin: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_containment_cross_origin_refused_total", Help: "Cookie-authenticated block list POSTs refused by the CSRF rule (403).",
		}),
		coaRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_coa_requests_total", Help: "RADIUS CoA and Disconnect requests, by type (coa, disconnect) and result (ack, nak, timeout, error, dropped).",
		}, []string{"type", "result"}),
		coaNAKs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_containment_coa_naks_total", Help: "CoA-NAK and Disconnect-NAK answers, by type and Error-Cause (RFC 5176).",
		}, []string{"type", "cause"}),
	}
	m.entriesActive = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wormsign_containment_entries", Help: "Entries on the exported block list.",
	}, func() float64 { return float64(len(c.List().Active)) })
	reg.MustRegister(m.alerts, m.changes, m.errors, m.audited, m.apiRequests, m.apiForbidden, m.crossOrigin, m.entriesActive, m.coaRequests, m.coaNAKs)
	return m
}
