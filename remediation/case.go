package remediation

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// States of a case.
const (
	StateOpen          = "open"
	StateNotified      = "notified"
	StateWalled        = "walled"
	StateBlocked       = "blocked"
	StateReleased      = "released"
	StateClosed        = "closed"
	StateFalsePositive = "false_positive"
)

// Event types of a case's history.
const (
	EventOpen          = "open"
	EventJoin          = "join"          // another incident joined the case
	EventNotify        = "notify"        // a notice was sent
	EventNotifyFailed  = "notify_failed" // a notice could not be sent
	EventWalled        = "walled"
	EventBlocked       = "blocked"
	EventReleased      = "released"
	EventSelfRelease   = "self_release"
	EventReleaseDenied = "release_denied" // a self-release past the limit
	EventReopen        = "reopen"
	EventClosed        = "closed"
	EventFalsePositive = "false_positive"
	EventHold          = "hold"
	EventSkip          = "skip"
	EventContainFailed = "contain_failed" // the block list refused a step
)

// Actors other than a person's name.
const (
	ActorPolicy   = "policy"
	ActorCustomer = "customer"
)

// maxIDs bounds a case's lists of incidents and containment ids;
// maxEvents the history kept with it in memory.
const (
	maxIDs    = 64
	maxEvents = 200
)

// Case groups one customer's incidents of every kind, from the first
// alert to its close.
type Case struct {
	ID string `json:"id"`
	// Customer is identity's customer, or the subscriber id when identity
	// knew none.
	Customer     string   `json:"customer"`
	SubscriberID string   `json:"subscriber_id"`
	SubscriberIP string   `json:"subscriber_ip"`
	Group        string   `json:"group,omitempty"`
	State        string   `json:"state"`
	Kinds        []string `json:"kinds"`
	// Incidents are every incident of the case, oldest first; Active
	// those not resolved yet.
	Incidents []string `json:"incidents"`
	Active    []string `json:"active"`
	// Alert is the latest alert of the case: the evidence notices and the
	// notice page show.
	Alert alert.Alert `json:"alert"`
	// Opened is when the case opened; LadderFrom when its ladder last
	// (re)started: at the open, at a reopen.
	Opened     time.Time `json:"opened"`
	LadderFrom time.Time `json:"ladder_from"`
	// Step is the number of ladder steps taken (or skipped) since
	// LadderFrom; Level the strongest containment reached (0 none,
	// 1 walled, 2 blocked).
	Step  int `json:"step"`
	Level int `json:"level"`
	// HeldUntil: an operator holds the ladder until then.
	HeldUntil    time.Time   `json:"held_until,omitzero"`
	LastActivity time.Time   `json:"last_activity"`
	NotifiedAt   time.Time   `json:"notified_at,omitzero"`
	Notices      int         `json:"notices"`
	WalledAt     time.Time   `json:"walled_at,omitzero"`
	BlockedAt    time.Time   `json:"blocked_at,omitzero"`
	ReleasedAt   time.Time   `json:"released_at,omitzero"`
	ReleasedBy   string      `json:"released_by,omitempty"`
	ClosedAt     time.Time   `json:"closed_at,omitzero"`
	SelfReleases []time.Time `json:"self_releases,omitempty"`
	Reopens      int         `json:"reopens"`
	// Contained are the ids this case's steps put on the block list
	// (containment's incident ids), so that a release lifts them.
	Contained []string  `json:"contained,omitempty"`
	Updated   time.Time `json:"updated"`
	// Version counts the case's changes: of two records the higher wins.
	Version uint64 `json:"version"`
}

// Event is one change of a case: what happened, by whom, and why.
type Event struct {
	ID       string    `json:"id"`
	CaseID   string    `json:"case_id"`
	Customer string    `json:"customer"`
	At       time.Time `json:"at"`
	Type     string    `json:"type"`
	Actor    string    `json:"actor"`
	Note     string    `json:"note,omitempty"`
	// Seq is the case's version after the event: the history's order.
	Seq uint64 `json:"seq"`
	// State is the case's state after the event.
	State string `json:"state"`
}

