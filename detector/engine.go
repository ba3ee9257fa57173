package detector

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
)

// Engine holds the per-subscriber windows and incidents of one detector
// (one per Kafka partition) and turns flows into alerts. It does no I/O and
// reads no clock: time is the flows' event time only, so a replay yields
// the alerts of the live run.
type Engine struct {
	config       Configuration
	rules        []ruleSet // [0] is the global one, then the groups
	groups       *network.Table[int]
	allow        *network.Set
	subscriberID func(netip.Addr) string
	identityOf   func(netip.Addr, int64) (identity.Binding, bool)
	// subs turns an address into its subscriber (an IPv6 one is a
	// prefix) and names it in alerts.
	subs network.Subscribers
	// received holds the flows subscribers were sent, to tell answers
	// (received.go); allocated with the first one.
	received *received
	// ruleCtx is what each rule is handed for the flow in hand: one per
	// engine, since a ruleCtx passed through the rule interface would
	// otherwise be a heap allocation per rule per flow.
	ruleCtx ruleCtx
	budget  *SubscriberBudget
	table   *subscriberTable
	// active holds the subscribers with an open incident, which the
	// minute sweep resolves after the cool-down.
	active      map[netip.Addr]*subscriber
	exporters   []netip.Addr
	exporterIdx map[netip.Addr]uint16
	// lastExporter is the index of the exporter of the last flow: the
	// flows of a record mostly share theirs, so the map is skipped.
	lastExporter uint16
	keepMs       int64 // idle time after which a subscriber without incidents is evicted
	// watermark is event time: the slowest active source's newest flow
	// end, Unix ms (watermark.go). Flows ending before it minus the
	// allowed lateness are late; timers (cool-downs, eviction) fire once
	// the watermark minus the allowed lateness passes them, when no flow
	// that could still arrive can change their outcome.
	watermark int64
	sources   map[sourceKey]*source
	slowest   *source
	// runnerUpMs is the least progress among the other sources that
	// counted at the last rescan (math.MaxInt64 if none): while the
	// slowest stays at or below it, it stays the slowest.
	runnerUpMs  int64
	wallMs      int64 // wall clock, for idle sources only (SetWallClock)
	scannedAtMs int64 // wallMs at the last rescan of the sources
	lastKey     sourceKey
	lastSource  *source // of lastKey
	lastSweep   int64   // minute of the last sweep
	// lateByExporter counts late flows per exporter, for the metric that
	// tells which exporter lags.
	lateByExporter map[netip.Addr]uint64
	scratch        scratch
	stats          EngineStats
	// inherited holds incidents a previous owner of the partition opened
	// and did not resolve, for subscribers not seen yet (Inherit).
	inherited map[inheritKey]alert.Alert
}

type inheritKey struct {
	addr netip.Addr
	kind int
}

// EngineStats counts what the engine did, for metrics.
type EngineStats struct {
	Flows, LateFlows, InvalidFlows, AllowListed, Evicted uint64
	// KeyCollisions are flows of a customer whose key another customer's
	// state held; they were kept under their address.
	KeyCollisions uint64
	// Answers are outbound flows that were not the subscriber's own
	// attempts (network.Attempt); Received the inbound flows recorded
	// to tell them.
	Answers, Received uint64
	// Displaced subscribers made room for a new one at max_subscribers;
	// Refused ones found no room (every candidate had an open incident).
	Displaced, Refused uint64
	// FutureFlows ended after the collector received them (beyond the
	// allowed lateness): a wrong exporter clock the collector could not
	// correct. Their end time is taken as the receive time, so that one
	// such record cannot drag the watermark ahead and make every other
	// flow late.
	FutureFlows uint64
}

// shards of the subscriber table; each is visited every shards minutes.
const shards = 16

func shardOf(a netip.Addr) int { return int(hashAddr(a) % shards) }

// subscriber is what the engine keeps of one subscriber. A quiet one (a
// few flows, no incident) is this struct and its dst_entropy records; the
// other rules' state and the incidents are behind more, allocated only
// when needed.
type subscriber struct {
	lastMs   int64 // last flow of any kind
	ent      entropyState
	more     *ruleStates
	who      *customer // set when the subscriber is a customer (identity)
	gate     floodGate // outbound_flood's per-minute volume, before it keeps state
	sampling uint32    // sampling rate of the last flow
	exporter uint16    // index in Engine.exporters
	group    uint16    // index in Engine.rules
}

