package detector

import (
	"net/netip"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// rule is one detection rule. Each lives in its own file (rule_*.go) and
// is listed once in ruleTable; Engine.ProcessFrom dispatches every flow to
// the rules that want it, and the engine keeps the incidents, their
// lifecycle and the timers. A sixth rule is a new file, a configuration
// field and a line in ruleTable.
//
// A rule's per-subscriber state hangs off subscriber.more.state[kind],
// allocated by the rule the first time it keeps something for that
// subscriber: a rule that is switched off, or has nothing to say about a
// subscriber, costs that subscriber nothing.
type rule interface {
	// name is the alert kind.
	name() string
	// enabled tells whether the rule runs for the group.
	enabled(r *ruleSet) bool
	// wants tells, without touching state, whether the rule accounts f;
	// attempt is network.Attempt's verdict on it. Rules count attempts
	// only: an answer is whatever anyone made the subscriber send.
	wants(r *ruleSet, f *flow.Flow, attempt bool) bool
	// process accounts f in the subscriber's state for the rule, on the
	// flow's own event time, and evaluates it: it opens or updates the
	// incident through Engine.incident and Engine.emit and returns what
	// is to be published, nil when nothing is. (A pointer, not an
	// alert.Alert and a bool: most calls publish nothing, and returning
	// the 392-byte struct zeroed and copied on each was a sixth of the
	// engine's time in pprof.)
	process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert
	// cooldown is how long an incident stays quiet before it resolves.
	cooldown(r *ruleSet) time.Duration
	// keep is how long the rule's state matters after a subscriber's last
	// flow: the subscriber is evicted after the longest keep of its rules.
	keep(r *ruleSet) time.Duration
	// resolved is called when the rule's incident for s resolves.
	resolved(s *subscriber)
}

// Kinds, in the order the rules see a flow (dst_entropy first, as the
// alerts of one flow have always come out).
const (
	kindEntropy = iota
	kindSMTP
	kindDarknet
	kindRelay
	kindFlood
	kinds
)

// ruleTable holds the rules by kind.
var ruleTable = [kinds]rule{
	kindEntropy: entropyRule{},
	kindSMTP:    smtpRule{},
	kindDarknet: darknetRule{},
	kindRelay:   relayRule{},
	kindFlood:   floodRule{},
}

var kindNames = func() (n [kinds]string) {
	for k, r := range ruleTable {
		n[k] = r.name()
	}
	return n
}()

// kindOf returns the kind index of an alert kind, or -1.
func kindOf(name string) int {
	for k, n := range kindNames {
		if n == name {
			return k
		}
	}
	return -1
}

// ruleStates holds what the rules keep of one subscriber beyond the
// inline dst_entropy records: each rule's own state and the open
// incidents. It is allocated only for a subscriber some rule has state
// for or an incident of.
type ruleStates struct {
	state     [kinds]any
	incidents [kinds]*incident
}

// ruleCtx is the subscriber a rule works on.
type ruleCtx struct {
	addr netip.Addr
	s    *subscriber
	r    *ruleSet
	kind int
}

// some is the evaluation's alert for process to return: nil unless ok.
func some(a alert.Alert, ok bool) *alert.Alert {
	if !ok {
		return nil
	}
	p := new(alert.Alert)
	*p = a
	return p
}

// state returns the rule's state for the subscriber, nil when it has none.
func (c *ruleCtx) state() any {
	if c.s.more == nil {
		return nil
	}
	return c.s.more.state[c.kind]
}

// setState stores the rule's state for the subscriber.
func (c *ruleCtx) setState(v any) {
	if c.s.more == nil {
		c.s.more = &ruleStates{}
	}
	c.s.more.state[c.kind] = v
}

// incidentOf returns the subscriber's open incident of kind k.
func (s *subscriber) incidentOf(k int) *incident {
	if s.more == nil {
		return nil
	}
	return s.more.incidents[k]
}

// hasIncident reports whether the subscriber has any open incident.
func (s *subscriber) hasIncident() bool {
	if s.more == nil {
		return false
	}
	return s.more.incidents != [kinds]*incident{}
}
