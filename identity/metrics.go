package identity

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	radiusRequests *prometheus.CounterVec // by Acct-Status-Type
	radiusDropped  *prometheus.CounterVec // by reason
	leases         *prometheus.CounterVec // by event
	leasesRefused  *prometheus.CounterVec // by reason
	recordErrors   prometheus.Counter
	refused        prometheus.Counter
	malformed      prometheus.Counter
	bindings       prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, s *Store) *metrics {
	m := &metrics{
		radiusRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_identity_radius_requests_total", Help: "RADIUS Accounting-Requests answered, by Acct-Status-Type.",
		}, []string{"status_type"}),
		radiusDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_identity_radius_dropped_total", Help: "RADIUS packets dropped unanswered, by reason (unknown_client, bad_authenticator, malformed, not_accounting, no_address, no_customer).",
		}, []string{"reason"}),
		leases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_identity_leases_total", Help: "DHCP lease events recorded, by event.",
		}, []string{"event"}),
		leasesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_identity_leases_refused_total", Help: "DHCP lease reports refused, by reason.",
		}, []string{"reason"}),
		recordErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_record_errors_total", Help: "Bindings that could not be published (the source is answered with an error, so it retries).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_bindings_refused_total", Help: "Bindings not kept because identity.max_bindings was reached.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_malformed_records_total", Help: "Unreadable records on the bindings topic, skipped.",
		}),
	}
	m.bindings = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wormsign_identity_bindings", Help: "Bindings held in memory.",
	}, func() float64 { return float64(s.Table().Len()) })
	reg.MustRegister(m.radiusRequests, m.radiusDropped, m.leases, m.leasesRefused, m.recordErrors, m.refused, m.malformed, m.bindings)
	s.refused = m.refused.Inc
	s.malformed = m.malformed.Inc
	return m
}
