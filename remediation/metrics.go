package remediation

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	alerts         prometheus.Counter
	events         *prometheus.CounterVec
	errors         *prometheus.CounterVec
	notices        *prometheus.CounterVec
	falsePositives *prometheus.CounterVec
	timeToNotice   prometheus.Histogram
	timeToRelease  prometheus.Histogram
	apiRequests    *prometheus.CounterVec
	portalRequests *prometheus.CounterVec
}

// deskBuckets span minutes to weeks: the desk's times.
var deskBuckets = []float64{60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 2 * 86400, 7 * 86400, 30 * 86400}

func newMetrics(reg prometheus.Registerer, c *Component) *metrics {
	m := &metrics{
		alerts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_remediation_alerts_total", Help: "Alerts remediation took in.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_case_events_total", Help: "Case events, by type (open, notify, walled, blocked, self_release, reopen, false_positive, ...).",
		}, []string{"type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_errors_total", Help: "Errors, by stage (decode, clickhouse, contain, release, notice_queue, full).",
		}, []string{"stage"}),
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_notices_total", Help: "Notice attempts, by result (sent, retry, failed, no_contact, no_relay, template).",
		}, []string{"result"}),
		falsePositives: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_false_positives_total", Help: "Cases marked false positive, by alert kind of their incidents.",
		}, []string{"kind"}),
		timeToNotice: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "wormsign_remediation_time_to_notice_seconds", Help: "From a case's open to its first notice sent, in event time.", Buckets: deskBuckets,
		}),
		timeToRelease: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "wormsign_remediation_time_to_release_seconds", Help: "From a case's first notice to its release (self-release or by the desk).", Buckets: deskBuckets,
		}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_api_requests_total", Help: "Cases API requests, by status code.",
		}, []string{"code"}),
		portalRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_remediation_portal_requests_total", Help: "Notice server requests, by what they got (page, no_case, release, release_denied, captive_api, refused).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.alerts, m.events, m.errors, m.notices, m.falsePositives, m.timeToNotice, m.timeToRelease,
		m.apiRequests, m.portalRequests, casesCollector{c})
	return m
}

// casesCollector counts the cases by state, and the repeat offenders, at
// scrape time.
type casesCollector struct{ c *Component }

var (
	casesDesc   = prometheus.NewDesc("wormsign_remediation_cases", "Cases in memory, by state.", []string{"state"}, nil)
	repeatsDesc = prometheus.NewDesc("wormsign_remediation_repeat_offenders", "Cases in memory that reopened at least once.", nil, nil)
)

func (cc casesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- casesDesc; ch <- repeatsDesc }

func (cc casesCollector) Collect(ch chan<- prometheus.Metric) {
	s := cc.c.Stats()
	for _, st := range States {
		ch <- prometheus.MustNewConstMetric(casesDesc, prometheus.GaugeValue, float64(s.ByState[st]), st)
	}
	ch <- prometheus.MustNewConstMetric(repeatsDesc, prometheus.GaugeValue, float64(s.RepeatOffenders))
}

// observe records the desk's times of an event of case cs.
func (c *Component) observe(ev Event, cs Case) {
	switch ev.Type {
	case EventNotify:
		if cs.Notices == 1 {
			c.metrics.timeToNotice.Observe(cs.NotifiedAt.Sub(cs.Opened).Seconds())
		}
	case EventSelfRelease, EventReleased:
		if !cs.NotifiedAt.IsZero() {
			c.metrics.timeToRelease.Observe(cs.ReleasedAt.Sub(cs.NotifiedAt).Seconds())
		}
	case EventFalsePositive:
		for _, k := range cs.Kinds {
			c.metrics.falsePositives.WithLabelValues(k).Inc()
		}
	}
}
