package containment

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
)

// Entry states.
const (
	// StatePending: the incident's grace runs; exported once it ends.
	StatePending = "pending"
	// StateActive: on the list, exported until Expires.
	StateActive = "active"
	// StateHeld: a person asked to hold; back to the policy at HeldUntil.
	StateHeld = "held"
	// StateReleased: off the list.
	StateReleased = "released"
	// StateUnbound: the customer's block waits for an address: identity
	// knows none it holds now. Never exported; kept under the customer's
	// key (identity.Key) until one is known.
	StateUnbound = "unbound"
)

// Change types, the audit trail's vocabulary.
const (
	ChangeSchedule = "schedule" // a pending block, grace running
	ChangeAdd      = "add"      // on the list (also: an upgrade to a stronger action)
	ChangeExtend   = "extend"   // expiry moved on by new activity
	ChangeHold     = "hold"     // held by a person, off the list meanwhile
	ChangeRelease  = "release"  // off the list: expired, by hand, or resolved while held
	ChangeRefuse   = "refuse"   // max_entries reached: not added
	// ChangeIncident: the entry's incidents changed (one resolved, or
	// another joined it); noted in the entry, the list is unchanged.
	ChangeIncident = "incident"
	// ChangeRemove: a released entry removed after
	// containment.released_retention. On the topic it is a tombstone
	// (the prefix's key with no value); the audit never sees it.
	ChangeRemove = "remove"
)

// maxIncidents bounds each of an entry's lists of incident ids.
const maxIncidents = 32

// PolicyActor is the actor of the policy's own decisions.
const PolicyActor = "policy"

// Entry is one subscriber prefix on (or scheduled for, or held off, or
// released from) the block list.
type Entry struct {
	Prefix       netip.Prefix `json:"prefix"`
	State        string       `json:"state"`
	Action       string       `json:"action"`
	SubscriberID string       `json:"subscriber_id"`
	// Customer is set when identity named the customer behind the
	// incident: the entry follows it to whatever address it holds.
	Customer string `json:"customer,omitempty"`
	// The reason: the incident and its kind ("manual" for a person's add).
	IncidentID string `json:"incident_id"`
	Kind       string `json:"kind"`
	// Incidents are the incidents the entry carries since its block was
	// scheduled: IncidentID, those it replaced by upgrades and those that
	// extended it, oldest first (at most maxIncidents). Resolved are
	// those of them whose resolved alert came: a hold that ends when all
	// have resolved releases the entry.
	Incidents []string `json:"incidents,omitempty"`
	Resolved  []string `json:"resolved,omitempty"`
	// ReleasedIncidents are incidents whose block of this prefix is over
	// (released by hand, expired, resolved while held, refused): they
	// never block it again, nor, for an entry of a customer, the
	// customer anywhere. Kept across later blocks of the prefix (at most
	// maxIncidents, newest last) until the entry is removed.
	ReleasedIncidents []string `json:"released_incidents,omitempty"`
	// Who put it there, and why.
	Actor string `json:"actor"`
	Note  string `json:"note,omitempty"`
	// Since is when it went on the list, Expires when it comes off.
	Since   time.Time `json:"since,omitzero"`
	Expires time.Time `json:"expires,omitzero"`
	// BlockAt is when a pending entry's grace ends; HeldUntil when a hold
	// ends.
	BlockAt   time.Time `json:"block_at,omitzero"`
	HeldUntil time.Time `json:"held_until,omitzero"`
	// ReleasedAt is when a released entry came off the list; it is
	// removed containment.released_retention later.
	ReleasedAt time.Time `json:"released_at,omitzero"`
	// Seq counts the entry's changes; of two records of one prefix the
	// higher Seq wins.
	Seq uint64 `json:"seq"`
}

// incidents returns the incidents e carries; for an entry recorded before
// Entry.Incidents, its IncidentID.
func (e *Entry) incidents() []string {
	if len(e.Incidents) == 0 && e.IncidentID != "" {
		return []string{e.IncidentID}
	}
	return e.Incidents
}

// carries tells whether e carries incident id.
func (e *Entry) carries(id string) bool {
	return id != "" && slices.Contains(e.incidents(), id)
}

// join adds incident id to those e carries; it tells whether id is new.
func (e *Entry) join(id string) bool {
	if id == "" || e.carries(id) {
		return false
	}
	e.Incidents = appendID(e.incidents(), id)
	// Resolved only names incidents still carried.
	e.Resolved = slices.DeleteFunc(e.Resolved, func(r string) bool { return !slices.Contains(e.Incidents, r) })
	return true
}

// allResolved tells whether every incident e carries has resolved. An
// entry without incidents (a manual one) has not: nothing resolves it.
func (e *Entry) allResolved() bool {
	ids := e.incidents()
	if len(ids) == 0 {
		return false
	}
	for _, id := range ids {
		if !slices.Contains(e.Resolved, id) {
			return false
		}
	}
	return true
}

// appendID appends id to list (a fresh copy), keeping the newest
// maxIncidents.
func appendID(list []string, id string) []string {
	out := append(slices.Clone(list), id)
	if len(out) > maxIncidents {
		out = out[len(out)-maxIncidents:]
	}
	return out
}

