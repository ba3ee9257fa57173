package console

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
)

// apiError is the body of every error answer (httpserver.Error).
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError answers {"error": msg}, as every API of the server does.
func writeError(w http.ResponseWriter, status int, msg string) {
	httpserver.WriteError(w, status, msg)
}

// badRequest is a client mistake, answered 400 with its message.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// fail answers err: 400 for a client mistake, 404 for an unknown
// incident, 503 with Retry-After for a store that does not answer (logged
// and counted).
func (c *Component) fail(w http.ResponseWriter, err error) {
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		writeError(w, http.StatusBadRequest, bad.msg)
	case errors.Is(err, errNotFound):
		writeError(w, http.StatusNotFound, "no such incident")
	default:
		c.metrics.storeErrors.Inc()
		c.deps.Logger.Warn("console store failed", "error", err)
		httpserver.Unavailable(w, 0, "the store does not answer: %v", err)
	}
}

// params checks that a request names only known parameters, each once.
func params(r *http.Request, known ...string) error {
	if err := httpserver.CheckParams(r, known...); err != nil {
		return badRequest{err.Error()}
	}
	return nil
}

func intParam(r *http.Request, name string, def, min, max int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		return 0, badf("%s: %q, want an integer from %d to %d", name, s, min, max)
	}
	return n, nil
}

func durationParam(r *http.Request, name string, def, min, max time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < min || d > max {
		return 0, badf("%s: %q, want a duration from %s to %s, e.g. 1h or 30m", name, s, min, max)
	}
	return d, nil
}

var kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// incidentQuery is what GET /api/v1/incidents asks.
type incidentQuery struct {
	state      string
	kind       string
	subscriber netip.Addr
	since      time.Time
	limit      int
	after      *alert.Alert // the cursor's place
}

type cursor struct {
	Open  bool      `json:"o"`
	Score float64   `json:"s"`
	End   time.Time `json:"e"`
	ID    string    `json:"i"`
}