type incident struct {
	id               string
	firstSeenMs      int64
	lastSeenMs       int64
	lastAboveMs      int64
	lastEmitMs       int64
	lastEmitDistinct uint64
	last             alert.Alert
}

// mustRules merges a group's settings that Validate has accepted.
func mustRules(config Configuration, g GroupConfiguration) ruleSet {
	r, err := config.rules(g)
	if err != nil {
		panic(fmt.Sprintf("detector: configuration not validated: %v", err))
	}
	return r
}

// NewEngine returns an engine with no state. The configuration must be
// valid (Configuration.Validate).
func NewEngine(config Configuration) *Engine {
	e := &Engine{
		config:         config,
		rules:          []ruleSet{mustRules(config, GroupConfiguration{})},
		groups:         network.NewTable[int](),
		active:         map[netip.Addr]*subscriber{},
		exporterIdx:    map[netip.Addr]uint16{},
		sources:        map[sourceKey]*source{},
		lateByExporter: map[netip.Addr]uint64{},
		scratch:        scratch{dsts: map[uint32]uint64{}, ports: map[uint16]uint64{}},
		budget:         NewSubscriberBudget(config.MaxSubscribers),
		table:          newSubscriberTable(),
	}
	for _, g := range config.Groups {
		e.rules = append(e.rules, mustRules(config, g))
		for _, n := range g.Networks {
			e.groups.Insert(n.Prefix, len(e.rules)-1)
		}
	}
	e.allow = network.NewSet(config.AllowList...)
	longest := time.Duration(0)
	for _, r := range e.rules {
		for _, ru := range ruleTable {
			longest = max(longest, ru.keep(&r))
		}
	}
	e.keepMs = (longest + config.AllowedLateness).Milliseconds()
	return e
}

// SetSubscribers sets how an address becomes its subscriber (IPv6
// prefixes) and how alerts name it; the default is every source, IPv6 by
// network.DefaultPrefixV6.
func (e *Engine) SetSubscribers(s network.Subscribers) { e.subs = s }

// SetSubscriberBudget shares one max_subscribers among the engines of a
// detector instance (one per partition).
func (e *Engine) SetSubscriberBudget(b *SubscriberBudget) { e.budget = b }

// SetSubscriberIDs sets how alerts get their subscriber_id.
func (e *Engine) SetSubscriberIDs(lookup func(netip.Addr) string) { e.subscriberID = lookup }

// Stats returns the counters so far.
func (e *Engine) Stats() EngineStats { return e.stats }

// Watermark is the engine's event time, Unix ms.
func (e *Engine) Watermark() int64 { return e.watermark }

// Subscribers is the number of subscribers with state.
func (e *Engine) Subscribers() int { return e.table.len() }

func (e *Engine) lookup(a netip.Addr) *subscriber { return e.table.get(a) }

func (e *Engine) exporter(a netip.Addr) uint16 {
	if int(e.lastExporter) < len(e.exporters) && e.exporters[e.lastExporter] == a {
		return e.lastExporter
	}
	if i, ok := e.exporterIdx[a]; ok {
		e.lastExporter = i
		return i
	}
	if len(e.exporters) >= math.MaxUint16 {
		return 0 // absurd number of exporters: attribute to the first
	}
	e.exporters = append(e.exporters, a)
	e.lastExporter = uint16(len(e.exporters) - 1)
	e.exporterIdx[a] = e.lastExporter
	return e.lastExporter
}

const minuteMs = int64(Bucket / time.Millisecond)

