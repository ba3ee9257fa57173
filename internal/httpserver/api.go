package httpserver

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The conventions every HTTP API of wormsign shares (the console's, the
// block list's, identity's lease endpoint): errors are answered by Error,
// a store that does not answer by Unavailable, query parameters checked by
// CheckParams, and requests counted with CodeLabel of their status,
// recorded by StatusRecorder.

// Error answers {"error": "<message>"} with status: Content-Type
// application/json, X-Content-Type-Options: nosniff and Cache-Control:
// no-store. The message is fmt.Sprintf(format, args...).
func Error(w http.ResponseWriter, status int, format string, args ...any) {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}

// WriteError is Error with a message that is not a format.
func WriteError(w http.ResponseWriter, status int, msg string) {
	Error(w, status, "%s", msg)
}

// StoreRetryAfter is the Retry-After of a 503 for a store (ClickHouse)
// that does not answer.
const StoreRetryAfter = 5 * time.Second

// SetRetryAfter sets Retry-After to wait, in whole seconds (at least 1).
func SetRetryAfter(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
}

// Unavailable answers 503 with Retry-After (retryAfter; 0:
// StoreRetryAfter) in Error's form: what a store that does not answer
// (ClickHouse, Kafka) gets every API.
func Unavailable(w http.ResponseWriter, retryAfter time.Duration, format string, args ...any) {
	if retryAfter <= 0 {
		retryAfter = StoreRetryAfter
	}
	SetRetryAfter(w, retryAfter)
	Error(w, http.StatusServiceUnavailable, format, args...)
}

// CodeLabel is the value of the label "code" of every request counter of
// the APIs (wormsign_console_requests_total{route,code},
// wormsign_containment_api_requests_total{code}): the numeric status as
// a string, "200", "404", "503".
func CodeLabel(status int) string { return strconv.Itoa(status) }

// StatusRecorder remembers the status a handler answers (200 when it
// writes without WriteHeader), for the request counters.
type StatusRecorder struct {
	http.ResponseWriter
	status int
}

// NewStatusRecorder wraps w.
func NewStatusRecorder(w http.ResponseWriter) *StatusRecorder {
	return &StatusRecorder{ResponseWriter: w}
}

// WriteHeader records the first status.
func (s *StatusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *StatusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Status is the status answered: 200 when nothing was written.
func (s *StatusRecorder) Status() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

// Unwrap lets http.ResponseController reach the connection (the alert
// stream sets its own deadlines).
func (s *StatusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Flush flushes the response, when it can (the alert stream).
func (s *StatusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// CheckParams refuses a query that names a parameter not in known, or one
// more than once; the error is the 400's message.
func CheckParams(r *http.Request, known ...string) error {
	for k, v := range r.URL.Query() {
		found := false
		for _, kk := range known {
			found = found || k == kk
		}
		if !found {
			if len(known) == 0 {
				return fmt.Errorf("unknown parameter %q (this endpoint takes none)", k)
			}
			return fmt.Errorf("unknown parameter %q (known: %s)", k, strings.Join(known, ", "))
		}
		if len(v) > 1 {
			return fmt.Errorf("parameter %q given %d times", k, len(v))
		}
	}
	return nil
}

// WriteJSON answers v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
