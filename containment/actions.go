package containment

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
)

// ActionsFilter selects rows of the audit trail (GET
// /api/v1/blocklist/actions): every set field must match.
type ActionsFilter struct {
	// Prefix: rows of this prefix and of every prefix that covers it (an
	// address finds the /32, the /64 of its subscriber, a manual /24).
	Prefix netip.Prefix
	// Customer: the entry's customer or its subscriber_id (ClickHouse
	// keeps the subscriber_id alone).
	Customer string
	Actor    string
	// Incident: the entry's reason (incident_id).
	Incident string
	// Before is the cursor: rows older than At, or as old and with an id
	// after ID (the order is at descending, id ascending).
	Before actionsCursor
	Limit  int
}

// actionsCursor is a position in the audit trail: "RFC3339[,id]".
type actionsCursor struct {
	At time.Time
	ID string
}

func (c actionsCursor) String() string {
	return c.At.UTC().Format(time.RFC3339Nano) + "," + c.ID
}

// after tells whether a row (at, id) comes after the cursor in the
// trail's order (newest first).
func (c actionsCursor) after(at time.Time, id string) bool {
	if c.At.IsZero() {
		return true
	}
	return at.Before(c.At) || at.Equal(c.At) && id > c.ID
}

// actionsParams are the query parameters the actions endpoint knows.
var actionsParams = []string{"limit", "prefix", "customer", "actor", "incident", "before"}

// ParseActionsFilter reads the query of GET /api/v1/blocklist/actions;
// an unknown parameter, or one given twice, is an error.
func ParseActionsFilter(q url.Values) (ActionsFilter, error) {
	f := ActionsFilter{Limit: 100}
	for k, v := range q {
		if !slices.Contains(actionsParams, k) {
			return f, fmt.Errorf("%w: unknown parameter %q, want %s", ErrBadInput, k, strings.Join(actionsParams, ", "))
		}
		if len(v) > 1 {
			return f, fmt.Errorf("%w: parameter %q given %d times, want once", ErrBadInput, k, len(v))
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			return f, fmt.Errorf("%w: limit: %q, want 1..10000", ErrBadInput, s)
		}
		f.Limit = n
	}
	if s := q.Get("prefix"); s != "" {
		p, err := network.ParsePrefix(s)
		if err != nil {
			return f, fmt.Errorf("%w: prefix: %q is not an address or prefix", ErrBadInput, s)
		}
		f.Prefix = p.Prefix
	}
	f.Customer, f.Actor, f.Incident = q.Get("customer"), q.Get("actor"), q.Get("incident")
	for name, v := range map[string]string{"customer": f.Customer, "actor": f.Actor, "incident": f.Incident} {
		if len(v) > 256 {
			return f, fmt.Errorf("%w: %s: longer than 256 bytes", ErrBadInput, name)
		}
	}
	if s := q.Get("before"); s != "" {
		at, id, _ := strings.Cut(s, ",")
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return f, fmt.Errorf("%w: before: %q, want an RFC 3339 time, optionally followed by \",\" and the id of the last row seen (the answer's \"next\")", ErrBadInput, s)
		}
		f.Before = actionsCursor{At: t, ID: id}
	}
	return f, nil
}

// covering lists p and every prefix that covers it, p first.
func covering(p netip.Prefix) []string {
	out := make([]string, 0, p.Bits()+1)
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		out = append(out, q.String())
	}
	return out
}

// match tells whether ch passes f (the cursor aside).
func (f ActionsFilter) match(ch Change) bool {
	e := ch.Entry
	if f.Prefix.IsValid() && (e.Prefix.Bits() > f.Prefix.Bits() || !e.Prefix.Contains(f.Prefix.Addr())) {
		return false
	}
	if f.Customer != "" && e.Customer != f.Customer && e.SubscriberID != f.Customer {
		return false
	}
	if f.Actor != "" && ch.Actor != f.Actor {
		return false
	}
	if f.Incident != "" && e.IncidentID != f.Incident {
		return false
	}
	return true
}

// ActionsPage is the answer of GET /api/v1/blocklist/actions.
type ActionsPage struct {
	Actions []Change `json:"actions"`
	// Next, when more rows may follow, is the before= of the next page.
	Next string `json:"next,omitempty"`
}

func (c *Component) serveActions(w http.ResponseWriter, r *http.Request) {
	f, err := ParseActionsFilter(r.URL.Query())
	if err != nil {
		fail(w, err)
		return
	}
	var out []Change
	if c.deps.ClickHouse != nil {
		if out, err = c.queryActions(r, f); err != nil {
			unavailable(w, err)
			return
		}
	} else {
		out = recentActions(c.Recent(), f)
	}
	page := ActionsPage{Actions: out}
	if page.Actions == nil {
		page.Actions = []Change{}
	}
	if len(out) == f.Limit {
		last := out[len(out)-1]
		page.Next = actionsCursor{At: last.At, ID: last.ID}.String()
	}
	httpserver.WriteJSON(w, http.StatusOK, page)
}

// recentActions filters this process's recent changes (oldest first) into
// a page, newest first.
func recentActions(recent []Change, f ActionsFilter) []Change {
	slices.Reverse(recent)
	slices.SortStableFunc(recent, func(a, b Change) int {
		if c := b.At.Compare(a.At); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	var out []Change
	for _, ch := range recent {
		if len(out) == f.Limit {
			break
		}
		if f.match(ch) && f.Before.after(ch.At, ch.ID) {
			out = append(out, ch)
		}
	}
	return out
}

func (c *Component) queryActions(r *http.Request, f ActionsFilter) ([]Change, error) {
	db := c.deps.ClickHouse
	var where []string
	var args []any
	if f.Prefix.IsValid() {
		where = append(where, "has(?, prefix)")
		args = append(args, covering(f.Prefix))
	}
	if f.Customer != "" {
		where = append(where, "subscriber_id = ?")
		args = append(args, f.Customer)
	}
	if f.Actor != "" {
		where = append(where, "actor = ?")
		args = append(args, f.Actor)
	}
	if f.Incident != "" {
		where = append(where, "incident_id = ?")
		args = append(args, f.Incident)
	}
	if !f.Before.At.IsZero() {
		// at is DateTime: whole seconds.
		at := f.Before.At.UTC().Truncate(time.Second)
		where = append(where, "(at < ? OR at = ? AND id > ?)")
		args = append(args, at, at, f.Before.ID)
	}
	query := "SELECT at, id, type, prefix, action, subscriber_id, incident_id, kind, actor, note, since, expires, dry_run FROM " +
		db.Database() + ".containment_actions FINAL"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY at DESC, id LIMIT " + strconv.Itoa(f.Limit)
	rows, err := db.Query(r.Context(), query, args...)
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