// Receive records a flow the subscriber received (its destination is the
// subscriber): what tells its outbound answers from its attempts, and the
// answers outbound_flood weighs a target's traffic against. It never
// opens an incident and does not move event time.
func (e *Engine) Receive(f *flow.Flow) {
	if f.EndMs <= 0 || !f.SrcAddr.IsValid() || !f.DstAddr.IsValid() {
		return
	}
	e.stats.Received++
	if f.Proto != network.ProtoICMP && f.Proto != network.ProtoICMPv6 {
		e.exchanges().add(f)
	}
	if s := e.lookup(e.keyOf(f, f.DstAddr)); s != nil && s.more != nil {
		if st, _ := s.more.state[kindFlood].(*floodState); st != nil {
			st.answered(f)
		}
	}
}

// attempt is network.Attempt for an outbound flow, with its exchange when
// the verdict depends on it (a flow without flags, a completed handshake).
func (e *Engine) attempt(f *flow.Flow) bool {
	if !network.NeedsExchange(f) {
		return network.Attempt(f, network.Received{})
	}
	return network.Attempt(f, e.exchanges().exchange(f))
}

// exchanges returns the table of exchanges, allocated on first use.
func (e *Engine) exchanges() *received {
	if e.received == nil {
		e.received = newReceived(e.config.Exchanges)
	}
	return e.received
}

// Process is ProcessFrom for flows of a single origin (tests, tools).
func (e *Engine) Process(f *flow.Flow) []alert.Alert { return e.ProcessFrom(0, 0, f) }

// ProcessFrom accounts one flow whose source is a subscriber, written to
// the bus by origin (a collector publisher) in a message whose progress
// is lowMs (bus.Message.LowMs, 0 when unknown), and returns the alerts it
// causes, including those of incidents that event time resolves. It may
// correct f.EndMs (a flow ending after it was received).
//
// What it decides depends only on the subscriber's own flows, in their
// order, never on how the flows of different sources interleave: a timer
// the watermark has not fired yet fires here when this flow's time has
// passed it. So a replay gives the alerts of the live run, whatever the
// number of publishers and partitions.
func (e *Engine) ProcessFrom(origin uint64, lowMs int64, f *flow.Flow) []alert.Alert {
	e.stats.Flows++
	if f.EndMs <= 0 || !f.SrcAddr.IsValid() {
		e.stats.InvalidFlows++
		return nil
	}
	if f.TimeReceivedMs > 0 && f.EndMs > f.TimeReceivedMs+e.config.AllowedLateness.Milliseconds() {
		e.stats.FutureFlows++
		f.EndMs = f.TimeReceivedMs
	}
	// The source is recorded even when this flow is late: from now on it
	// holds the watermark back, so its next flows are not.
	if e.late(e.observeSource(origin, lowMs, f), f.EndMs) {
		e.stats.LateFlows++
		e.countLate(f.Exporter)
		return nil
	}
	out := e.sweepTo(e.watermark)
	// Behind a CGNAT the subscriber is the inside address; the allow
	// list and the groups name subscribers' own addresses.
	addr := f.SrcAddr.Unmap()
	if f.Inside.IsValid() {
		addr = f.Inside.Unmap()
	}
	if e.allow.Contains(addr) {
		e.stats.AllowListed++
		return out
	}
	src := e.keyOf(f, f.SrcAddr)
	s := e.lookup(src)
	if s != nil && f.Customer != "" && (s.who == nil || s.who.id != f.Customer) {
		// Two customers on one key (64 bits of a hash): the second is
		// kept under its address instead, never merged.
		e.stats.KeyCollisions++
		src = e.subs.Subscriber(addr)
		s = e.lookup(src)
	}
	if s != nil {
		s, out = e.catchUp(src, s, f.EndMs, out)
	}
	attempt := e.attempt(f)
	if !attempt {
		e.stats.Answers++
	}
	g := 0
	if s != nil {
		g = int(s.group)
	} else {
		g, _ = e.groups.Lookup(addr)
	}
	r := &e.rules[g]
	var want [kinds]bool
	any := false
	for k, ru := range ruleTable {
		want[k] = r.on[k] && ru.wants(r, f, attempt)
		any = any || want[k]
	}
	if s == nil {
		if !any {
			return out // nothing would use the state
		}
		if !e.makeRoom(src) {
			return out
		}
		s = e.table.add(src)
		s.group = uint16(g)
		if identity.IsKey(src) {
			s.who = &customer{id: f.Customer}
		}
		e.budget.used.Add(1)
		for k := range kinds {
			if a, ok := e.inherited[inheritKey{src, k}]; ok {
				delete(e.inherited, inheritKey{src, k})
				e.attach(src, s, k, a)
			}
		}
	}
	s.lastMs = max(s.lastMs, f.EndMs)
	if s.who != nil {
		s.who.saw(e.subs.Subscriber(addr), f.EndMs)
	}
	s.exporter = e.exporter(f.Exporter)
	s.sampling = f.SamplingRate
	for k, ru := range ruleTable {
		if !want[k] {
			continue
		}
		e.ruleCtx = ruleCtx{addr: src, s: s, r: r, kind: k}
		if a := ru.process(e, &e.ruleCtx, f); a != nil {
			out = append(out, *a)
		}
	}
	return out
}