// Effect is what a decision asks of the world: send a notice, put the
// customer on the block list, or lift it.
type Effect struct {
	Type string // notify, contain, release
	Case Case
	// Action (contain): walled or block; ID the containment id.
	Action string
	ID     string
	// IDs (release): what to lift.
	IDs   []string
	Actor string
	Note  string
}

// Effect types.
const (
	EffectNotify  = "notify"
	EffectContain = "contain"
	EffectRelease = "release"
)

// Errors of the operator and self-release actions.
var (
	ErrNotFound          = errors.New("no such case")
	ErrState             = errors.New("not possible in the case's state")
	ErrSelfReleaseLimit  = errors.New("self-release limit reached")
	ErrCasebookFull      = errors.New("remediation.max_cases reached")
	errSelfReleaseWalled = fmt.Errorf("%w: only a walled customer releases itself", ErrState)
)

// Result is what a call to the casebook decided.
type Result struct {
	Events  []Event
	Effects []Effect
}

func (r *Result) add(o Result) {
	r.Events = append(r.Events, o.Events...)
	r.Effects = append(r.Effects, o.Effects...)
}

// Casebook holds the cases and decides on them. It is pure: time comes
// with each call (event time for alerts, the wall clock for people), so
// the same alerts in the same order make the same cases.
type Casebook struct {
	config     Configuration
	cases      map[string]*Case
	byCustomer map[string]string // customer -> its latest case
	// bySubscriber: subscriber label -> the latest case with it, for the
	// notice page, which must not scan every case per request.
	bySubscriber map[string]string
	events       map[string][]Event
	now          time.Time
	// groupOf names a subscriber's detector group (for ladders); may be nil.
	groupOf func(a alert.Alert) string
}

// NewCasebook makes an empty casebook.
func NewCasebook(config Configuration) *Casebook {
	return &Casebook{config: config, cases: map[string]*Case{}, byCustomer: map[string]string{}, bySubscriber: map[string]string{},
		events: map[string][]Event{}}
}

// Now is the casebook's clock.
func (b *Casebook) Now() time.Time { return b.now }

func (b *Casebook) advanceTo(t time.Time) {
	if t.After(b.now) {
		b.now = t
	}
}

// customerOf is whom an alert's case belongs to.
func customerOf(a alert.Alert) string {
	if a.Evidence.Identity != nil && a.Evidence.Identity.Customer != "" {
		return a.Evidence.Identity.Customer
	}
	if a.SubscriberID != "" {
		return a.SubscriberID
	}
	return a.SubscriberIP
}

func caseID(customer string, opened time.Time) string {
	h := sha256.Sum256([]byte(customer + "|" + strconv.FormatInt(opened.UnixMilli(), 10)))
	return "case-" + hex.EncodeToString(h[:8])
}

func (b *Casebook) event(c *Case, typ, actor, note string) Event {
	c.Version++
	c.Updated = b.now
	h := sha256.Sum256([]byte(c.ID + "|" + strconv.FormatUint(c.Version, 10) + "|" + typ))
	ev := Event{ID: hex.EncodeToString(h[:12]), CaseID: c.ID, Customer: c.Customer, At: b.now, Type: typ, Actor: actor, Note: note, Seq: c.Version, State: c.State}
	evs := append(b.events[c.ID], ev)
	if len(evs) > maxEvents {
		evs = evs[len(evs)-maxEvents:]
	}
	b.events[c.ID] = evs
	return ev
}

func appendBounded(list []string, id string) []string {
	if slices.Contains(list, id) {
		return list
	}
	list = append(list, id)
	if len(list) > maxIDs {
		list = list[len(list)-maxIDs:]
	}
	return list
}