func encodeCursor(a *alert.Alert) string {
	b, _ := json.Marshal(cursor{Open: isOpen(a), Score: a.Score, End: a.WindowEnd, ID: a.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (*alert.Alert, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	var cur cursor
	if err == nil {
		err = json.Unmarshal(raw, &cur)
	}
	if err != nil || cur.ID == "" || math.IsNaN(cur.Score) {
		return nil, badf("cursor: %q is not a next_cursor of this API", s)
	}
	a := &alert.Alert{ID: cur.ID, Score: cur.Score, WindowEnd: cur.End, State: alert.StateOpen}
	if !cur.Open {
		a.State = alert.StateResolved
	}
	return a, nil
}

func (c *Component) parseIncidentQuery(r *http.Request) (incidentQuery, error) {
	q := incidentQuery{}
	if err := params(r, "state", "kind", "subscriber", "since", "limit", "cursor"); err != nil {
		return q, err
	}
	v := r.URL.Query()
	switch q.state = v.Get("state"); q.state {
	case "":
		q.state = "open"
	case "open", "resolved", "any":
	default:
		return q, badf("state: %q, want open, resolved or any", q.state)
	}
	if q.kind = v.Get("kind"); q.kind != "" && !kindPattern.MatchString(q.kind) {
		return q, badf("kind: %q, want an alert kind such as smtp_fanout", q.kind)
	}
	if s := v.Get("subscriber"); s != "" {
		a, err := c.subscriberOf(s)
		if err != nil {
			return q, err
		}
		q.subscriber = a
	}
	q.since = c.now().Add(-c.config.Lookback)
	if s := v.Get("since"); s != "" {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			q.since = t
		} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
			q.since = c.now().Add(-d)
		} else {
			return q, badf("since: %q, want an RFC 3339 time (2026-11-27T05:00:00Z) or a duration back from now (24h)", s)
		}
	}
	var err error
	if q.limit, err = intParam(r, "limit", 100, 1, 1000); err != nil {
		return q, err
	}
	if s := v.Get("cursor"); s != "" {
		if q.after, err = decodeCursor(s); err != nil {
			return q, err
		}
	}
	return q, nil
}

type incidentList struct {
	Incidents  []Incident     `json:"incidents"`
	NextCursor *string        `json:"next_cursor"`
	Counts     map[string]int `json:"counts"`
}

// serveIncidents is GET /api/v1/incidents.
func (c *Component) serveIncidents(w http.ResponseWriter, r *http.Request) {
	q, err := c.parseIncidentQuery(r)
	if err != nil {
		c.fail(w, err)
		return
	}
	events, err := c.store.Events(r.Context(), q.since)
	if err != nil {
		c.fail(w, err)
		return
	}
	var matching []alert.Alert
	counts := map[string]int{}
	for _, a := range latest(events) {
		switch {
		case q.state == "open" && !isOpen(&a), q.state == "resolved" && isOpen(&a),
			q.subscriber.IsValid() && a.SubscriberIP != c.deps.Subscribers.Label(q.subscriber),
			a.WindowEnd.Before(q.since):
			continue
		}
		counts[a.Kind]++
		if q.kind != "" && a.Kind != q.kind {
			continue
		}
		if q.after != nil && !before(q.after, &a) {
			continue
		}
		matching = append(matching, a)
	}
	sortIncidents(matching)
	out := incidentList{Incidents: []Incident{}, Counts: counts}
	if len(matching) > q.limit {
		next := encodeCursor(&matching[q.limit-1])
		out.NextCursor = &next
		matching = matching[:q.limit]
	}
	if out.Incidents, err = c.withAcks(r, matching); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func sortIncidents(as []alert.Alert) {
	// Insertion into a sorted order would do; the lists are small.
	for i := 1; i < len(as); i++ {
		for j := i; j > 0 && before(&as[j], &as[j-1]); j-- {
			as[j], as[j-1] = as[j-1], as[j]
		}
	}
}

// withAcks attaches each incident's latest acknowledgement.
func (c *Component) withAcks(r *http.Request, as []alert.Alert) ([]Incident, error) {
	ids := make([]string, len(as))
	for i := range as {
		ids[i] = as[i].ID
	}
	acks, err := c.store.Acks(r.Context(), ids)
	if err != nil {
		return nil, err
	}
	out := make([]Incident, len(as))
	for i, a := range as {
		out[i] = Incident{Alert: a}
		if l := acks[a.ID]; len(l) > 0 {
			ack := l[len(l)-1]
			out[i].Ack = &ack
		}
	}
	return out, nil
}

type incidentDetail struct {
	Incident Incident      `json:"incident"`
	Events   []alert.Alert `json:"events"`
	Acks     []Ack         `json:"acks"`
}

func (c *Component) incidentDetail(r *http.Request, id string) (incidentDetail, error) {
	var d incidentDetail
	if id == "" || len(id) > 128 {
		return d, badf("incident id: %q is not an incident id", id)
	}
	events, err := c.store.IncidentEvents(r.Context(), id)
	if err != nil {
		return d, err
	}
	sortEvents(events)
	incs, err := c.withAcks(r, events[len(events)-1:])
	if err != nil {
		return d, err
	}
	acks, err := c.store.Acks(r.Context(), []string{id})
	if err != nil {
		return d, err
	}
	d = incidentDetail{Incident: incs[0], Events: events, Acks: acks[id]}
	if d.Acks == nil {
		d.Acks = []Ack{}
	}
	return d, nil
}

// serveIncident is GET /api/v1/incidents/{id}.
func (c *Component) serveIncident(w http.ResponseWriter, r *http.Request) {
	if err := params(r); err != nil {
		c.fail(w, err)
		return
	}
	d, err := c.incidentDetail(r, r.PathValue("id"))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// ackRequest is the body of an ack. Who acknowledges is the name the
// request authenticated as (http.tokens): there is no "by", and a body
// that has one is refused, as every unknown field.
type ackRequest struct {
	Note string `json:"note"`
	// Hold asks containment to hold the incident's block (postpone it
	// within the grace, lift it when active) while the desk works.
	Hold bool `json:"hold"`
}

// ackBodyLimit bounds an ack's body: "note" is at most 2,000 bytes, even
// JSON-escaped many times over.
const ackBodyLimit = 16 << 10

// serveAck is POST /api/v1/incidents/{id}/ack.
func (c *Component) serveAck(w http.ResponseWriter, r *http.Request) {
	// A JSON body cannot come from a cross-site form without a CORS
	// preflight, which this server never grants.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, `send the ack as JSON (Content-Type: application/json): {"note":"..."}`)
		return
	}
	id := r.PathValue("id")
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, ackBodyLimit))
	dec.DisallowUnknownFields()
	var req ackRequest
	if err := dec.Decode(&req); err != nil {
		if httpserver.BodyTooLarge(err) {
			writeError(w, http.StatusRequestEntityTooLarge, httpserver.TooLargeMessage(ackBodyLimit))
			return
		}
		c.fail(w, badf("body: %v; want {\"note\":\"...\",\"hold\":false}%s", err, byHint(err)))
		return
	}
	if dec.Decode(&struct{}{}) != io.EOF {
		c.fail(w, badf("body: want one JSON object"))
		return
	}
	req.Note = strings.TrimSpace(req.Note)
	by := actor(r)
	switch {
	case len(req.Note) > 2000:
		c.fail(w, badf("note: at most 2000 bytes"))
		return
	case req.Hold && c.deps.Holder == nil:
		c.fail(w, badf("hold: containment is not enabled here (containment.enabled)"))
		return
	}
	if _, err := c.store.IncidentEvents(r.Context(), id); err != nil {
		c.fail(w, err)
		return
	}
	ack := Ack{By: by, Note: req.Note, At: c.now().UTC()}
	// An ack with hold records both or neither: the hold first (the
	// part that may be refused), then the ack; when the ack cannot be
	// stored the hold is taken back. The answer says what happened:
	// "recorded" for the ack, "hold" none (not asked), held, refused (not
	// held, ack not stored either) or undone (held, then taken back).
	ans := struct {
		Error    string `json:"error,omitempty"`
		ID       string `json:"id"`
		Ack      *Ack   `json:"ack"`
		Recorded bool   `json:"recorded"`
		Hold     string `json:"hold"`
	}{ID: id, Hold: "none"}
	var undo func(context.Context) error
	if req.Hold {
		var err error
		if h, ok := c.deps.Holder.(interface {
			HoldWithUndo(ctx context.Context, incidentID, by, note string) (func(context.Context) error, error)
		}); ok {
			undo, err = h.HoldWithUndo(r.Context(), id, by, req.Note)
		} else {
			err = c.deps.Holder.Hold(r.Context(), id, by, req.Note)
		}
		if err != nil {
			ans.Hold, ans.Error = "refused", fmt.Sprintf("hold: %v; the acknowledgement is not recorded either", err)
			writeJSON(w, http.StatusBadRequest, ans)
			return
		}
		ans.Hold = "held"
	}
	if err := c.store.AddAck(r.Context(), id, ack); err != nil {
		status, msg := http.StatusServiceUnavailable, "the store does not answer: "+err.Error()
		if errors.Is(err, errNotFound) {
			status, msg = http.StatusNotFound, "no such incident"
		} else {
			c.metrics.storeErrors.Inc()
			c.deps.Logger.Warn("console store failed", "error", err)
			httpserver.SetRetryAfter(w, httpserver.StoreRetryAfter)
		}
		if req.Hold {
			why := "containment cannot take it back"
			if undo != nil {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
				uerr := undo(uctx)
				cancel()
				if uerr == nil {
					ans.Hold = "undone"
				} else {
					why = "taking it back failed: " + uerr.Error()
					c.deps.Logger.Warn("cannot undo the hold of an ack not stored", "id", id, "error", uerr)
				}
			}
			if ans.Hold == "undone" {
				msg += "; the hold is taken back"
			} else {
				msg += "; the hold stays (" + why + ")"
			}
		}
		ans.Error = msg
		writeJSON(w, status, ans)
		return
	}
	ans.Ack, ans.Recorded = &ack, true
	c.metrics.acks.Inc()
	c.deps.Logger.Info("incident acknowledged", "id", id, "by", ack.By, "hold", req.Hold)
	writeJSON(w, http.StatusCreated, ans)
}

