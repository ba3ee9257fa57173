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
	// Subscribers are spread over shards by a hash of their address, so
	// that the once-a-minute visit for expiry and eviction takes one shard
	// at a time instead of stalling on all of them.
	shards [shards]map[netip.Addr]*subscriber
	nsubs  int
	// active holds the subscribers with an open incident, which the
	// minute sweep resolves after the cool-down.
	active      map[netip.Addr]*subscriber
	exporters   []netip.Addr
	exporterIdx map[netip.Addr]uint16
	keepMs      int64 // idle time after which a subscriber without incidents is evicted
	// watermark is event time: the slowest active source's newest flow
	// end, Unix ms (watermark.go). Flows ending before it minus the
	// allowed lateness are late; timers (cool-downs, eviction) fire once
	// the watermark minus the allowed lateness passes them, when no flow
	// that could still arrive can change their outcome.
	watermark   int64
	sources     map[sourceKey]*source
	slowest     *source
	wallMs      int64 // wall clock, for idle sources only (SetWallClock)
	scannedAtMs int64 // wallMs at the last rescan of the sources
	lastSweep   int64 // minute of the last sweep
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

const (
	kindSMTP = iota
	kindEntropy
	kinds
)

var kindNames = [kinds]string{alert.KindSMTPFanout, alert.KindDstEntropy}

type subscriber struct {
	lastMs    int64 // last flow of any kind
	smtp      *smtpState
	ent       entropyState
	incidents [kinds]*incident
	sampling  uint32 // sampling rate of the last flow
	exporter  uint16 // index in Engine.exporters
	group     uint16 // index in Engine.rules
}

// smtpState is allocated only for subscribers that send to TCP/25.
type smtpState struct {
	fanout
	firstMs int64 // first TCP/25 flow still in the slow window
	// The sequential test: log-odds of "infected" over first contacts.
	llr           float64
	firstContacts uint32
	firstFailed   uint32
	infected      bool
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
	}
	for i := range e.shards {
		e.shards[i] = map[netip.Addr]*subscriber{}
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
		longest = max(longest, r.smtp.SlowWindow, r.entropy.Window)
	}
	e.keepMs = (longest + config.AllowedLateness).Milliseconds()
	return e
}

// SetSubscriberIDs sets how alerts get their subscriber_id.
func (e *Engine) SetSubscriberIDs(lookup func(netip.Addr) string) { e.subscriberID = lookup }

// Stats returns the counters so far.
func (e *Engine) Stats() EngineStats { return e.stats }

// Watermark is the engine's event time, Unix ms.
func (e *Engine) Watermark() int64 { return e.watermark }

// Subscribers is the number of subscribers with state.
func (e *Engine) Subscribers() int { return e.nsubs }

func (e *Engine) lookup(a netip.Addr) *subscriber { return e.shards[shardOf(a)][a] }

func (e *Engine) exporter(a netip.Addr) uint16 {
	if i, ok := e.exporterIdx[a]; ok {
		return i
	}
	if len(e.exporters) >= math.MaxUint16 {
		return 0 // absurd number of exporters: attribute to the first
	}
	e.exporters = append(e.exporters, a)
	e.exporterIdx[a] = uint16(len(e.exporters) - 1)
	return uint16(len(e.exporters) - 1)
}

// failedAttempt tells a TCP/25 attempt that never became an SMTP session:
// no ACK from the subscriber, or (when flags are not exported, unsampled)
// three packets or fewer.
func failedAttempt(f *flow.Flow) bool {
	if f.TCPFlags != 0 {
		return f.TCPFlags&flow.TCPAck == 0
	}
	return f.Scale() == 1 && f.Packets <= 3
}

const minuteMs = int64(Bucket / time.Millisecond)