func eventTime(a alert.Alert) time.Time {
	if !a.LastSeen.IsZero() {
		return a.LastSeen
	}
	return a.WindowEnd
}

// contained tells whether the case holds the customer on the list.
func (c *Case) contained() bool { return c.State == StateWalled || c.State == StateBlocked }

// ended tells whether the case is over (it may still reopen).
func (c *Case) ended() bool {
	return c.State == StateReleased || c.State == StateClosed || c.State == StateFalsePositive
}

// Apply takes an alert: it opens, joins, reopens or updates the
// customer's case, then the ladder moves to the alert's time.
func (b *Casebook) Apply(a alert.Alert) (Result, error) {
	t := eventTime(a)
	b.advanceTo(t)
	var res Result
	customer := customerOf(a)
	if customer == "" {
		return res, nil
	}
	c := b.cases[b.byCustomer[customer]]
	if c != nil && c.ended() && !b.mayReopen(c) {
		c = nil // a false positive, or too long ago: a case of its own
	}
	switch {
	case c == nil && a.State == alert.StateResolved:
		return res, nil // nothing to resolve
	case c == nil:
		if len(b.cases) >= b.config.MaxCases && !b.evict() {
			return res, ErrCasebookFull
		}
		c = &Case{ID: caseID(customer, t), Customer: customer, State: StateOpen, Opened: t, LadderFrom: t}
		if b.groupOf != nil {
			c.Group = b.groupOf(a)
		}
		b.cases[c.ID], b.byCustomer[customer] = c, c.ID
		b.update(c, a, t)
		res.Events = append(res.Events, b.event(c, EventOpen, ActorPolicy, describe(a)))
	case c.ended():
		if !b.relapse(c, a, t) {
			b.update(c, a, t)
			return res, nil
		}
		wasSelf := c.State == StateReleased && c.ReleasedBy == ActorCustomer
		c.State, c.LadderFrom, c.Step, c.HeldUntil, c.ClosedAt = StateOpen, t, 0, time.Time{}, time.Time{}
		c.Reopens++
		b.update(c, a, t)
		note := "new activity after the release: " + describe(a)
		res.Events = append(res.Events, b.event(c, EventReopen, ActorPolicy, note))
		if wasSelf {
			// Straight back, one step higher than before.
			res.add(b.escalate(c, c.Level+1, "relapse after a self-release"))
		}
	default:
		if a.State != alert.StateResolved && !slices.Contains(c.Incidents, a.ID) {
			b.update(c, a, t)
			res.Events = append(res.Events, b.event(c, EventJoin, ActorPolicy, describe(a)))
		} else {
			b.update(c, a, t)
		}
	}
	res.add(b.Advance(t))
	return res, nil
}

// mayReopen tells whether an ended case reopens on new activity.
func (b *Casebook) mayReopen(c *Case) bool {
	if c.State == StateFalsePositive {
		return false
	}
	end := c.ReleasedAt
	if c.State == StateClosed {
		end = c.ClosedAt
	}
	return !b.now.After(end.Add(b.config.ReopenWithin))
}

// relapse tells whether alert a of an ended case is new activity: an
// incident the case did not know, or one it knew active past the grace.
func (b *Casebook) relapse(c *Case, a alert.Alert, t time.Time) bool {
	if a.State == alert.StateResolved {
		return false
	}
	end := c.ReleasedAt
	if c.State == StateClosed {
		end = c.ClosedAt
	}
	if !slices.Contains(c.Incidents, a.ID) {
		return true
	}
	return t.After(end.Add(b.config.RelapseGrace))
}