type subscriberView struct {
	SubscriberIP string `json:"subscriber_ip"`
	// SubscriberID is the subscriber_id of its latest incident.
	SubscriberID string `json:"subscriber_id"`
	// Customer is who holds the address now, as identity knows it.
	Customer string `json:"customer"`
	// Holdings are who held the address (or prefixes around it, or port
	// blocks of it behind a CGNAT), and when: longest prefix first, then
	// oldest first; HoldingsFrom as for customers.
	Holdings      []Holding  `json:"holdings"`
	HoldingsFrom  string     `json:"holdings_from"`
	HoldingsError string     `json:"holdings_error,omitempty"`
	From          time.Time  `json:"from"`
	To            time.Time  `json:"to"`
	Series        []Point    `json:"series"`
	Incidents     []Incident `json:"incidents"`
}

func (c *Component) parseSubscriber(r *http.Request, extra ...string) (netip.Addr, int, error) {
	if err := params(r, append([]string{"hours"}, extra...)...); err != nil {
		return netip.Addr{}, 0, err
	}
	ip, err := c.subscriberOf(r.PathValue("ip"))
	if err != nil {
		return ip, 0, err
	}
	hours, err := intParam(r, "hours", 24, 1, int(c.maxHistory()/time.Hour))
	return ip, hours, err
}

