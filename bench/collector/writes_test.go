package collectorbench

import (
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestPublishWrites reads the histogram the way the collector exports it:
// the benchmark's column of slow writes would mislead otherwise.
func TestPublishWrites(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "wormsign_collector_publish_seconds",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	reg.MustRegister(h)
	for _, s := range []float64{0.002, 0.003, 0.1, 0.128, 0.2, 1.5} {
		h.Observe(s)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	got := publishWrites(srv.URL)
	if want := (writeTimes{count: 6, slow: 2, longest: 2.048}); got != want {
		t.Errorf("publishWrites = %+v, want %+v", got, want)
	}
	if s := got.String(); s != "2 of 6, longest ≤ 2.05 s" {
		t.Errorf("String() = %q", s)
	}
}
