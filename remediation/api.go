package remediation

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/webhook"
)

// APIPath is where the cases API is mounted.
const APIPath = "/api/v1/cases"

// Handler serves the cases API, guarded like the block list's:
//
//	GET  /api/v1/cases                       viewer: the cases (?state=, ?customer=, ?limit=)
//	GET  /api/v1/cases/stats                 viewer: the desk's measures
//	GET  /api/v1/cases/{id}                  viewer: a case and its history
//	GET  /api/v1/cases/{id}/xarf             viewer: redirects to the X-ARF report of its latest incident
//	POST /api/v1/cases/{id}/hold             operator: {"duration":"4h","note":..}
//	POST /api/v1/cases/{id}/skip             operator: pass over the next ladder step
//	POST /api/v1/cases/{id}/release          operator: lift its containment
//	POST /api/v1/cases/{id}/close            operator
//	POST /api/v1/cases/{id}/false_positive   operator: release, close, count against the rules
func (c *Component) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, need httpserver.Role, h http.HandlerFunc) {
		mux.HandleFunc(pattern, httpserver.Guard(c.deps.Authorize, need, nil, h))
	}
	route("GET "+APIPath, httpserver.RoleViewer, c.serveList)
	route("GET "+APIPath+"/stats", httpserver.RoleViewer, c.serveStats)
	route("GET "+APIPath+"/{id}", httpserver.RoleViewer, c.serveCase)
	route("GET "+APIPath+"/{id}/xarf", httpserver.RoleViewer, c.serveXARF)
	for _, action := range []string{"hold", "skip", "release", "close", "false_positive"} {
		route("POST "+APIPath+"/{id}/"+action, httpserver.RoleOperator, c.serveAction(action))
	}
	unknown := func(w http.ResponseWriter, r *http.Request) {
		httpserver.WriteError(w, http.StatusNotFound, "no such cases endpoint: "+r.Method+" "+r.URL.Path)
	}
	route(APIPath+"/", httpserver.RoleViewer, unknown)
	return httpserver.SecurityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httpserver.NewStatusRecorder(w)
		defer func() { c.metrics.apiRequests.WithLabelValues(httpserver.CodeLabel(rec.Status())).Inc() }()
		r.Body = http.MaxBytesReader(rec, r.Body, 64<<10)
		mux.ServeHTTP(rec, r)
	}), true)
}

func (c *Component) serveList(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckParams(r, "state", "customer", "limit"); err != nil {
		httpserver.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	q := r.URL.Query()
	state, customer := q.Get("state"), q.Get("customer")
	if state != "" && !validState(state) {
		httpserver.Error(w, http.StatusBadRequest, "state %q: want one of %s", state, strings.Join(States, ", "))
		return
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			httpserver.Error(w, http.StatusBadRequest, "limit %q: want 1..1000", s)
			return
		}
		limit = n
	}
	out := []Case{}
	for _, cs := range c.Cases() {
		if (state == "" || cs.State == state) && (customer == "" || cs.Customer == customer || cs.SubscriberIP == customer) {
			out = append(out, cs)
			if len(out) == limit {
				break
			}
		}
	}
	httpserver.WriteJSON(w, http.StatusOK, map[string]any{"cases": out})
}

func validState(s string) bool {
	for _, st := range States {
		if s == st {
			return true
		}
	}
	return false
}

func (c *Component) serveStats(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckParams(r); err != nil {
		httpserver.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, c.Stats())
}

// caseView is a case with what the console shows beside it.
type caseView struct {
	Case   Case    `json:"case"`
	Events []Event `json:"events"`
	// Ladder is the case's escalation, Next the step it waits for (-1:
	// none left), NextAt when it is due.
	Ladder           []Step    `json:"ladder"`
	Next             int       `json:"next"`
	NextAt           time.Time `json:"next_at,omitzero"`
	SelfReleasesLeft int       `json:"self_releases_left"`
	Evidence         Evidence  `json:"evidence"`
	XARF             string    `json:"xarf"`
}