// Change is one audited change to the list: what happened, by whom, and the
// entry as it is after it. It is the record on the containment topic, the
// row in ClickHouse containment_actions and the body of a webhook.
type Change struct {
	// ID is derived from the change, so that instances that make the same
	// decision record the same id.
	ID     string    `json:"id"`
	Event  string    `json:"event"` // always "containment", to tell webhook bodies from alerts
	Type   string    `json:"type"`
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
	Note   string    `json:"note,omitempty"`
	DryRun bool      `json:"dry_run"`
	Entry  Entry     `json:"entry"`
}

// Errors of manual changes; the API answers them with 4xx.
var (
	ErrBadInput   = errors.New("bad input")
	ErrAllowed    = errors.New("on the allow list")
	ErrFull       = errors.New("block list full (containment.max_entries)")
	ErrNotFound   = errors.New("not found")
	ErrNotBlocked = errors.New("not on the list")
)

// CaseAction is what remediation asks of the list for a case: contain
// these prefixes of a customer with an action.
type CaseAction struct {
	// ID is the entries' incident id: unique per case step
	// ("case-abc:walled:1"), so that ReleaseIncidents lifts that step.
	ID                     string
	Customer, SubscriberID string
	// Prefixes are the customer's current prefixes.
	Prefixes []netip.Prefix
	// Action is block_smtp, walled or quarantine.
	Action      string
	Actor, Note string
	// Duration is how long the entries last; 0: containment.duration.
	Duration time.Duration
}

// Policy is containment's state machine. It is pure: every decision takes
// its time from its input (an alert's last_seen, or the time given to
// Advance and the manual calls), never from a clock, so the same inputs
// give the same list and the same changes. Not safe for concurrent use.
type Policy struct {
	config  Configuration
	allow   *network.Set
	groups  *network.Table[*GroupConfiguration]
	entries map[netip.Prefix]*Entry
	now     time.Time
	// holdings tells the prefixes a customer holds at a time (identity);
	// nil without identity.
	holdings func(customer string, t time.Time) []netip.Prefix
	// deferred are the timers' changes that a manual call (Add, Release,
	// Hold) ran before its own: Deferred hands them to the caller to
	// record, so that no expiry is lost from the topic and the audit.
	deferred []Change
}

// Deferred returns, and forgets, the timers' changes the manual calls
// made since the last call.
func (p *Policy) Deferred() []Change {
	out := p.deferred
	p.deferred = nil
	return out
}

// SetHoldings makes entries of customers follow them: holdings returns the
// prefixes a customer holds at t.
func (p *Policy) SetHoldings(holdings func(customer string, t time.Time) []netip.Prefix) {
	p.holdings = holdings
}

// NewPolicy makes an empty list. detectorAllow is the detector's allow
// list; detectorGroups maps detector group names to their networks, for
// containment groups that name one without networks of their own.
func NewPolicy(config Configuration, detectorAllow []network.Prefix, detectorGroups map[string][]network.Prefix) *Policy {
	p := &Policy{
		config:  config,
		allow:   network.NewSet(append(slices.Clone(detectorAllow), config.AllowList...)...),
		groups:  network.NewTable[*GroupConfiguration](),
		entries: map[netip.Prefix]*Entry{},
	}
	for i := range config.Groups {
		g := &config.Groups[i]
		nets := g.Networks
		if len(nets) == 0 {
			nets = detectorGroups[g.Name]
		}
		for _, n := range nets {
			p.groups.Insert(n.Prefix, g)
		}
	}
	return p
}

// Now is the policy's time: the latest time it was given.
func (p *Policy) Now() time.Time { return p.now }

func (p *Policy) advanceTo(t time.Time) {
	if t.After(p.now) {
		p.now = t.UTC()
	}
}

// actionFor applies the allow list and the groups to an alert's kind.
func (p *Policy) actionFor(addr netip.Addr, kind string) string {
	if p.allow.Contains(addr) {
		return ActionNone
	}
	if g, ok := p.groups.Lookup(addr); ok {
		if g.Disable {
			return ActionNone
		}
		if a := g.Actions.For(kind); a != ActionNone || groupNames(g.Actions, kind) {
			return a
		}
	}
	return p.config.Actions.For(kind)
}

// groupNames tells whether a group's actions name kind (an explicit none).
func groupNames(a ActionsConfiguration, kind string) bool {
	switch kind {
	case "smtp_fanout":
		return a.SMTPFanout != ""
	case "dst_entropy":
		return a.DstEntropy != ""
	case "darknet":
		return a.Darknet != ""
	case "relay_abuse":
		return a.RelayAbuse != ""
	case "outbound_flood":
		return a.OutboundFlood != ""
	}
	return false
}

// stronger tells whether action a stops more than b (see actionRank).
func stronger(a, b string) bool { return actionRank(a) > actionRank(b) }

func eventTime(a alert.Alert) time.Time {
	if !a.LastSeen.IsZero() {
		return a.LastSeen
	}
	return a.WindowEnd
}

// change records a change of e and returns it.
func (p *Policy) change(e *Entry, typ, actor, note string) Change {
	return p.changeAt(e, typ, actor, note, p.now)
}

