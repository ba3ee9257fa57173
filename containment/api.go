package containment

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
)

// Handler serves the block list API, guarded by deps.Authorize (and, for
// requests its cookie authenticates, the console's CSRF rule:
// same-origin JSON only), with the console's security headers and
// Cache-Control: no-store:
//
//	GET  /api/v1/blocklist?format=json|plain|nftables|ipset|exabgp|exabgp-conf
//	POST /api/v1/blocklist                 {"ip","action","reason","duration","by"}
//	POST /api/v1/blocklist/{ip}/release    {"by","note"}
//	POST /api/v1/blocklist/hold            {"incident_id","by","note"}
//	GET  /api/v1/blocklist/actions?limit=N the audit trail, newest first
//
// Mount it at "/api/v1/blocklist" and "/api/v1/blocklist/".
func (c *Component) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/blocklist", c.serveList)
	mux.HandleFunc("POST /api/v1/blocklist", c.serveAdd)
	mux.HandleFunc("POST /api/v1/blocklist/hold", c.serveHold)
	mux.HandleFunc("POST /api/v1/blocklist/{ip}/release", c.serveRelease)
	mux.HandleFunc("GET /api/v1/blocklist/actions", c.serveActions)
	return httpserver.SecurityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() { c.metrics.apiRequests.WithLabelValues(strconv.Itoa(rec.code)).Inc() }()
		if c.deps.Authorize == nil {
			writeError(rec, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <http.token>")
			return
		}
		if !c.deps.Authorize(rec, r) {
			return
		}
		// The console's cookie authenticates only same-origin JSON POSTs.
		if err := httpserver.CheckCookieRequest(r, true); err != nil {
			writeError(rec, http.StatusForbidden, err.Error())
			return
		}
		mux.ServeHTTP(rec, r)
	}), true)
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// fail answers an error of the policy with its status.
func fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, ErrBadInput):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotBlocked):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrAllowed), errors.Is(err, ErrFull):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (c *Component) serveList(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "json"
	}
	if !ValidFormat(format) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("format: %q, want one of %s", format, strings.Join(Formats, ", ")))
		return
	}
	var b bytes.Buffer
	if err := c.List().Write(&b, format, c.config); err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", ContentType(format))
	w.Write(b.Bytes())
}

// BodyLimit bounds the JSON body of the API's POSTs; a larger one is
// answered 413 and changes nothing.
const BodyLimit = 64 << 10

// errTooLarge is a body past BodyLimit.
var errTooLarge = errors.New(httpserver.TooLargeMessage(BodyLimit))

// decode reads one JSON object of at most BodyLimit bytes into v, unknown
// fields refused.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeBody(http.MaxBytesReader(w, r.Body, BodyLimit), v)
}

func decodeBody(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if httpserver.BodyTooLarge(err) {
			return errTooLarge
		}
		return fmt.Errorf("%w: body: %v", ErrBadInput, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if httpserver.BodyTooLarge(err) {
			return errTooLarge
		}
		return fmt.Errorf("%w: body: want one JSON object", ErrBadInput)
	}
	return nil
}

// AddRequest is the body of POST /api/v1/blocklist.
type AddRequest struct {
	IP string `json:"ip"`
	// Action is block_smtp (default) or quarantine.
	Action string `json:"action"`
	Reason string `json:"reason"`
	// Duration like "24h"; empty: containment.duration.
	Duration string `json:"duration"`
	// By is who adds it; "api" when empty.
	By string `json:"by"`
}

// manualAdd is a checked AddRequest.
type manualAdd struct {
	prefix   network.Prefix
	action   string
	by       string
	reason   string
	duration time.Duration // 0: containment.duration
}

// parseAdd reads and checks the body of POST /api/v1/blocklist (the policy
// checks the rest: action, width, allow list).
func parseAdd(body io.Reader) (manualAdd, error) {
	var req AddRequest
	if err := decodeBody(body, &req); err != nil {
		return manualAdd{}, err
	}
	pfx, err := network.ParsePrefix(req.IP)
	if err != nil || req.IP == "" {
		return manualAdd{}, fmt.Errorf("%w: ip: %q is not an address or prefix", ErrBadInput, req.IP)
	}
	m := manualAdd{prefix: pfx, action: req.Action, by: req.By, reason: req.Reason}
	if req.Duration != "" {
		if m.duration, err = time.ParseDuration(req.Duration); err != nil || m.duration <= 0 {
			return manualAdd{}, fmt.Errorf("%w: duration: %q, want a positive duration such as 24h", ErrBadInput, req.Duration)
		}
	}
	if m.by == "" {
		m.by = "api"
	}
	return m, nil
}

func (c *Component) serveAdd(w http.ResponseWriter, r *http.Request) {
	m, err := parseAdd(http.MaxBytesReader(w, r.Body, BodyLimit))
	if err != nil {
		fail(w, err)
		return
	}
	ch, err := c.Add(r.Context(), m.prefix, m.action, m.by, m.reason, m.duration)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, ch)
}

// NoteRequest is the body of a release or a hold.
type NoteRequest struct {
	IncidentID string `json:"incident_id,omitempty"`
	By         string `json:"by"`
	Note       string `json:"note"`
}

func (c *Component) serveRelease(w http.ResponseWriter, r *http.Request) {
	var req NoteRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	ip := r.PathValue("ip")
	pfx, err := network.ParsePrefix(ip)
	if err != nil {
		fail(w, fmt.Errorf("%w: %q is not an address or prefix", ErrBadInput, ip))
		return
	}
	if req.By == "" {
		req.By = "api"
	}
	ch, err := c.Release(r.Context(), pfx, req.By, req.Note)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ch)
}

func (c *Component) serveHold(w http.ResponseWriter, r *http.Request) {
	var req NoteRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	ch, err := c.hold(r.Context(), req.IncidentID, req.By, req.Note)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ch)
}

func (c *Component) serveActions(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q, want 1..10000", s))
			return
		}
		limit = n
	}
	var out []Change
	if c.deps.ClickHouse != nil {
		var err error
		if out, err = c.queryActions(r, limit); err != nil {
			writeError(w, http.StatusBadGateway, err.Error())
			return
		}
	} else {
		recent := c.Recent()
		for i := len(recent) - 1; i >= 0 && len(out) < limit; i-- {
			out = append(out, recent[i])
		}
	}
	if out == nil {
		out = []Change{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"actions": out})
}

func (c *Component) queryActions(r *http.Request, limit int) ([]Change, error) {
	db := c.deps.ClickHouse
	rows, err := db.Query(r.Context(), "SELECT at, id, type, prefix, action, subscriber_id, incident_id, kind, actor, note, since, expires, dry_run FROM "+
		db.Database()+".containment_actions FINAL ORDER BY at DESC, id LIMIT "+strconv.Itoa(limit))
	if err != nil {
		return nil, fmt.Errorf("cannot query containment_actions: %w", err)
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var ch Change
		var prefix string
		var dry uint8
		e := &ch.Entry
		if err := rows.Scan(&ch.At, &ch.ID, &ch.Type, &prefix, &e.Action, &e.SubscriberID, &e.IncidentID, &e.Kind,
			&ch.Actor, &ch.Note, &e.Since, &e.Expires, &dry); err != nil {
			return nil, fmt.Errorf("cannot read containment_actions: %w", err)
		}
		if p, err := network.ParsePrefix(prefix); err == nil {
			e.Prefix = p.Prefix
		}
		ch.Event, ch.DryRun = "containment", dry == 1
		out = append(out, ch)
	}
	return out, rows.Err()
}