func (c *Component) serveCase(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckParams(r); err != nil {
		httpserver.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	c.mu.Lock()
	cs, events, ok := c.book.Get(r.PathValue("id"))
	var v caseView
	if ok {
		v = caseView{Case: cs, Events: events, Ladder: c.book.ladder(&cs), Next: -1,
			SelfReleasesLeft: c.book.SelfReleasesLeft(&cs), Evidence: evidenceOf(cs.Alert),
			XARF: "/api/v1/incidents/" + cs.Alert.ID + "/xarf"}
		if !cs.ended() && cs.Step < len(v.Ladder) {
			v.Next, v.NextAt = cs.Step, cs.LadderFrom.Add(v.Ladder[cs.Step].After)
		}
	}
	c.mu.Unlock()
	if !ok {
		httpserver.WriteError(w, http.StatusNotFound, "no such case: "+r.PathValue("id"))
		return
	}
	if v.Events == nil {
		v.Events = []Event{}
	}
	httpserver.WriteJSON(w, http.StatusOK, v)
}

// serveXARF sends the desk to the console's X-ARF report of the case's
// latest incident: the report is the incident's, for upstreams and peers.
func (c *Component) serveXARF(w http.ResponseWriter, r *http.Request) {
	cs, _, ok := c.Case(r.PathValue("id"))
	if !ok {
		httpserver.WriteError(w, http.StatusNotFound, "no such case: "+r.PathValue("id"))
		return
	}
	http.Redirect(w, r, "/api/v1/incidents/"+url.PathEscape(cs.Alert.ID)+"/xarf", http.StatusFound)
}

type actionRequest struct {
	Note     string `json:"note"`
	Duration string `json:"duration"`
}

func (c *Component) serveAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req actionRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			if httpserver.BodyTooLarge(err) {
				httpserver.WriteError(w, http.StatusRequestEntityTooLarge, "request body too large")
				return
			}
			httpserver.Error(w, http.StatusBadRequest, "body: %v (want {\"note\": ..., \"duration\": ...})", err)
			return
		}
		if len(req.Note) > 1000 {
			httpserver.WriteError(w, http.StatusBadRequest, "note: at most 1000 characters")
			return
		}
		p, _ := httpserver.PrincipalFrom(r.Context())
		by := p.Name
		if by == "" {
			by = "api"
		}
		id := r.PathValue("id")
		var d time.Duration
		if action == "hold" {
			var err error
			if d, err = time.ParseDuration(req.Duration); err != nil || d <= 0 || d > 30*24*time.Hour {
				httpserver.Error(w, http.StatusBadRequest, "duration %q: want a duration such as 4h, at most 720h", req.Duration)
				return
			}
		}
		err := c.act(r.Context(), func(b *Casebook, now time.Time) (Result, error) {
			switch action {
			case "hold":
				return b.Hold(id, d, by, req.Note, now)
			case "skip":
				return b.Skip(id, by, req.Note, now)
			case "release":
				return b.Release(id, by, req.Note, now)
			case "close":
				return b.Close(id, by, req.Note, now)
			default:
				return b.FalsePositive(id, by, req.Note, now)
			}
		})
		switch {
		case errors.Is(err, ErrNotFound):
			httpserver.WriteError(w, http.StatusNotFound, "no such case: "+id)
		case errors.Is(err, ErrState):
			httpserver.WriteError(w, http.StatusConflict, err.Error())
		case err != nil:
			httpserver.Unavailable(w, 5*time.Second, "case %s: %v", id, err)
		default:
			c.mu.Lock()
			cs, _, _ := c.book.Get(id)
			c.mu.Unlock()
			httpserver.WriteJSON(w, http.StatusOK, map[string]any{"case": cs})
		}
	}
}

// webhookEvents names the case events for ticketing systems.
var webhookEvents = map[string]string{
	EventOpen: "case.opened", EventJoin: "case.joined", EventNotify: "case.notified", EventNotifyFailed: "case.notify_failed",
	EventWalled: "case.walled", EventBlocked: "case.blocked", EventReleased: "case.released", EventSelfRelease: "case.self_released",
	EventReleaseDenied: "case.release_denied", EventReopen: "case.reopened", EventClosed: "case.closed",
	EventFalsePositive: "case.false_positive", EventHold: "case.held", EventSkip: "case.skipped", EventContainFailed: "case.contain_failed",
}

// sendWebhooks delivers an event of case cs to every webhook target, signed as
// the sink signs alerts: {"event": "case.notified", ..., "case": {...}}.
func (c *Component) sendWebhooks(ctx context.Context, ev Event, cs Case) {
	if len(c.webhooks) == 0 {
		return
	}
	body, err := json.Marshal(map[string]any{"event": webhookEvents[ev.Type], "id": ev.ID, "case_id": ev.CaseID,
		"customer": ev.Customer, "at": ev.At, "type": ev.Type, "actor": ev.Actor, "note": ev.Note, "state": ev.State, "case": cs})
	if err != nil {
		return
	}
	header := http.Header{}
	header.Set("X-Wormsign-Event", webhookEvents[ev.Type])
	for _, d := range c.webhooks {
		if err := d.Enqueue(ctx, webhook.Event{Body: body, ID: ev.ID, Header: header}); err != nil {
			c.metrics.errors.WithLabelValues("webhook").Inc()
		}
	}
}