// changeAt records a change made at a timer's time: every instance that
// runs the timer records the same change under the same id.
func (p *Policy) changeAt(e *Entry, typ, actor, note string, at time.Time) Change {
	e.Seq++
	h := sha256.New()
	fmt.Fprintf(h, "%s|%s|%d|%s|%s|%s", e.Prefix, typ, e.Seq, e.IncidentID, at.Format(time.RFC3339Nano), actor)
	return Change{
		ID: hex.EncodeToString(h.Sum(nil)[:16]), Event: "containment", Type: typ, At: at,
		Actor: actor, Note: note, DryRun: p.config.DryRun, Entry: *e,
	}
}

// Apply takes an alert: the timers up to its event time run first, then
// the alert may schedule, add, upgrade or extend an entry.
func (p *Policy) Apply(a alert.Alert) []Change {
	t := eventTime(a)
	out := p.Advance(t)
	// An IPv4 subscriber is an address, an IPv6 one its prefix
	// (network.Subscribers.Label): the entry covers all of it.
	sub, err := network.ParsePrefix(a.SubscriberIP)
	if err != nil {
		return out
	}
	customer := ""
	if a.Evidence.Identity != nil && p.holdings != nil {
		customer = a.Evidence.Identity.Customer
	}
	if customer == "" {
		return append(out, p.applyTo(sub.Prefix, "", a, t)...)
	}
	// The customer's block goes where the customer is now, which may no
	// longer be the address of the alert's flows: that one may be
	// someone else's by now.
	targets := p.holdings(customer, p.now)
	if len(targets) == 0 {
		targets = []netip.Prefix{unboundPrefix(customer)}
	}
	for _, pfx := range targets {
		out = append(out, p.applyTo(pfx, customer, a, t)...)
	}
	return out
}

// unboundPrefix is where a customer's entry waits while identity knows no
// address it holds: its key, which no flow has as source.
func unboundPrefix(customer string) netip.Prefix {
	k := identity.Key(customer)
	return netip.PrefixFrom(k, k.BitLen())
}

// applyTo applies alert a to the entry of pfx, which customer (when set)
// holds.
func (p *Policy) applyTo(pfx netip.Prefix, customer string, a alert.Alert, t time.Time) []Change {
	var out []Change
	addr := pfx.Addr()
	unbound := identity.IsKey(addr)
	action := p.config.Actions.For(a.Kind)
	if !unbound {
		action = p.actionFor(addr, a.Kind)
	}
	e := p.entries[pfx]
	if a.State == alert.StateResolved {
		return p.resolve(e, a)
	}
	if action == ActionNone {
		return out
	}
	if p.over(pfx, customer, a.ID) {
		return out // released by hand, expired, ...: not again for this incident
	}
	switch {
	case e == nil || e.State == StateReleased:
		if e == nil {
			e = &Entry{Prefix: pfx}
			p.entries[pfx] = e
		}
		*e = Entry{Prefix: pfx, Action: action, SubscriberID: a.SubscriberID, Customer: customer, IncidentID: a.ID, Kind: a.Kind,
			Incidents: []string{a.ID}, ReleasedIncidents: e.ReleasedIncidents, Actor: PolicyActor, Seq: e.Seq}
		switch {
		case unbound:
			e.State, e.BlockAt = StateUnbound, t.Add(p.config.Grace)
			out = append(out, p.change(e, ChangeSchedule, PolicyActor, "waits for an address of customer "+customer))
		case p.config.Grace == 0:
			out = append(out, p.activate(e, t, "")...)
		default:
			e.State, e.BlockAt = StatePending, t.Add(p.config.Grace)
			out = append(out, p.change(e, ChangeSchedule, PolicyActor, "grace "+p.config.Grace.String()))
		}
	case e.State == StateActive:
		// Every incident that joins is recorded (every instance must
		// know which are open when a hold ends); a manual entry stays a
		// person's, which no hold of an incident lifts.
		joined := e.Kind != "manual" && e.join(a.ID)
		if stronger(action, e.Action) {
			e.Action, e.IncidentID, e.Kind = action, a.ID, a.Kind
			e.Expires = laterOf(e.Expires, t.Add(p.config.Duration))
			out = append(out, p.change(e, ChangeAdd, PolicyActor, "upgraded by "+a.Kind))
		} else if exp := t.Add(p.config.Duration); exp.Sub(e.Expires) >= time.Minute || joined {
			e.Expires = laterOf(e.Expires, exp)
			note := a.Kind + " " + a.State
			if joined {
				note += ", incident " + a.ID + " joined"
			}
			out = append(out, p.change(e, ChangeExtend, PolicyActor, note))
		}
	case e.State == StatePending || e.State == StateUnbound || e.State == StateHeld:
		joined := e.join(a.ID)
		switch {
		case stronger(action, e.Action):
			e.Action, e.IncidentID, e.Kind = action, a.ID, a.Kind
			typ := ChangeSchedule
			if e.State == StateHeld {
				typ = ChangeIncident // still held; the stronger block comes when the hold ends
			}
			out = append(out, p.change(e, typ, PolicyActor, "upgraded by "+a.Kind))
		case joined:
			out = append(out, p.change(e, ChangeIncident, PolicyActor, "incident "+a.ID+" joined: "+a.Kind+" "+a.State))
		}
	}
	return out
}