// icmpError tells an ICMP error message (destination unreachable, time
// exceeded, ...), by the NetFlow convention of type<<8|code in the
// destination port. Errors answer traffic the subscriber received, so a
// host refusing a scan would otherwise look like a scanner itself.
func icmpError(f *flow.Flow) bool {
	switch typ := f.DstPort >> 8; f.Proto {
	case 1:
		return typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
	case 58:
		return typ >= 1 && typ <= 4
	}
	return false
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
	src := f.SrcAddr.Unmap()
	if e.allow.Contains(src) {
		e.stats.AllowListed++
		return out
	}
	isSMTP := f.Proto == flow.ProtoTCP && f.DstPort == 25
	s := e.lookup(src)
	if s != nil {
		s, out = e.catchUp(src, s, f.EndMs, out)
	}
	if s == nil {
		g, _ := e.groups.Lookup(src)
		r := &e.rules[g]
		if !r.entOn && !(r.smtpOn && isSMTP) {
			return out // nothing would use the state
		}
		s = &subscriber{group: uint16(g)}
		e.shards[shardOf(src)][src] = s
		e.nsubs++
		for k := range kinds {
			if a, ok := e.inherited[inheritKey{src, k}]; ok {
				delete(e.inherited, inheritKey{src, k})
				e.attach(src, s, k, a)
			}
		}
	}
	r := &e.rules[s.group]
	s.lastMs = max(s.lastMs, f.EndMs)
	s.exporter = e.exporter(f.Exporter)
	s.sampling = f.SamplingRate
	minute := f.EndMs / minuteMs
	if r.entOn && !icmpError(f) {
		if !f.DstAddr.Is4() {
			s.ent.hasV6 = true
		}
		oldest := s.lastMs/minuteMs - int64(r.entMins) + 1
		s.ent.add(dst32(f.DstAddr), f.DstPort, uint32(minute), uint32(oldest), r.entropy.MaxRecords)
		// The first flow of each event-time minute evaluates the window
		// and steps the baseline: once a minute, spread over the minute
		// instead of a sweep that would stall on every busy subscriber at
		// once. Between those, evaluate on arrival so that a worm is
		// flagged within seconds; waiting for new flows as many as a
		// quarter of the records keeps the cost per flow constant.
		now := uint32(s.lastMs / minuteMs)
		step := s.ent.evalMinute != now && s.ent.scaledFlows(s.sampling) >= uint64(r.entropy.MinFlows)
		if step || s.ent.since >= uint32(max(r.entropy.MinFlows/4, len(s.ent.recs)/4)) {
			if step {
				s.ent.evalMinute = now
			}
			if a, ok := e.evaluateEntropy(src, s, r, f.EndMs, step); ok {
				out = append(out, a)
			}
		}
	}
	if !isSMTP || !r.smtpOn {
		return out
	}
	if s.smtp == nil {
		s.smtp = &smtpState{fanout: *newFanout(r.slowMins)}
	}
	m := s.smtp
	if m.empty() {
		m.firstMs = f.EndMs
	}
	failed := failedAttempt(f)
	first, ok := m.addFirst(f.DstAddr, minute, failed, f.Scale(), r.smtp.MaxDestinations, r.smtp.SampleSize)
	if !ok {
		// Older than the longest window: it can change no count.
		return out
	}
	if first && r.smtp.Sequential.Enabled {
		m.step(failed, r.smtp.Sequential)
	}
	if a, ok := e.evaluateSMTP(src, s, r, f.EndMs); ok {
		out = append(out, a)
	}
	return out
}

func (q SequentialConfiguration) bounds() (infected, benign float64) {
	return math.Log(q.DetectionProbability / q.FalseAlarmProbability),
		math.Log((1 - q.DetectionProbability) / (1 - q.FalseAlarmProbability))
}

// step moves the random walk by one first contact.
func (m *smtpState) step(failed bool, q SequentialConfiguration) {
	m.firstContacts++
	if failed {
		m.firstFailed++
		m.llr += math.Log((1 - q.SuccessInfected) / (1 - q.SuccessBenign))
	} else {
		m.llr += math.Log(q.SuccessInfected / q.SuccessBenign)
	}
	up, down := q.bounds()
	switch {
	case m.llr >= up && int(m.firstContacts) >= q.MinFirstContacts:
		m.infected = true
	case m.llr <= down:
		// Decided benign: restart the walk, so that a later infection of
		// the same host is still caught.
		m.llr, m.firstContacts, m.firstFailed = 0, 0, 0
	}
}

func (m *smtpState) resetWalk() { m.llr, m.firstContacts, m.firstFailed, m.infected = 0, 0, 0, false }

// Triggers of smtp_fanout, in the evidence.
const (
	TriggerThreshold  = "threshold"
	TriggerSlowWindow = "slow_window"
	TriggerSequential = "sequential"
	TriggerWorm       = "worm_pattern"
	TriggerBaseline   = "baseline_departure"
)

func (e *Engine) evaluateSMTP(addr netip.Addr, s *subscriber, r *ruleSet, nowMs int64) (alert.Alert, bool) {
	cfg := r.smtp
	m := s.smtp
	// Past the cap each count merges up to an hour of sketches; once the
	// incident is open, once a second of event time is enough.
	if inc := s.incidents[kindSMTP]; inc != nil && m.saturated && nowMs >= inc.lastAboveMs && nowMs-inc.lastAboveMs < 1000 {
		inc.lastSeenMs = max(inc.lastSeenMs, s.lastMs)
		return alert.Alert{}, false
	}
	distinct, flows, failed := m.window(r.smtpMins)
	slowDistinct, _, _ := m.window(r.slowMins)
	var trigger string
	switch {
	case distinct >= uint64(cfg.Threshold):
		trigger = TriggerThreshold
	case slowDistinct >= uint64(cfg.SlowThreshold):
		trigger = TriggerSlowWindow
	case m.infected:
		trigger = TriggerSequential
	default:
		return alert.Alert{}, false
	}
	inc, state := e.incident(addr, s, kindSMTP, nowMs, m.firstMs)
	a := e.smtpAlert(addr, s, r, inc, trigger, distinct, flows, failed, slowDistinct)
	return e.emit(inc, state, a, distinct, nowMs, cfg.UpdateInterval)
}