// Triggers of smtp_fanout, in the evidence.
const (
	TriggerThreshold  = "threshold"
	TriggerSlowWindow = "slow_window"
	TriggerSequential = "sequential"
	TriggerWorm       = "worm_pattern"
	TriggerBaseline   = "baseline_departure"
)

// incident returns the open incident of kind, opening one if needed.
func (e *Engine) incident(addr netip.Addr, s *subscriber, kind int, nowMs, firstSeenMs int64) (*incident, string) {
	inc := s.incidentOf(kind)
	state := alert.StateUpdate
	if inc == nil {
		inc = &incident{id: incidentID(addr, kindNames[kind], nowMs), firstSeenMs: firstSeenMs}
		if s.more == nil {
			s.more = &ruleStates{}
		}
		s.more.incidents[kind] = inc
		state = alert.StateOpen
		e.active[addr] = s
	}
	inc.lastAboveMs = nowMs
	inc.lastSeenMs = max(inc.lastSeenMs, s.lastMs)
	return inc, state
}

// emit applies the lifecycle: an open always goes out, an update only when
// the count grew and the update interval has passed.
func (e *Engine) emit(inc *incident, state string, a alert.Alert, distinct uint64, nowMs int64, interval time.Duration) (alert.Alert, bool) {
	a.LastSeen = time.UnixMilli(inc.lastSeenMs).UTC()
	inc.last = a
	grown := distinct > inc.lastEmitDistinct && nowMs-inc.lastEmitMs >= interval.Milliseconds()
	if state == alert.StateUpdate && !grown && !e.dueForRefresh(inc, nowMs) {
		return alert.Alert{}, false
	}
	a.State = state
	inc.lastEmitMs = nowMs
	inc.lastEmitDistinct = distinct
	return a, true
}

// dueForRefresh tells whether an open incident that has not grown is
// updated anyway: at least every half incident_lookback, so that the
// alerts topic always holds it within the lookback that a next owner of
// the partition reads back (Inherit). Without it a steady zombie, quiet
// on the alerts topic for a day, would open again under a new id at the
// next rebalance: a second incident for one customer.
func (e *Engine) dueForRefresh(inc *incident, nowMs int64) bool {
	half := e.config.IncidentLookback.Milliseconds() / 2
	return half > 0 && nowMs-inc.lastEmitMs >= half
}

func (e *Engine) base(addr netip.Addr, s *subscriber, inc *incident, kind int, windowEndMs int64, window time.Duration) alert.Alert {
	a := alert.Alert{
		ID:           inc.id,
		Kind:         kindNames[kind],
		SubscriberIP: e.subs.Label(addr),
		WindowStart:  time.UnixMilli(windowEndMs - window.Milliseconds()).UTC(),
		WindowEnd:    time.UnixMilli(windowEndMs).UTC(),
		FirstSeen:    time.UnixMilli(inc.firstSeenMs).UTC(),
		LastSeen:     time.UnixMilli(inc.lastSeenMs).UTC(),
	}
	if int(s.exporter) < len(e.exporters) && e.exporters[s.exporter].IsValid() {
		a.Exporter = e.exporters[s.exporter].String()
	}
	switch {
	case s.who != nil:
		e.describeCustomer(&a, s.who, windowEndMs-window.Milliseconds(), windowEndMs)
	case e.subscriberID != nil:
		a.SubscriberID = e.subscriberID(addr)
	}
	a.Evidence.SamplingRate = s.sampling
	if s.group > 0 {
		a.Evidence.Group = e.rules[s.group].name
	}
	return a
}