// resolve notes that incident a resolved in e, when e carries it: a held
// entry whose incidents have all resolved is released; a pending one
// still blocks when its grace ends, an active one runs out. The note is a
// change of its own so that every instance knows, when a hold ends,
// whether the incident is still open.
func (p *Policy) resolve(e *Entry, a alert.Alert) []Change {
	if e == nil || e.State == StateReleased || !e.carries(a.ID) || slices.Contains(e.Resolved, a.ID) {
		return nil
	}
	e.Incidents = e.incidents()
	e.Resolved = appendID(e.Resolved, a.ID)
	if e.State == StateHeld && e.allResolved() {
		p.release(e, p.now, true)
		return []Change{p.change(e, ChangeRelease, PolicyActor, "incident resolved while held")}
	}
	return []Change{p.change(e, ChangeIncident, PolicyActor, "incident "+a.ID+" resolved")}
}

// release takes e off the list at t. final says its incidents are over for
// the prefix (released by hand, expired, resolved, refused): they never
// block it again. A move of the customer is not final: its block goes on
// where the customer is.
func (p *Policy) release(e *Entry, t time.Time, final bool) {
	e.State, e.ReleasedAt = StateReleased, t
	if final {
		for _, id := range e.incidents() {
			if !slices.Contains(e.ReleasedIncidents, id) {
				e.ReleasedIncidents = appendID(e.ReleasedIncidents, id)
			}
		}
	}
}

// over tells whether incident id must not block pfx: its block there is
// over (see Entry.ReleasedIncidents; a released entry that carried it, as
// one released because the customer moved), or, for customer's alert,
// its block of the customer is over on any prefix.
func (p *Policy) over(pfx netip.Prefix, customer, id string) bool {
	if e := p.entries[pfx]; e != nil && (slices.Contains(e.ReleasedIncidents, id) || e.State == StateReleased && e.carries(id)) {
		return true
	}
	if customer == "" {
		return false
	}
	for _, e := range p.entries {
		if e.Customer == customer && slices.Contains(e.ReleasedIncidents, id) {
			return true
		}
	}
	return false
}

// Follow moves customer's entries to the prefixes it holds at the
// policy's time: an entry on a prefix it no longer holds is released
// ("address reassigned": the next holder is never blocked), and each
// prefix it holds now gets the entry as it was (state, action, incident,
// grace, expiry). With no prefix known the entry waits, unbound, until
// one is.
func (p *Policy) Follow(customer string, t time.Time) []Change {
	if p.holdings == nil || customer == "" {
		return nil
	}
	out := p.Advance(t)
	entries := make([]*Entry, 0, len(p.entries))
	for _, e := range p.entries {
		entries = append(entries, e)
	}
	return append(out, p.follow(customer, entries)...)
}

// FollowAll is Follow for every customer with an entry not released, the
// timers run once and the entries grouped once: the periodic follow (a
// session that expired sends no record), which must not cost the list's
// size once per customer.
func (p *Policy) FollowAll(t time.Time) []Change {
	if p.holdings == nil {
		return nil
	}
	out := p.Advance(t)
	byCustomer := map[string][]*Entry{}
	for _, e := range p.entries {
		if e.Customer != "" && e.State != StateReleased {
			byCustomer[e.Customer] = append(byCustomer[e.Customer], e)
		}
	}
	customers := slices.Sorted(maps.Keys(byCustomer))
	for _, customer := range customers {
		candidates := byCustomer[customer]
		if w := p.entries[unboundPrefix(customer)]; w != nil {
			candidates = append(candidates, w) // parked earlier in this round
		}
		out = append(out, p.follow(customer, candidates)...)
	}
	return out
}