// subscriberOf reads a subscriber as the API takes it: an address, or an
// IPv6 subscriber's prefix as alerts name it; any address of an IPv6
// subscriber's prefix is that subscriber.
func (c *Component) subscriberOf(s string) (netip.Addr, error) {
	p, err := network.ParsePrefix(s)
	if err != nil || (strings.Contains(s, "/") && p.Bits() != c.deps.Subscribers.Prefix(p.Addr()).Bits()) {
		return netip.Addr{}, badf("subscriber: %q is not an IP address or a subscriber prefix", s)
	}
	return c.deps.Subscribers.Subscriber(p.Addr()), nil
}

// maxHistory is how far back subscriber series go.
func (c *Component) maxHistory() time.Duration {
	if c.memory != nil {
		return c.config.History
	}
	return 31 * 24 * time.Hour
}

// serveSubscriber is GET /api/v1/subscribers/{ip}.
func (c *Component) serveSubscriber(w http.ResponseWriter, r *http.Request) {
	ip, hours, err := c.parseSubscriber(r)
	if err != nil {
		c.fail(w, err)
		return
	}
	to := c.now().UTC().Truncate(time.Minute).Add(time.Minute)
	from := to.Add(-time.Duration(hours) * time.Hour)
	v := subscriberView{SubscriberIP: c.deps.Subscribers.Label(ip), HoldingsFrom: c.holdingsFrom(), From: from, To: to, Series: []Point{}, Incidents: []Incident{}}
	c.addressHoldings(r, &v)
	series, err := c.store.Series(r.Context(), ip, from, to)
	if err != nil {
		c.fail(w, err)
		return
	}
	if series != nil {
		v.Series = series
	}
	since := c.now().Add(-max(c.config.Lookback, time.Duration(hours)*time.Hour))
	events, err := c.store.Events(r.Context(), since)
	if err != nil {
		c.fail(w, err)
		return
	}
	var mine []alert.Alert
	for _, a := range latest(events) {
		if a.SubscriberIP == v.SubscriberIP {
			mine = append(mine, a)
			if a.SubscriberID != "" {
				v.SubscriberID = a.SubscriberID
			}
		}
	}
	sortIncidents(mine)
	if v.Incidents, err = c.withAcks(r, mine); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// serveChart is GET /api/v1/subscribers/{ip}/chart.svg: one series of the
// subscriber as an SVG line chart, drawn here so the console needs no
// chart library.
func (c *Component) serveChart(w http.ResponseWriter, r *http.Request) {
	ip, hours, err := c.parseSubscriber(r, "metric")
	if err != nil {
		c.fail(w, err)
		return
	}
	metric := r.URL.Query().Get("metric")
	if metric == "" {
		metric = "flows"
	}
	if _, ok := chartMetrics[metric]; !ok {
		c.fail(w, badf("metric: %q, want flows, smtp_flows, destinations, smtp_destinations, bytes or packets", metric))
		return
	}
	to := c.now().UTC().Truncate(time.Minute).Add(time.Minute)
	from := to.Add(-time.Duration(hours) * time.Hour)
	series, err := c.store.Series(r.Context(), ip, from, to)
	if err != nil {
		c.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(drawChart(series, metric, from, to))
}

// topList is the answer of GET /api/v1/top.
type topList struct {
	Kind    string      `json:"kind"`
	Window  string      `json:"window"`
	From    time.Time   `json:"from"`
	Talkers []TopTalker `json:"talkers"`
}

// top reads a top list of kind with the window and limit the request
// names.
func (c *Component) top(r *http.Request, kind string) (topList, error) {
	l := topList{Kind: kind, Talkers: []TopTalker{}}
	window, err := durationParam(r, "window", time.Hour, time.Minute, c.maxHistory())
	if err != nil {
		return l, err
	}
	limit, err := intParam(r, "limit", 20, 1, 1000)
	if err != nil {
		return l, err
	}
	l.Window, l.From = window.String(), c.now().UTC().Add(-window).Truncate(time.Minute)
	talkers, err := c.store.Top(r.Context(), kind, l.From, limit)
	if err != nil {
		return l, err
	}
	if talkers != nil {
		l.Talkers = talkers
	}
	return l, nil
}

// serveTop is GET /api/v1/top: the subscribers with the most flows,
// bytes, packets, distinct destinations or distinct TCP/25 destinations
// over a window.
func (c *Component) serveTop(w http.ResponseWriter, r *http.Request) {
	if err := params(r, "kind", "window", "limit"); err != nil {
		c.fail(w, err)
		return
	}
	kind := r.URL.Query().Get("kind")
	if kind == "" {
		kind = "smtp"
	}
	if _, ok := topKinds[kind]; !ok {
		c.fail(w, badf("kind: %q, want smtp, flows, destinations, bytes or packets", kind))
		return
	}
	l, err := c.top(r, kind)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

// serveTopSMTP is GET /api/v1/top/smtp: GET /api/v1/top?kind=smtp in the
// shape it had before there were other lists.
func (c *Component) serveTopSMTP(w http.ResponseWriter, r *http.Request) {
	if err := params(r, "window", "limit"); err != nil {
		c.fail(w, err)
		return
	}
	l, err := c.top(r, "smtp")
	if err != nil {
		c.fail(w, err)
		return
	}
	talkers := make([]Talker, len(l.Talkers))
	for i, t := range l.Talkers {
		talkers[i] = Talker{SubscriberIP: t.SubscriberIP, SMTPDestinations: t.SMTPDestinations, SMTPFlows: t.SMTPFlows, Flows: t.Flows}
	}
	writeJSON(w, http.StatusOK, struct {
		Window  string    `json:"window"`
		From    time.Time `json:"from"`
		Talkers []Talker  `json:"talkers"`
	}{l.Window, l.From, talkers})
}