// incidentID is stable for an incident and the same in a replay: it hashes
// the subscriber, the kind and the event time the incident opened.
func incidentID(addr netip.Addr, kind string, openedMs int64) string {
	h := sha256.Sum256([]byte(addr.String() + "|" + kind + "|" + strconv.FormatInt(openedMs, 10)))
	return hex.EncodeToString(h[:12])
}

// Advance moves event time to nowMs. At each new minute it resolves
// incidents quiet for their cool-down and evicts subscribers with nothing
// left in their windows (dst_entropy is evaluated as flows arrive, on a
// subscriber's first flow of each minute).
func (e *Engine) Advance(nowMs int64) []alert.Alert {
	if nowMs <= e.watermark {
		return nil
	}
	e.watermark = nowMs
	return e.sweepTo(nowMs)
}

// sweepTo runs the sweep of the newest minute boundary that the watermark
// minus the allowed lateness has passed. Timers are judged at minute
// boundaries, not at whatever time a message happened to move the
// watermark to, so that catchUp can judge them the same way.
func (e *Engine) sweepTo(watermark int64) []alert.Alert {
	minute := (watermark - e.config.AllowedLateness.Milliseconds()) / minuteMs
	if minute <= e.lastSweep {
		return nil
	}
	prev := e.lastSweep
	e.lastSweep = minute
	return e.sweep(minute*minuteMs, prev)
}

// catchUp fires a subscriber's timers that the flow's own time has passed
// and the sweep has not fired yet, exactly as the sweep of that minute
// would: incidents quiet for their cool-down resolve, and a subscriber
// idle past the longest window starts afresh (it returns nil then).
func (e *Engine) catchUp(addr netip.Addr, s *subscriber, endMs int64, out []alert.Alert) (*subscriber, []alert.Alert) {
	boundary := endMs / minuteMs * minuteMs
	if _, ok := e.active[addr]; ok {
		first := len(out)
		out = e.resolveQuiet(addr, s, boundary, out)
		sortAlerts(out[first:])
	}
	if !s.hasIncident() && boundary-s.lastMs > e.keepMs {
		e.drop(addr)
		e.stats.Evicted++
		return nil, out
	}
	return s, out
}

// resolveQuiet resolves the subscriber's incidents quiet for their
// cool-down at nowMs.
func (e *Engine) resolveQuiet(addr netip.Addr, s *subscriber, nowMs int64, out []alert.Alert) []alert.Alert {
	r := &e.rules[s.group]
	if s.more != nil {
		for k, inc := range s.more.incidents {
			if inc == nil {
				continue
			}
			if nowMs-inc.lastAboveMs >= ruleTable[k].cooldown(r).Milliseconds() {
				out = append(out, resolved(inc))
				s.more.incidents[k] = nil
				ruleTable[k].resolved(s)
			}
		}
	}
	if !s.hasIncident() {
		delete(e.active, addr)
	}
	return out
}

// countLate counts a late flow against its exporter; past a thousand
// exporters the rest share the zero address.
func (e *Engine) countLate(exporter netip.Addr) {
	if _, ok := e.lateByExporter[exporter]; !ok && len(e.lateByExporter) >= 1000 {
		exporter = netip.Addr{}
	}
	e.lateByExporter[exporter]++
}

// LateByExporter returns the late flows counted per exporter so far.
func (e *Engine) LateByExporter() map[netip.Addr]uint64 { return e.lateByExporter }

// Inherit takes over incidents that a previous owner of the partition
// announced and did not resolve: the last alert of each. Rebuilding reads
// back only rebuild_lookback of flows; an incident that opened before that
// would otherwise open a second time under a new id. Its id, first_seen and
// last reported count carry on; if the subscriber stays quiet it resolves
// after the cool-down like any other.
func (e *Engine) Inherit(last []alert.Alert) {
	for _, a := range last {
		addr, err := netip.ParseAddr(a.SubscriberIP)
		if err != nil || a.State == alert.StateResolved {
			continue
		}
		k := kindOf(a.Kind)
		if k < 0 {
			continue
		}
		if s := e.lookup(addr); s != nil {
			e.attach(addr, s, k, a)
			continue
		}
		if e.inherited == nil {
			e.inherited = map[inheritKey]alert.Alert{}
		}
		e.inherited[inheritKey{addr, k}] = a
	}
}

