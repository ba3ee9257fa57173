package containment

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
)

// Handler serves the block list API, guarded by deps.Authorize for the
// role each route needs (and, for requests the console's cookie
// authenticates, its CSRF rule: same-origin JSON only), with the console's
// security headers and Cache-Control: no-store:
//
//	GET  /api/v1/blocklist?format=json|plain|nftables|ipset|exabgp|exabgp-conf  export
//	GET  /api/v1/blocklist/actions?limit=N the audit trail, newest first         viewer
//	     (&prefix= &customer= &actor= &incident= &before=: see ActionsFilter)
//	POST /api/v1/blocklist/hold            {"incident_id","note"}                operator
//	POST /api/v1/blocklist                 {"ip","action","reason","duration"}   admin
//	POST /api/v1/blocklist/{ip}/release    {"note"}                              admin
//
// The actor of a hold, add or release is the name the request
// authenticated as; a body with "by" is refused (400), as every unknown
// field. Mount it at "/api/v1/blocklist" and "/api/v1/blocklist/".
func (c *Component) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, name string, need httpserver.Role, h http.HandlerFunc) {
		c.metrics.apiForbidden.WithLabelValues(name)
		mux.HandleFunc(pattern, c.guarded(name, need, h))
	}
	route("GET /api/v1/blocklist", "list", httpserver.RoleExport, c.serveList)
	route("GET /api/v1/blocklist/actions", "actions", httpserver.RoleViewer, c.serveActions)
	route("POST /api/v1/blocklist/hold", "hold", httpserver.RoleOperator, c.serveHold)
	route("POST /api/v1/blocklist", "add", httpserver.RoleAdmin, c.serveAdd)
	route("POST /api/v1/blocklist/{ip}/release", "release", httpserver.RoleAdmin, c.serveRelease)
	// Anything else is answered once the request authenticated.
	unknown := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such block list endpoint: "+r.Method+" "+r.URL.Path)
	}
	route("/api/v1/blocklist", "unknown", httpserver.RoleExport, unknown)
	route("/api/v1/blocklist/", "unknown", httpserver.RoleExport, unknown)
	return httpserver.SecurityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httpserver.NewStatusRecorder(w)
		defer func() { c.metrics.apiRequests.WithLabelValues(httpserver.CodeLabel(rec.Status())).Inc() }()
		mux.ServeHTTP(rec, r)
	}), true)
}

// guarded checks a request for the role need (httpserver.Guard) and
// counts a 403 of the route name and a cross-origin POST.
func (c *Component) guarded(name string, need httpserver.Role, h http.HandlerFunc) http.HandlerFunc {
	return httpserver.Guard(c.deps.Authorize, need, func(status int, crossOrigin bool) {
		switch {
		case crossOrigin:
			c.metrics.crossOrigin.Inc()
		case status == http.StatusForbidden:
			c.metrics.apiForbidden.WithLabelValues(name).Inc()
		}
	}, h)
}

// actor is who a request authenticated as: the actor of its change.
func actor(r *http.Request) string {
	if p, ok := httpserver.PrincipalFrom(r.Context()); ok && p.Name != "" {
		return p.Name
	}
	return "api"
}

// writeError answers {"error": msg}, as every API of the server does.
func writeError(w http.ResponseWriter, code int, msg string) {
	httpserver.WriteError(w, code, msg)
}

// unavailable answers 503 with Retry-After: ClickHouse does not answer.
func unavailable(w http.ResponseWriter, err error) {
	httpserver.Unavailable(w, 0, "%v", err)
}

// fail answers an error of the policy with its status.
func fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, ErrBadInput), errors.Is(err, ErrAllowed):
		// An allow-listed address, or a prefix that covers one, is a
		// request that can never succeed: 400.
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotBlocked):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrFull):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (c *Component) serveList(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckParams(r, "format"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
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
		if strings.Contains(err.Error(), `unknown field "by"`) {
			return fmt.Errorf("%w: body: %v: \"by\" is not accepted: the actor is the name of the token (http.token is \"admin\", http.tokens name theirs)", ErrBadInput, err)
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
	// Action is block_smtp (default), walled or quarantine.
	Action string `json:"action"`
	Reason string `json:"reason"`
	// Duration like "24h"; empty: containment.duration.
	Duration string `json:"duration"`
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
// checks the rest: action, width, allow list); by is who adds it.
func parseAdd(body io.Reader, by string) (manualAdd, error) {
	var req AddRequest
	if err := decodeBody(body, &req); err != nil {
		return manualAdd{}, err
	}
	pfx, err := network.ParsePrefix(req.IP)
	if err != nil || req.IP == "" {
		return manualAdd{}, fmt.Errorf("%w: ip: %q is not an address or prefix", ErrBadInput, req.IP)
	}
	m := manualAdd{prefix: pfx, action: req.Action, by: by, reason: req.Reason}
	if req.Duration != "" {
		if m.duration, err = time.ParseDuration(req.Duration); err != nil || m.duration <= 0 {
			return manualAdd{}, fmt.Errorf("%w: duration: %q, want a positive duration such as 24h", ErrBadInput, req.Duration)
		}
	}
	return m, nil
}

func (c *Component) serveAdd(w http.ResponseWriter, r *http.Request) {
	m, err := parseAdd(http.MaxBytesReader(w, r.Body, BodyLimit), actor(r))
	if err != nil {
		fail(w, err)
		return
	}
	ch, err := c.Add(r.Context(), m.prefix, m.action, m.by, m.reason, m.duration)
	if err != nil {
		fail(w, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusCreated, ch)
}

// NoteRequest is the body of a release or a hold (incident_id: a hold's
// only). Who acts is the name the request authenticated as.
type NoteRequest struct {
	IncidentID string `json:"incident_id,omitempty"`
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
	ch, err := c.Release(r.Context(), pfx, actor(r), req.Note)
	if err != nil {
		fail(w, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, ch)
}

func (c *Component) serveHold(w http.ResponseWriter, r *http.Request) {
	var req NoteRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	ch, err := c.hold(r.Context(), req.IncidentID, actor(r), req.Note)
	if err != nil {
		fail(w, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, ch)
}