// update takes alert a into the case's incidents and evidence.
func (b *Casebook) update(c *Case, a alert.Alert, t time.Time) {
	if a.State == alert.StateResolved {
		c.Active = slices.DeleteFunc(slices.Clone(c.Active), func(id string) bool { return id == a.ID })
		return
	}
	c.Incidents = appendBounded(c.Incidents, a.ID)
	c.Active = appendBounded(c.Active, a.ID)
	if !slices.Contains(c.Kinds, a.Kind) {
		c.Kinds = append(slices.Clone(c.Kinds), a.Kind)
		sort.Strings(c.Kinds)
	}
	c.Alert = a
	c.SubscriberID, c.SubscriberIP = a.SubscriberID, a.SubscriberIP
	b.bySubscriber[c.SubscriberIP] = c.ID
	if t.After(c.LastActivity) {
		c.LastActivity = t
	}
}

// ladder is the case's escalation.
func (b *Casebook) ladder(c *Case) []Step {
	return b.config.ladderFor(c.Alert.Kind, c.Group)
}

// Advance moves the clock to t and takes every ladder step that is due:
// its time since the ladder started has come, the case still has an
// active incident (a step at 0 needs only the open), and no hold waits.
// Quiet cases without containment close after close_after.
func (b *Casebook) Advance(t time.Time) Result {
	b.advanceTo(t)
	var res Result
	for _, id := range b.liveIDs() {
		c := b.cases[id]
		for !b.now.Before(c.HeldUntil) {
			steps := b.ladder(c)
			if c.Step >= len(steps) {
				break
			}
			s := steps[c.Step]
			if b.now.Before(c.LadderFrom.Add(s.After)) || (s.After > 0 && len(c.Active) == 0) {
				break
			}
			c.Step++
			if s.Do == StepNotify {
				res.Effects = append(res.Effects, Effect{Type: EffectNotify, Case: *c, Actor: ActorPolicy})
				continue
			}
			if s.level() <= c.Level && c.contained() {
				continue // a relapse already took it
			}
			res.add(b.contain(c, s, "ladder step "+s.Do+" after "+s.After.String()))
		}
		if !c.contained() && len(c.Active) == 0 && !b.now.Before(c.LastActivity.Add(b.config.CloseAfter)) {
			c.State, c.ClosedAt = StateClosed, b.now
			res.Events = append(res.Events, b.event(c, EventClosed, ActorPolicy, "no activity for "+b.config.CloseAfter.String()))
		}
	}
	return res
}

// escalate takes, at once, the first step of the ladder whose level is at
// least level (the strongest one when none is) and moves the ladder past it.
func (b *Casebook) escalate(c *Case, level int, why string) Result {
	steps := b.ladder(c)
	for i, s := range steps {
		if s.level() >= level {
			c.Step = i + 1
			return b.contain(c, s, why)
		}
	}
	c.Step = len(steps)
	return b.contain(c, Step{Do: StepBlock}, why)
}

// contain puts the case's customer on the list with step s.
func (b *Casebook) contain(c *Case, s Step, why string) Result {
	c.Level = max(c.Level, s.level())
	id := c.ID + ":" + s.Do + ":" + strconv.FormatUint(c.Version+1, 10)
	c.Contained = appendBounded(c.Contained, id)
	typ := EventWalled
	if s.Do == StepWalled {
		c.State, c.WalledAt = StateWalled, b.now
	} else {
		c.State, c.BlockedAt, typ = StateBlocked, b.now, EventBlocked
	}
	ev := b.event(c, typ, ActorPolicy, why)
	return Result{Events: []Event{ev}, Effects: []Effect{{Type: EffectContain, Case: *c, Action: s.Do, ID: id, Actor: ActorPolicy, Note: why}}}
}

// Notified records the outcome of a notice: sent, or given up with why.
func (b *Casebook) Notified(id string, sent bool, detail string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if !sent {
		return Result{Events: []Event{b.event(c, EventNotifyFailed, ActorPolicy, detail)}}, nil
	}
	c.Notices++
	if c.NotifiedAt.IsZero() {
		c.NotifiedAt = b.now
	}
	if c.State == StateOpen {
		c.State = StateNotified
	}
	return Result{Events: []Event{b.event(c, EventNotify, ActorPolicy, detail)}}, nil
}