func (e *Engine) attach(addr netip.Addr, s *subscriber, k int, a alert.Alert) {
	e.active[addr] = s
	inc := s.incidentOf(k)
	switch {
	case inc == nil:
		lastMs := a.LastSeen.UnixMilli()
		if s.more == nil {
			s.more = &ruleStates{}
		}
		s.more.incidents[k] = &incident{
			id: a.ID, firstSeenMs: a.FirstSeen.UnixMilli(), lastSeenMs: lastMs, lastAboveMs: lastMs,
			lastEmitMs: lastMs, lastEmitDistinct: a.DistinctDsts, last: a,
		}
	default:
		if inc.id != a.ID {
			// The rebuild saw the incident open again part-way: it is
			// the same one.
			inc.id = a.ID
			inc.firstSeenMs = min(inc.firstSeenMs, a.FirstSeen.UnixMilli())
			inc.last.ID = a.ID
			inc.last.FirstSeen = time.UnixMilli(inc.firstSeenMs).UTC()
		}
		// The previous owner may have published past the offset it
		// committed: what it announced is not announced again when those
		// flows are processed here once more.
		inc.lastEmitDistinct = max(inc.lastEmitDistinct, a.DistinctDsts)
		inc.lastEmitMs = max(inc.lastEmitMs, a.LastSeen.UnixMilli())
	}
}

// Flush resolves every open incident, as at the end of a replayed capture.
func (e *Engine) Flush() []alert.Alert {
	var out []alert.Alert
	for i := range shards {
		for _, s := range e.table.shard(i) {
			if s.more != nil {
				for _, inc := range s.more.incidents {
					if inc != nil {
						out = append(out, resolved(inc))
					}
				}
			}
		}
	}
	e.Release()
	sortAlerts(out)
	return out
}

// Release drops every subscriber's state and gives its room back to the
// subscriber budget the engine shares with others: an engine whose
// partition has gone must not keep counting against max_subscribers.
func (e *Engine) Release() {
	clear(e.active)
	e.budget.used.Add(-int64(e.table.len()))
	e.table.reset()
}

// sweep runs at each new event-time minute: incidents quiet for their
// cool-down resolve; then the shards of the minutes since the last sweep
// are visited to expire old records and evict idle subscribers.
func (e *Engine) sweep(nowMs, prevMinute int64) []alert.Alert {
	var out []alert.Alert
	minute := nowMs / minuteMs
	for k, a := range e.inherited {
		if nowMs-a.LastSeen.UnixMilli() > e.keepMs {
			delete(e.inherited, k) // its subscriber never came back here
		}
	}
	for addr, s := range e.active {
		out = e.resolveQuiet(addr, s, nowMs, out)
	}
	for m := max(prevMinute+1, minute-shards+1); m <= minute; m++ {
		for addr, s := range e.table.shard(int(m % shards)) {
			if _, ok := e.active[addr]; ok {
				continue
			}
			r := &e.rules[s.group]
			s.ent.expire(uint32(minute - int64(r.entMins) + 1))
			if !s.hasIncident() && nowMs-s.lastMs > e.keepMs {
				e.drop(addr)
				e.stats.Evicted++
			}
		}
	}
	sortAlerts(out)
	return out
}

func resolved(inc *incident) alert.Alert {
	a := inc.last
	a.State = alert.StateResolved
	return a
}

// sortAlerts orders alerts from one sweep so that output is deterministic.
func sortAlerts(as []alert.Alert) {
	slices.SortFunc(as, func(a, b alert.Alert) int {
		return cmp.Or(strings.Compare(a.SubscriberIP, b.SubscriberIP), strings.Compare(a.Kind, b.Kind),
			strings.Compare(a.State, b.State))
	})
}
