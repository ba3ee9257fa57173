package console

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/alert"
)

// deadStore is a store that does not answer (ClickHouse down).
type deadStore struct{ Store }

var errDead = errors.New("clickhouse: dial tcp 127.0.0.1:9000: connect: connection refused")

func (deadStore) Events(context.Context, time.Time) ([]alert.Alert, error) { return nil, errDead }
func (deadStore) IncidentEvents(context.Context, string) ([]alert.Alert, error) {
	return nil, errDead
}
func (deadStore) Acks(context.Context, []string) (map[string][]Ack, error) { return nil, errDead }
func (deadStore) AddAck(context.Context, string, Ack) error                { return errDead }
func (deadStore) Series(context.Context, netip.Addr, time.Time, time.Time) ([]Point, error) {
	return nil, errDead
}
func (deadStore) Top(context.Context, string, time.Time, int) ([]TopTalker, error) {
	return nil, errDead
}

// Every API route answers 503 with Retry-After and a JSON error when the
// store does not answer, an ack included.
func TestStoreDownIs503(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	publish(testAlert("i1", alert.StateOpen, 10, 0))
	waitIncidents(t, c, 1)
	live := c.store
	c.store = deadStore{live}
	for _, path := range []string{
		"/api/v1/incidents", "/api/v1/incidents/i1", "/api/v1/subscribers/203.0.113.7",
		"/api/v1/subscribers/203.0.113.7/chart.svg", "/api/v1/top", "/api/v1/top/smtp",
	} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, body := do(t, req)
		var e apiError
		if err := json.Unmarshal([]byte(body), &e); resp.StatusCode != 503 || err != nil || e.Error == "" || resp.Header.Get("Retry-After") == "" {
			t.Errorf("GET %s: %d (Retry-After %q) %s, want 503 with Retry-After and a JSON error", path, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
	// The incident is there, its ack cannot be stored.
	c.store = failingAcks{live}
	req, _ := http.NewRequest("POST", srv.URL+"/api/v1/incidents/i1/ack", strings.NewReader(`{"note":"x"}`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, body := do(t, req)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, `"error"`) {
		t.Errorf("ack, store down: %d (Retry-After %q) %s, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// Counted by their numeric status (httpserver.CodeLabel).
	if n := testutil.ToFloat64(c.metrics.requests.WithLabelValues("incidents", "503")); n != 1 {
		t.Errorf("requests_total{route=\"incidents\",code=\"503\"} = %v, want 1", n)
	}
}

// The alert stream refuses unknown and repeated parameters, as every
// other route does.
func TestStreamUnknownParameters(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	for _, path := range []string{
		"/api/v1/alerts/stream?since=1h",
		"/api/v1/alerts/stream?last_event_id=1&last_event_id=2",
	} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		// A stream that opens never ends: give up on it.
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e apiError
		if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 400 || e.Error == "" {
			t.Errorf("GET %s: %d %s, want 400 with a JSON message", path, resp.StatusCode, body)
		}
	}
}