// follow is Follow at the policy's time, among candidates: the entries
// of customer are those of them it still holds (an earlier follow in the
// same round may have changed one).
func (p *Policy) follow(customer string, candidates []*Entry) []Change {
	var out []Change
	var mine []*Entry
	for _, e := range candidates {
		if e.Customer == customer && e.State != StateReleased {
			mine = append(mine, e)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	// The entry the others copy: the furthest along, then the latest.
	slices.SortFunc(mine, func(a, b *Entry) int {
		if r := stateRank(b.State) - stateRank(a.State); r != 0 {
			return r
		}
		return comparePrefix(a.Prefix, b.Prefix)
	})
	model := *mine[0]
	targets := p.holdings(customer, p.now)
	if len(targets) == 0 {
		targets = []netip.Prefix{unboundPrefix(customer)}
	}
	held := map[netip.Prefix]bool{}
	for _, pfx := range targets {
		held[pfx.Masked()] = true
	}
	from := ""
	for _, e := range mine {
		if held[e.Prefix] {
			continue
		}
		if !identity.IsKey(e.Prefix.Addr()) {
			from = e.Prefix.String()
		}
		p.release(e, p.now, false)
		note := "address reassigned"
		if identity.IsKey(e.Prefix.Addr()) {
			note = "address of customer " + customer + " known"
		}
		out = append(out, p.change(e, ChangeRelease, PolicyActor, note))
	}
	for _, pfx := range targets {
		pfx = pfx.Masked()
		if e := p.entries[pfx]; e != nil && e.Customer == customer && e.State != StateReleased {
			continue
		}
		out = append(out, p.place(pfx, model, from)...)
	}
	return out
}

// park keeps a customer's entry e, whose address another customer now
// holds, as that customer's unbound entry: it lands on the customer's next
// address (an active one with its expiry, as after any wait).
func (p *Policy) park(e Entry) []Change {
	pfx := unboundPrefix(e.Customer)
	if w := p.entries[pfx]; w != nil && w.State != StateReleased {
		return nil // it waits already
	}
	w := p.entries[pfx]
	seq := uint64(0)
	if w != nil {
		seq = w.Seq
	}
	parked := e
	parked.Prefix, parked.State, parked.Seq = pfx, StateUnbound, seq
	p.entries[pfx] = &parked
	return []Change{p.change(&parked, ChangeSchedule, PolicyActor, "address "+e.Prefix.String()+" reassigned: waits for an address of customer "+e.Customer)}
}

func stateRank(s string) int {
	switch s {
	case StateActive:
		return 4
	case StateHeld:
		return 3
	case StatePending:
		return 2
	case StateUnbound:
		return 1
	}
	return 0
}

// place puts the customer's entry model on pfx, which it now holds.
func (p *Policy) place(pfx netip.Prefix, model Entry, from string) []Change {
	var out []Change
	e := p.entries[pfx]
	if e != nil && e.Customer != "" && e.Customer != model.Customer && e.State != StateReleased {
		// The previous holder's block is still here: it left the
		// address (two customers swapped, say) and its own follow has
		// not come yet. It waits for that customer's next address
		// instead of being overwritten.
		out = append(out, p.park(*e)...)
	}
	if e == nil {
		e = &Entry{Prefix: pfx}
		p.entries[pfx] = e
	}
	seq, released := e.Seq, e.ReleasedIncidents
	*e = model
	e.Prefix, e.Seq, e.ReleasedAt = pfx, seq, time.Time{}
	for _, id := range released {
		if !slices.Contains(e.ReleasedIncidents, id) {
			e.ReleasedIncidents = appendID(e.ReleasedIncidents, id)
		}
	}
	note := "follows customer " + model.Customer
	if from != "" {
		note += " from " + from
	}
	if identity.IsKey(pfx.Addr()) {
		e.State = StateUnbound
		return append(out, p.change(e, ChangeSchedule, PolicyActor, "waits for an address of customer "+model.Customer))
	}
	if p.allow.Contains(pfx.Addr()) {
		p.release(e, p.now, false)
		return append(out, p.change(e, ChangeRelease, PolicyActor, "allow-listed: "+note))
	}
	switch model.State {
	case StateUnbound:
		// Blocked before it lost its address: blocked again, until
		// the same expiry.
		if !model.Expires.IsZero() {
			if !model.Expires.After(p.now) {
				p.release(e, p.now, true)
				return append(out, p.change(e, ChangeRelease, PolicyActor, "expired while no address was known"))
			}
			e.State = StateActive
			return append(out, p.change(e, ChangeAdd, PolicyActor, note))
		}
		// Waited for an address from the start: the grace runs from
		// the incident as it would have.
		if p.config.Grace == 0 || !model.BlockAt.After(p.now) {
			e.State = StatePending
			return append(out, p.activate(e, p.now, note)...)
		}
		e.State = StatePending
		return append(out, p.change(e, ChangeSchedule, PolicyActor, note))
	case StateActive:
		if p.countActive() >= p.config.MaxEntries {
			p.release(e, p.now, true)
			return append(out, p.change(e, ChangeRefuse, PolicyActor, "max_entries "+strconv.Itoa(p.config.MaxEntries)+" reached"))
		}
		return append(out, p.change(e, ChangeAdd, PolicyActor, note))
	}
	return append(out, p.change(e, ChangeSchedule, PolicyActor, note))
}

func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// activate puts e on the list at t, unless the list is full.
func (p *Policy) activate(e *Entry, t time.Time, note string) []Change {
	if p.countActive() >= p.config.MaxEntries {
		p.release(e, t, true)
		return []Change{p.changeAt(e, ChangeRefuse, PolicyActor, "max_entries "+strconv.Itoa(p.config.MaxEntries)+" reached", t)}
	}
	e.State, e.Since, e.Expires, e.BlockAt, e.HeldUntil = StateActive, t, t.Add(p.config.Duration), time.Time{}, time.Time{}
	return []Change{p.changeAt(e, ChangeAdd, PolicyActor, note, t)}
}

func (p *Policy) countActive() int {
	n := 0
	for _, e := range p.entries {
		if e.State == StateActive {
			n++
		}
	}
	return n
}

// Advance runs the timers up to t: grace ends, holds end, blocks expire,
// released entries are removed, in the order of their times (then of
// prefixes).
func (p *Policy) Advance(t time.Time) []Change {
	p.advanceTo(t)
	var out []Change
	for {
		var next *Entry
		var at time.Time
		for _, e := range p.entries {
			var when time.Time
			switch e.State {
			case StatePending:
				when = e.BlockAt
			case StateHeld:
				when = e.HeldUntil
			case StateActive:
				when = e.Expires
			case StateReleased:
				if p.config.ReleasedRetention <= 0 {
					continue
				}
				when = releasedAt(e).Add(p.config.ReleasedRetention)
			default:
				continue
			}
			if when.After(p.now) {
				continue
			}
			if next == nil || when.Before(at) || when.Equal(at) && e.Prefix.Addr().Less(next.Prefix.Addr()) {
				next, at = e, when
			}
		}
		if next == nil {
			return out
		}
		switch next.State {
		case StatePending:
			out = append(out, p.activate(next, at, "grace ended")...)
		case StateHeld:
			if next.allResolved() {
				// The incident ended meanwhile (or before the hold):
				// nothing left to block.
				p.release(next, at, true)
				out = append(out, p.changeAt(next, ChangeRelease, PolicyActor, "hold ended; incident resolved", at))
			} else {
				out = append(out, p.activate(next, at, "hold ended")...)
			}
		case StateActive:
			p.release(next, at, true)
			out = append(out, p.changeAt(next, ChangeRelease, PolicyActor, "expired", at))
		case StateReleased:
			delete(p.entries, next.Prefix)
			out = append(out, p.changeAt(next, ChangeRemove, PolicyActor, "released "+p.config.ReleasedRetention.String()+" ago", at))
		}
	}
}

// releasedAt is when e was released; for an entry recorded before
// Entry.ReleasedAt, the latest of its times.
func releasedAt(e *Entry) time.Time {
	if !e.ReleasedAt.IsZero() {
		return e.ReleasedAt
	}
	return laterOf(laterOf(e.Since, e.Expires), laterOf(e.BlockAt, e.HeldUntil))
}

// Remove drops the entry of pfx, as a tombstone read from the topic says;
// it tells whether there was one.
func (p *Policy) Remove(pfx netip.Prefix) bool {
	if _, ok := p.entries[pfx]; !ok {
		return false
	}
	delete(p.entries, pfx)
	return true
}

// Add puts prefix on the list by hand at t, for d (the configured duration
// when 0).
func (p *Policy) Add(pfx netip.Prefix, action, actor, note string, d time.Duration, t time.Time) (Change, error) {
	if err := p.checkPrefix(pfx); err != nil {
		return Change{}, err
	}
	if action == "" {
		action = ActionBlockSMTP
	}
	if !entryAction(action) {
		return Change{}, fmt.Errorf("%w: action %q, want block_smtp, walled or quarantine", ErrBadInput, action)
	}
	if actor == "" {
		return Change{}, fmt.Errorf("%w: by: who adds must be given", ErrBadInput)
	}
	if d < 0 {
		return Change{}, fmt.Errorf("%w: duration %s, want > 0", ErrBadInput, d)
	}
	if d == 0 {
		d = p.config.Duration
	}
	pfx = pfx.Masked()
	if p.allow.Overlaps(pfx) {
		// Any allow-listed address inside pfx, not only its first.
		return Change{}, fmt.Errorf("%s: %w (containment.allow_list or detector.allow_list holds addresses in it)", pfx, ErrAllowed)
	}
	p.deferred = append(p.deferred, p.Advance(t)...)
	e := p.entries[pfx]
	if (e == nil || e.State != StateActive) && p.countActive() >= p.config.MaxEntries {
		return Change{}, ErrFull
	}
	if e == nil {
		e = &Entry{Prefix: pfx}
		p.entries[pfx] = e
	}
	*e = Entry{Prefix: pfx, State: StateActive, Action: action, SubscriberID: e.SubscriberID, Kind: "manual",
		Actor: actor, Note: note, Since: p.now, Expires: p.now.Add(d), ReleasedIncidents: e.ReleasedIncidents, Seq: e.Seq}
	return p.change(e, ChangeAdd, actor, note), nil
}

func (p *Policy) checkPrefix(pfx netip.Prefix) error {
	if !pfx.IsValid() {
		return fmt.Errorf("%w: not an address or prefix", ErrBadInput)
	}
	widest := p.config.WidestPrefixV4
	if pfx.Addr().Is6() {
		widest = p.config.WidestPrefixV6
	}
	if pfx.Bits() < widest {
		return fmt.Errorf("%w: %s is wider than /%d (containment.widest_prefix_v%d)", ErrBadInput, pfx,
			widest, map[bool]int{true: 6, false: 4}[pfx.Addr().Is6()])
	}
	return nil
}

// KindCase is the kind of the entries of a remediation case's steps.
const KindCase = "case"

// Contain puts a case's step on the list at t: each of a.Prefixes is
// active at once with a.Action until t plus a.Duration. A step is an
// explicit decision, as a manual add is: no grace, a pending or held
// entry becomes active, and incidents released before from the prefix
// (Entry.ReleasedIncidents) do not keep it off. On an entry already there
// the step joins the entry's incidents (so that ReleaseIncidents finds
// it), its action replaces a weaker or equal one, and the expiry only
// moves on; a manual entry whose action is at least the step's is a
// person's and left as it is. It is all or nothing: a prefix refused (too
// wide, allow-listed) or a list without room for the new entries
// changes nothing. The timers' changes up to t come first.
func (p *Policy) Contain(a CaseAction, t time.Time) ([]Change, error) {
	switch {
	case a.ID == "" || a.Actor == "":
		return nil, fmt.Errorf("%w: case step: id and actor must be given", ErrBadInput)
	case !entryAction(a.Action):
		return nil, fmt.Errorf("%w: case step %s: action %q, want block_smtp, walled or quarantine", ErrBadInput, a.ID, a.Action)
	case len(a.Prefixes) == 0:
		return nil, fmt.Errorf("%w: case step %s: no prefix to contain", ErrBadInput, a.ID)
	case a.Duration < 0:
		return nil, fmt.Errorf("%w: case step %s: duration %s, want > 0", ErrBadInput, a.ID, a.Duration)
	}
	d := a.Duration
	if d == 0 {
		d = p.config.Duration
	}
	var prefixes []netip.Prefix
	for _, pfx := range a.Prefixes {
		if err := p.checkPrefix(pfx); err != nil {
			return nil, fmt.Errorf("case step %s: %w", a.ID, err)
		}
		pfx = pfx.Masked()
		if identity.IsKey(pfx.Addr()) {
			return nil, fmt.Errorf("%w: case step %s: %s is a customer key, not an address", ErrBadInput, a.ID, pfx)
		}
		if p.allow.Overlaps(pfx) {
			return nil, fmt.Errorf("case step %s: %s: %w (containment.allow_list or detector.allow_list holds addresses in it)", a.ID, pfx, ErrAllowed)
		}
		if !slices.Contains(prefixes, pfx) {
			prefixes = append(prefixes, pfx)
		}
	}
	slices.SortFunc(prefixes, comparePrefix)
	out := p.Advance(t)
	added := 0
	for _, pfx := range prefixes {
		if e := p.entries[pfx]; e == nil || e.State != StateActive {
			added++
		}
	}
	if added > 0 && p.countActive()+added > p.config.MaxEntries {
		return out, fmt.Errorf("case step %s: %d new entries: %w", a.ID, added, ErrFull)
	}
	for _, pfx := range prefixes {
		e := p.entries[pfx]
		parked := false
		if e != nil && e.State != StateReleased && p.holdings != nil && e.Customer != "" && a.Customer != "" && e.Customer != a.Customer {
			// Another customer's block still here (its follow has not
			// come yet): it waits for that customer's next address, as
			// place does.
			out = append(out, p.park(*e)...)
			parked = true
		}
		if e == nil || e.State == StateReleased || parked {
			if e == nil {
				e = &Entry{Prefix: pfx}
				p.entries[pfx] = e
			}
			*e = Entry{Prefix: pfx, State: StateActive, Action: a.Action, SubscriberID: a.SubscriberID, Customer: a.Customer,
				IncidentID: a.ID, Kind: KindCase, Incidents: []string{a.ID}, ReleasedIncidents: e.ReleasedIncidents,
				Actor: a.Actor, Note: a.Note, Since: p.now, Expires: p.now.Add(d), Seq: e.Seq}
			out = append(out, p.change(e, ChangeAdd, a.Actor, a.Note))
			continue
		}
		out = append(out, p.containEntry(e, a, d)...)
	}
	return out, nil
}

// containEntry applies case step a to e, an entry not released.
func (p *Policy) containEntry(e *Entry, a CaseAction, d time.Duration) []Change {
	if e.Kind == "manual" && !stronger(a.Action, e.Action) {
		return nil
	}
	joined := e.join(a.ID)
	upgraded := stronger(a.Action, e.Action)
	reason := false
	if !stronger(e.Action, a.Action) {
		reason = e.IncidentID != a.ID
		e.Action, e.IncidentID, e.Kind, e.Actor, e.Note = a.Action, a.ID, KindCase, a.Actor, a.Note
	}
	if a.Customer != "" {
		e.Customer = a.Customer
	}
	if a.SubscriberID != "" {
		e.SubscriberID = a.SubscriberID
	}
	activated := e.State != StateActive
	if activated {
		e.State, e.Since, e.BlockAt, e.HeldUntil = StateActive, p.now, time.Time{}, time.Time{}
	}
	exp := p.now.Add(d)
	extended := exp.After(e.Expires)
	e.Expires = laterOf(e.Expires, exp)
	switch {
	case activated || upgraded:
		return []Change{p.change(e, ChangeAdd, a.Actor, a.Note)}
	case extended:
		return []Change{p.change(e, ChangeExtend, a.Actor, a.Note)}
	case joined || reason:
		return []Change{p.change(e, ChangeIncident, a.Actor, "case step "+a.ID+" joined: "+a.Note)}
	}
	return nil
}

// ReleaseIncidents releases at t every entry not yet released that
// carries any of ids (a case's steps), in prefix order. It is final, as
// Release: no incident those entries carried puts them back. Without an
// entry to release it is ErrNotFound, or ErrNotBlocked when those that
// carry ids are released already. The timers' changes up to t come
// first, error or not.
func (p *Policy) ReleaseIncidents(ids []string, actor, note string, t time.Time) ([]Change, error) {
	if len(ids) == 0 || slices.Contains(ids, "") || actor == "" {
		return nil, fmt.Errorf("%w: incident ids and by must be given", ErrBadInput)
	}
	out := p.Advance(t)
	var release []*Entry
	found := false
	for _, e := range p.entries {
		if !slices.ContainsFunc(ids, e.carries) {
			continue
		}
		found = true
		if e.State != StateReleased {
			release = append(release, e)
		}
	}
	switch {
	case len(release) == 0 && found:
		return out, fmt.Errorf("incidents %v: %w", ids, ErrNotBlocked)
	case len(release) == 0:
		return out, fmt.Errorf("incidents %v: %w", ids, ErrNotFound)
	}
	slices.SortFunc(release, func(a, b *Entry) int { return comparePrefix(a.Prefix, b.Prefix) })
	for _, e := range release {
		p.release(e, p.now, true)
		out = append(out, p.change(e, ChangeRelease, actor, note))
	}
	return out, nil
}

// Release takes prefix off the list by hand at t. A pending or held entry
// is released too. It is final: no incident the entry carried puts it
// back (Entry.ReleasedIncidents).
func (p *Policy) Release(pfx netip.Prefix, actor, note string, t time.Time) (Change, error) {
	if !pfx.IsValid() {
		return Change{}, fmt.Errorf("%w: not an address or prefix", ErrBadInput)
	}
	if actor == "" {
		return Change{}, fmt.Errorf("%w: by: who releases must be given", ErrBadInput)
	}
	p.deferred = append(p.deferred, p.Advance(t)...)
	e := p.entries[pfx.Masked()]
	if e == nil || e.State == StateReleased {
		return Change{}, fmt.Errorf("%s: %w", pfx, ErrNotBlocked)
	}
	p.release(e, p.now, true)
	return p.change(e, ChangeRelease, actor, note), nil
}

// Hold keeps the subscriber of incident off the list until t plus the
// configured hold: a pending block waits, an active one is lifted. When the
// hold ends and an incident of the entry is still open, the block comes
// (back); when all have resolved, the entry is released.
func (p *Policy) Hold(incidentID, actor, note string, t time.Time) (Change, error) {
	_, changes, err := p.hold(incidentID, actor, note, t)
	if err != nil {
		return Change{}, err
	}
	return changes[0], nil
}

// hold holds every entry not released that carries the incident (a
// customer's IPv4 address and IPv6 prefix are an entry each), in prefix
// order; it also returns the entries as they were before, for Unhold.
func (p *Policy) hold(incidentID, actor, note string, t time.Time) ([]Entry, []Change, error) {
	if incidentID == "" || actor == "" {
		return nil, nil, fmt.Errorf("%w: incident id and by must be given", ErrBadInput)
	}
	p.deferred = append(p.deferred, p.Advance(t)...)
	var held []*Entry
	found := false
	for _, x := range p.entries {
		if !x.carries(incidentID) {
			continue
		}
		found = true
		if x.State != StateReleased {
			held = append(held, x)
		}
	}
	switch {
	case len(held) == 0 && found:
		return nil, nil, fmt.Errorf("incident %s: %w", incidentID, ErrNotBlocked)
	case len(held) == 0:
		return nil, nil, fmt.Errorf("incident %s: %w", incidentID, ErrNotFound)
	}
	slices.SortFunc(held, func(a, b *Entry) int { return comparePrefix(a.Prefix, b.Prefix) })
	befores := make([]Entry, 0, len(held))
	changes := make([]Change, 0, len(held))
	for _, e := range held {
		befores = append(befores, *e)
		e.State, e.HeldUntil, e.BlockAt = StateHeld, p.now.Add(p.config.Hold), time.Time{}
		changes = append(changes, p.change(e, ChangeHold, actor, note))
	}
	return befores, changes, nil
}

// Unhold takes back the hold that made change held, when the entry is
// still under that hold: it gets its state, grace and hold end back from
// before (the entry as it was before the hold), recorded as an add (an
// active entry) or a schedule, then the timers run up to t.
func (p *Policy) Unhold(before Entry, held Change, actor, note string, t time.Time) ([]Change, error) {
	e := p.entries[held.Entry.Prefix]
	if e == nil || e.State != StateHeld || !e.HeldUntil.Equal(held.Entry.HeldUntil) {
		return nil, fmt.Errorf("%s: the hold is over or changed: cannot undo it", held.Entry.Prefix)
	}
	e.State, e.BlockAt, e.HeldUntil = before.State, before.BlockAt, before.HeldUntil
	typ := ChangeSchedule
	switch e.State {
	case StateActive:
		typ = ChangeAdd
	case StateHeld:
		typ = ChangeHold
	}
	out := []Change{p.change(e, typ, actor, note)}
	return append(out, p.Advance(t)...), nil
}

// Restore takes a recorded change (from the topic or the state file) into
// the list. In log order (the topic, read in order) the last record of a
// prefix wins, whatever its Seq, so every reader of the log ends with the
// same list; otherwise the record with the highest Seq wins, so reading
// the same records again, or a duplicate, changes nothing.
func (p *Policy) Restore(c Change, logOrder bool) bool {
	e := p.entries[c.Entry.Prefix]
	if !logOrder && e != nil && e.Seq >= c.Entry.Seq {
		return false
	}
	entry := c.Entry
	p.entries[entry.Prefix] = &entry
	p.advanceTo(c.At)
	return true
}

// Entries returns every entry not released, sorted by prefix.
func (p *Policy) Entries() []Entry {
	out := make([]Entry, 0, len(p.entries))
	for _, e := range p.entries {
		if e.State != StateReleased {
			out = append(out, *e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

// Released returns the released entries not yet removed, the latest
// released first.
func (p *Policy) Released() []Entry {
	var out []Entry
	for _, e := range p.entries {
		if e.State == StateReleased {
			out = append(out, *e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if c := b.ReleasedAt.Compare(a.ReleasedAt); c != 0 {
			return c
		}
		return comparePrefix(a.Prefix, b.Prefix)
	})
	return out
}

// Records returns every entry including released ones, for the state file.
func (p *Policy) Records() []Entry {
	out := make([]Entry, 0, len(p.entries))
	for _, e := range p.entries {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