// incident returns the open incident of kind, opening one if needed.
func (e *Engine) incident(addr netip.Addr, s *subscriber, kind int, nowMs, firstSeenMs int64) (*incident, string) {
	inc := s.incidents[kind]
	state := alert.StateUpdate
	if inc == nil {
		inc = &incident{id: incidentID(addr, kindNames[kind], nowMs), firstSeenMs: firstSeenMs}
		s.incidents[kind] = inc
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
	if state == alert.StateUpdate &&
		(distinct <= inc.lastEmitDistinct || nowMs-inc.lastEmitMs < interval.Milliseconds()) {
		return alert.Alert{}, false
	}
	a.State = state
	inc.lastEmitMs = nowMs
	inc.lastEmitDistinct = distinct
	return a, true
}

func (e *Engine) base(addr netip.Addr, s *subscriber, inc *incident, kind int, windowEndMs int64, window time.Duration) alert.Alert {
	a := alert.Alert{
		ID:           inc.id,
		Kind:         kindNames[kind],
		SubscriberIP: addr.String(),
		WindowStart:  time.UnixMilli(windowEndMs - window.Milliseconds()).UTC(),
		WindowEnd:    time.UnixMilli(windowEndMs).UTC(),
		FirstSeen:    time.UnixMilli(inc.firstSeenMs).UTC(),
		LastSeen:     time.UnixMilli(inc.lastSeenMs).UTC(),
	}
	if int(s.exporter) < len(e.exporters) && e.exporters[s.exporter].IsValid() {
		a.Exporter = e.exporters[s.exporter].String()
	}
	if e.subscriberID != nil {
		a.SubscriberID = e.subscriberID(addr)
	}
	a.Evidence.SamplingRate = s.sampling
	if s.group > 0 {
		a.Evidence.Group = e.rules[s.group].name
	}
	return a
}

func (e *Engine) smtpAlert(addr netip.Addr, s *subscriber, r *ruleSet, inc *incident, trigger string, distinct, flows, failed, slowDistinct uint64) alert.Alert {
	cfg := r.smtp
	m := s.smtp
	share := 0.0
	if flows > 0 {
		share = float64(failed) / float64(flows)
	}
	sample := make([]string, len(m.sample))
	for i, d := range m.sample {
		sample[i] = d.String()
	}
	a := e.base(addr, s, inc, kindSMTP, (m.latest+1)*minuteMs, cfg.Window)
	a.DistinctDsts = distinct
	a.Flows = flows
	// Past the threshold, every failed attempt adds weight: a zombie
	// hammering dead or refusing MX hosts scores up to twice as high as
	// a busy but successful sender of the same fan-out. The sequential
	// test scores by how far its odds are past the decision bound.
	strength := float64(distinct) / float64(cfg.Threshold)
	decision := "pending"
	if m.infected {
		decision = "infected"
	}
	up, _ := cfg.Sequential.bounds()
	if cfg.Sequential.Enabled && m.llr > 0 {
		strength = max(strength, m.llr/up)
	}
	a.Score = strength * (1 + share)
	a.Evidence.SampleDsts = sample
	a.Evidence.FailedAttempts = failed
	a.Evidence.CompletedAttempts = flows - failed
	a.Evidence.FailedShare = share
	a.Evidence.Threshold = uint64(cfg.Threshold)
	a.Evidence.Window = cfg.Window.String()
	a.Evidence.DistinctDsts60m = slowDistinct
	a.Evidence.Saturated = m.saturated
	a.Evidence.Trigger = trigger
	if cfg.Sequential.Enabled {
		a.Evidence.Sequential = &alert.Sequential{
			Decision:      decision,
			Odds:          math.Exp(min(m.llr, 700)),
			Bound:         math.Exp(up),
			FirstContacts: uint64(m.firstContacts),
			FirstFailed:   uint64(m.firstFailed),
		}
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
	if s.incidents == [kinds]*incident{} && boundary-s.lastMs > e.keepMs {
		delete(e.shards[shardOf(addr)], addr)
		e.nsubs--
		e.stats.Evicted++
		return nil, out
	}
	return s, out
}

// resolveQuiet resolves the subscriber's incidents quiet for their
// cool-down at nowMs.
func (e *Engine) resolveQuiet(addr netip.Addr, s *subscriber, nowMs int64, out []alert.Alert) []alert.Alert {
	r := &e.rules[s.group]
	for k, inc := range s.incidents {
		if inc == nil {
			continue
		}
		cooldown := r.smtp.Cooldown
		if k == kindEntropy {
			cooldown = r.entropy.Cooldown
		}
		if nowMs-inc.lastAboveMs >= cooldown.Milliseconds() {
			out = append(out, resolved(inc))
			s.incidents[k] = nil
			if k == kindSMTP && s.smtp != nil {
				s.smtp.resetWalk()
			}
		}
	}
	if s.incidents == [kinds]*incident{} {
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
		k := slices.Index(kindNames[:], a.Kind)
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
	inc := s.incidents[k]
	switch {
	case inc == nil:
		lastMs := a.LastSeen.UnixMilli()
		s.incidents[k] = &incident{
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
	for _, sh := range e.shards {
		for addr, s := range sh {
			for k, inc := range s.incidents {
				if inc != nil {
					out = append(out, resolved(inc))
					s.incidents[k] = nil
				}
			}
			delete(sh, addr)
		}
	}
	clear(e.active)
	e.nsubs = 0
	sortAlerts(out)
	return out
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
		sh := e.shards[m%shards]
		for addr, s := range sh {
			if _, ok := e.active[addr]; ok {
				continue
			}
			r := &e.rules[s.group]
			s.ent.expire(uint32(minute - int64(r.entMins) + 1))
			if s.incidents == [kinds]*incident{} && nowMs-s.lastMs > e.keepMs {
				delete(sh, addr)
				e.nsubs--
				e.stats.Evicted++
			}
		}
	}
	sortAlerts(out)
	return out
}

// evaluateEntropy checks the window for the worm pattern and for a
// departure from the baseline; at minute sweeps (step) the baseline then
// learns from it, so that it moves once a minute whatever the traffic.
func (e *Engine) evaluateEntropy(addr netip.Addr, s *subscriber, r *ruleSet, nowMs int64, step bool) (alert.Alert, bool) {
	cfg := r.entropy
	s.ent.since = 0
	// Idle subscribers' records are expired only when their shard is
	// visited; drop what left the window before counting.
	s.ent.expire(uint32(s.lastMs/minuteMs - int64(r.entMins) + 1))
	if s.ent.scaledFlows(s.sampling) < uint64(cfg.MinFlows) {
		return alert.Alert{}, false
	}
	scale := uint64(max(s.sampling, 1))
	st := s.ent.evaluate(&e.scratch, scale, cfg.SampleSize)
	if st.flows < uint64(cfg.MinFlows) {
		return alert.Alert{}, false
	}
	worm := st.distinct >= uint64(cfg.WormMinDsts) && st.addrH >= cfg.WormAddrEntropy && st.portH <= cfg.WormPortEntropy
	open := s.incidents[kindEntropy] != nil
	baseMean := s.ent.mean
	delta, departed := s.ent.departure(st, cfg, open || !step)
	var trigger string
	switch {
	case worm:
		trigger = TriggerWorm
	case departed:
		trigger = TriggerBaseline
	default:
		return alert.Alert{}, false
	}
	inc, state := e.incident(addr, s, kindEntropy, nowMs, int64(st.firstMinute)*minuteMs)
	a := e.base(addr, s, inc, kindEntropy, (nowMs/minuteMs+1)*minuteMs, cfg.Window)
	a.DistinctDsts = st.distinct
	a.Flows = st.flows
	if worm {
		a.Score = float64(st.distinct) / float64(cfg.WormMinDsts) * (st.addrH - st.portH)
	} else {
		a.Score = delta / max(cfg.BaselineMinDelta, 1e-9)
	}
	a.Evidence.SampleDsts = st.sample
	a.Evidence.Window = cfg.Window.String()
	a.Evidence.Trigger = trigger
	a.Evidence.Entropy = &alert.Entropy{
		DstAddr:         round3(st.addrH),
		DstPort:         round3(st.portH),
		DistinctPorts:   st.ports,
		TopPort:         st.topPort,
		TopPortShare:    round3(st.topPortShare),
		BaselineDstAddr: round3(float64(baseMean[0])),
		BaselineDstPort: round3(float64(baseMean[1])),
		BaselineSteps:   uint64(s.ent.evals),
		Thinning:        st.thinning,
	}
	return e.emit(inc, state, a, st.distinct, nowMs, cfg.UpdateInterval)
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

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
