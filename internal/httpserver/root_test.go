package httpserver

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "wormsign_test_things_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	s := New(slog.New(slog.DiscardHandler), Configuration{Listen: "127.0.0.1:0"}, reg)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	base := "http://" + s.Addr()

	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "wormsign_test_things_total 3") {
		t.Errorf("/metrics = %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz with no checks = %d, want 200", code)
	}
	var broken error = errors.New("connection refused")
	s.AddReadyCheck("clickhouse", func() error { return broken })
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "clickhouse: connection refused") {
		t.Errorf("/readyz with a failing check = %d %q, want 503 naming it", code, body)
	}
	broken = nil
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz after recovery = %d, want 200", code)
	}
}