// ContainFailed records that the block list refused a step.
func (b *Casebook) ContainFailed(id, detail string, t time.Time) Result {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}
	}
	return Result{Events: []Event{b.event(c, EventContainFailed, ActorPolicy, detail)}}
}

// SelfReleasesLeft is how many self-releases the case's customer has left
// in the window.
func (b *Casebook) SelfReleasesLeft(c *Case) int {
	n := 0
	for _, at := range c.SelfReleases {
		if b.now.Sub(at) < b.config.SelfReleaseWindow {
			n++
		}
	}
	return max(b.config.SelfReleaseMax-n, 0)
}

// SelfRelease is the customer's "I have cleaned my computer": a walled
// customer with self-releases left is released.
func (b *Casebook) SelfRelease(id string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if c.State != StateWalled {
		return Result{}, errSelfReleaseWalled
	}
	if b.SelfReleasesLeft(c) == 0 {
		ev := b.event(c, EventReleaseDenied, ActorCustomer,
			fmt.Sprintf("%d self-releases in %s already: only the abuse desk releases now", b.config.SelfReleaseMax, b.config.SelfReleaseWindow))
		return Result{Events: []Event{ev}}, ErrSelfReleaseLimit
	}
	c.SelfReleases = append(slices.DeleteFunc(slices.Clone(c.SelfReleases), func(at time.Time) bool {
		return b.now.Sub(at) >= b.config.SelfReleaseWindow
	}), b.now)
	return b.release(c, StateReleased, EventSelfRelease, ActorCustomer, "the customer says the computer is clean"), nil
}

// release ends the case's containment with state and records it.
func (b *Casebook) release(c *Case, state, typ, actor, note string) Result {
	var res Result
	if ids := slices.Concat(c.Contained, c.Incidents); len(ids) > 0 && (c.contained() || state == StateFalsePositive) {
		res.Effects = append(res.Effects, Effect{Type: EffectRelease, Case: *c, IDs: ids, Actor: actor, Note: note})
	}
	c.State, c.ReleasedAt, c.ReleasedBy, c.HeldUntil = state, b.now, actor, time.Time{}
	if state != StateReleased {
		c.ClosedAt = b.now
	}
	c.Active = nil
	res.Events = append(res.Events, b.event(c, typ, actor, note))
	return res
}

// Operator actions, by a person's name, at the wall clock's t.

// Hold keeps the ladder from taking a step until t+d.
func (b *Casebook) Hold(id string, d time.Duration, actor, note string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if c.ended() || d <= 0 {
		return Result{}, fmt.Errorf("%w: hold a case that is not over, for a duration > 0", ErrState)
	}
	c.HeldUntil = b.now.Add(d)
	return Result{Events: []Event{b.event(c, EventHold, actor, fmt.Sprintf("ladder held for %s: %s", d, note))}}, nil
}

// Skip passes over the ladder's next step without taking it.
func (b *Casebook) Skip(id, actor, note string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	steps := b.ladder(c)
	if c.ended() || c.Step >= len(steps) {
		return Result{}, fmt.Errorf("%w: no step left to skip", ErrState)
	}
	s := steps[c.Step]
	c.Step++
	return Result{Events: []Event{b.event(c, EventSkip, actor, "skipped "+s.Do+": "+note)}}, nil
}

// Release lifts the case's containment by hand; the case stays and
// reopens on new activity.
func (b *Casebook) Release(id, actor, note string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if c.ended() {
		return Result{}, fmt.Errorf("%w: the case is %s", ErrState, c.State)
	}
	return b.release(c, StateReleased, EventReleased, actor, note), nil
}

