package httpserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// Every API's errors: {"error": "..."} in JSON, not sniffed, not cached;
// Unavailable adds Retry-After.
func TestError(t *testing.T) {
	w := httptest.NewRecorder()
	Error(w, http.StatusBadRequest, "limit: %q, want <1..10>", "x")
	h := w.Header()
	if w.Code != 400 || h.Get("Content-Type") != "application/json" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Cache-Control") != "no-store" {
		t.Errorf("status %d, headers %v", w.Code, h)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body) != 1 || body["error"] != `limit: "x", want <1..10>` {
		t.Errorf("body %q (%v)", w.Body.String(), err)
	}
	w = httptest.NewRecorder()
	Unavailable(w, 0, "the store does not answer: %v", "timeout")
	if w.Code != 503 || w.Header().Get("Retry-After") != "5" {
		t.Errorf("Unavailable: status %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	w = httptest.NewRecorder()
	Unavailable(w, 1500*time.Millisecond, "busy")
	if w.Header().Get("Retry-After") != "2" {
		t.Errorf("Retry-After %q, want 2", w.Header().Get("Retry-After"))
	}
	if CodeLabel(503) != "503" {
		t.Errorf("CodeLabel(503) = %q", CodeLabel(503))
	}
}

func TestCheckParams(t *testing.T) {
	for q, ok := range map[string]bool{
		"": true, "limit=1": true, "limit=1&format=json": true,
		"limit=1&limit=2": false, "foo=1": false, "limit=1&foo": false,
	} {
		r := httptest.NewRequest("GET", "/x?"+q, nil)
		if err := CheckParams(r, "limit", "format"); (err == nil) != ok {
			t.Errorf("%q: %v", q, err)
		}
	}
	if CheckParams(httptest.NewRequest("GET", "/x?a=1", nil)) == nil {
		t.Error("a parameter where none is known passes")
	}
}

func TestStatusRecorder(t *testing.T) {
	for _, c := range []struct {
		h    http.HandlerFunc
		want int
	}{
		{func(w http.ResponseWriter, r *http.Request) {}, 200},
		{func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("x")); w.WriteHeader(500) }, 200},
		{func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404); w.WriteHeader(500) }, 404},
	} {
		rec := NewStatusRecorder(httptest.NewRecorder())
		c.h(rec, nil)
		if rec.Status() != c.want {
			t.Errorf("status %d, want %d", rec.Status(), c.want)
		}
	}
}