// Close ends a case by hand (lifting its containment).
func (b *Casebook) Close(id, actor, note string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if c.State == StateClosed || c.State == StateFalsePositive {
		return Result{}, fmt.Errorf("%w: the case is %s", ErrState, c.State)
	}
	return b.release(c, StateClosed, EventClosed, actor, note), nil
}

// FalsePositive marks the case a mistake of its rules: everything is
// released, the case closes and counts against the rules' precision, and
// the customer's next incident opens a new case.
func (b *Casebook) FalsePositive(id, actor, note string, t time.Time) (Result, error) {
	b.advanceTo(t)
	c := b.cases[id]
	if c == nil {
		return Result{}, ErrNotFound
	}
	if c.State == StateFalsePositive {
		return Result{}, fmt.Errorf("%w: the case is %s", ErrState, c.State)
	}
	return b.release(c, StateFalsePositive, EventFalsePositive, actor, note), nil
}

// peek returns a copy of a case without its history.
func (b *Casebook) peek(id string) (Case, bool) {
	c := b.cases[id]
	if c == nil {
		return Case{}, false
	}
	return *c, true
}

// Get returns a copy of a case and its history.
func (b *Casebook) Get(id string) (Case, []Event, bool) {
	c := b.cases[id]
	if c == nil {
		return Case{}, nil, false
	}
	return *c, slices.Clone(b.events[id]), true
}

// OfCustomer returns the customer's latest case.
func (b *Casebook) OfCustomer(customer string) (Case, bool) {
	c := b.cases[b.byCustomer[customer]]
	if c == nil {
		return Case{}, false
	}
	return *c, true
}

// OfSubscriber returns the latest case whose subscriber (the alert's
// subscriber_ip label) is sub: the notice page's lookup without identity.
func (b *Casebook) OfSubscriber(sub string) (Case, bool) {
	c := b.cases[b.bySubscriber[sub]]
	if c == nil {
		return Case{}, false
	}
	return *c, true
}

// Cases returns every case, newest update first.
func (b *Casebook) Cases() []Case {
	out := make([]Case, 0, len(b.cases))
	for _, c := range b.cases {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Updated.Equal(out[j].Updated) {
			return out[i].Updated.After(out[j].Updated)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Restore takes a recorded case (from ClickHouse at start) and its
// history; the higher version wins.
func (b *Casebook) Restore(c Case, events []Event) {
	if old := b.cases[c.ID]; old != nil && old.Version >= c.Version {
		return
	}
	b.cases[c.ID] = &c
	if cur := b.cases[b.byCustomer[c.Customer]]; cur == nil || !cur.Opened.After(c.Opened) {
		b.byCustomer[c.Customer] = c.ID
	}
	b.events[c.ID] = events
	if cur := b.cases[b.bySubscriber[c.SubscriberIP]]; cur == nil || !cur.Opened.After(c.Opened) {
		b.bySubscriber[c.SubscriberIP] = c.ID
	}
	b.advanceTo(c.Updated)
}

// liveIDs are the cases not over, in id order: the order the ladder
// takes their steps in, the same on every run.
func (b *Casebook) liveIDs() []string {
	var ids []string
	for id, c := range b.cases {
		if !c.ended() {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// evict drops the case closed longest ago to make room; it never drops one
// that is not over, nor a released one that may still reopen.
func (b *Casebook) evict() bool {
	var victim *Case
	for _, c := range b.cases {
		if c.State != StateClosed && c.State != StateFalsePositive {
			continue
		}
		if victim == nil || c.ClosedAt.Before(victim.ClosedAt) {
			victim = c
		}
	}
	if victim == nil {
		return false
	}
	delete(b.cases, victim.ID)
	delete(b.events, victim.ID)
	if b.byCustomer[victim.Customer] == victim.ID {
		delete(b.byCustomer, victim.Customer)
	}
	if b.bySubscriber[victim.SubscriberIP] == victim.ID {
		delete(b.bySubscriber, victim.SubscriberIP)
	}
	return true
}
