package detector

import (
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// floodRule is outbound_flood: a subscriber taking part in a denial of
// service. Per target (destination address and kind of traffic) it keeps
// packets, bytes and flows over the last min_minutes and the minute in
// progress, and compares their rates over the time the traffic actually
// covered (from the earliest start of those flows to the newest end)
// with absolute ceilings and with the subscriber's own baseline for that
// kind of traffic. The traffic must have lasted min_minutes: one burst is
// not an attack.
//
// Only the subscriber's own attempts count (network.Attempt): ICMP
// queries, UDP and other IP protocols that answer nothing the target
// sent first, and TCP SYNs without an ACK (SYN floods); TCP in which the
// subscriber acknowledged the target's data (uploads, backups) only with
// established_tcp. Each kind of traffic has its own ceiling toward one
// target (max_icmp_pps, max_udp_pps, max_syn_pps, max_other_pps), far
// below the whole-host max_pps: one bot's share of a rented attack. UDP
// and other protocols count against theirs only while the target answers
// at most max_answer_ratio of the packets: the flows the subscriber
// receives from the target are weighed against those it sends
// (Engine.Receive). A subscriber gets state only once
// its flood-like traffic in a minute reaches a quarter of the smallest
// volume any check could fire on (subscriber.gate): quiet subscribers and
// ordinary browsing cost nothing.
type floodRule struct{}

// Kinds of traffic outbound_flood keeps baselines for.
const (
	floodICMP = iota
	floodUDP
	floodSYN // TCP without ACK
	floodTCP // TCP with ACK (established_tcp only)
	floodOther
	floodClasses
)

var floodClassNames = [floodClasses]string{"icmp", "udp", "tcp_syn", "tcp", "other"}

// floodClassTriggers name the ceiling of each kind, as its configuration key.
var floodClassTriggers = [floodClasses]string{"max_icmp_pps", "max_udp_pps", "max_syn_pps", "max_pps", "max_other_pps"}

// floodMaxPorts caps the destination ports listed per target.
const floodMaxPorts = 4

// floodGate counts the subscriber's flood-like packets in its newest
// minute, inline in the subscriber (8 bytes, within what the struct took
// before the rules moved out of it).
type floodGate struct {
	minute uint32
	pkts   uint32
}

// floodGateOf is the packets per minute below which no check of cfg can
// fire, divided by four: a packet carries at most a jumbo frame, a flow at
// least one packet.
func floodGateOf(cfg OutboundFloodConfiguration) uint32 {
	g := min(int64(cfg.MaxFlowsPerMinute), 60*int64(cfg.MaxPPS), cfg.MaxBPS*60/8/9216,
		60*int64(min(cfg.MaxICMPPPS, cfg.MaxUDPPPS, cfg.MaxSYNPPS, cfg.MaxOtherPPS)))
	if cfg.BaselineFactor > 0 {
		g = min(g, 60*int64(cfg.BaselineMinPPS))
	}
	return uint32(max(min(g/4, math.MaxUint32), 1))
}

func (floodRule) name() string                      { return alert.KindOutboundFlood }
func (floodRule) enabled(r *ruleSet) bool           { return r.flood.Enabled }
func (floodRule) cooldown(r *ruleSet) time.Duration { return r.flood.Cooldown }
func (floodRule) keep(r *ruleSet) time.Duration     { return time.Duration(r.flood.MinMinutes+1) * Bucket }
func (floodRule) resolved(*subscriber)              {}

func (floodRule) wants(r *ruleSet, f *flow.Flow, attempt bool) bool {
	_, ok := floodClass(f, attempt, r.flood.EstablishedTCP)
	return ok
}

// floodClass tells the kind of traffic of f, and whether it counts.
func floodClass(f *flow.Flow, attempt, establishedTCP bool) (uint8, bool) {
	switch f.Proto {
	case network.ProtoICMP, network.ProtoICMPv6:
		return floodICMP, attempt
	case flow.ProtoTCP:
		if f.TCPFlags != 0 && f.TCPFlags&flow.TCPAck == 0 {
			return floodSYN, attempt
		}
		return floodTCP, establishedTCP
	case network.ProtoUDP:
		return floodUDP, attempt
	}
	return floodOther, attempt
}

// receivedClass is the kind of traffic of the target's flows a received
// flow answers: echo replies answer ICMP, datagrams UDP, segments TCP.
func receivedClass(f *flow.Flow) uint8 {
	switch f.Proto {
	case network.ProtoICMP, network.ProtoICMPv6:
		return floodICMP
	case flow.ProtoTCP:
		return floodSYN
	case network.ProtoUDP:
		return floodUDP
	}
	return floodOther
}

// classPPS is the ceiling of one kind of traffic toward one target; TCP
// the subscriber acknowledges has only max_pps.
func (o OutboundFloodConfiguration) classPPS(class uint8) int {
	switch class {
	case floodICMP:
		return o.MaxICMPPPS
	case floodUDP:
		return o.MaxUDPPPS
	case floodSYN:
		return o.MaxSYNPPS
	case floodOther:
		return o.MaxOtherPPS
	}
	return o.MaxPPS
}

// answerable tells the kinds of traffic whose answers excuse them: an
// echo flood answered by its target is still a flood, and a SYN the
// subscriber never acknowledged opened nothing, answered or not.
func answerable(class uint8) bool { return class == floodUDP || class == floodOther }

// floodState is allocated for a subscriber past the gate.
type floodState struct {
	targets []*floodTarget
	// The baseline: per kind of traffic, an exponentially weighted mean
	// of the busiest target's packet rate, one step per minute with such
	// traffic (the minutes before the state existed are not learned).
	minute  int64 // minute whose busiest rates busiest holds
	busiest [floodClasses]float64
	seen    [floodClasses]bool
	mean    [floodClasses]float64
	steps   [floodClasses]uint16
	// overFlows counts flows that found their target over a check: what
	// makes an update worth sending.
	overFlows uint64
}

type floodTarget struct {
	dst    netip.Addr
	class  uint8
	nports uint8
	ports  [floodMaxPorts]uint16
	latest int64 // newest minute
	lastMs int64 // newest flow end
	ring   []floodBucket
}

type floodBucket struct {
	minute             int64
	pkts, bytes, flows uint64
	answers            uint64 // packets received from the target
	startMs            int64  // earliest start of the bucket's flows
	// active has bit i set when traffic to the target covered second i
	// of the minute: what tells a flood that lasted from a burst and a
	// straggler a minute apart.
	active uint64
}

// floodRates is a target's traffic over its window.
type floodRates struct {
	pkts, bytes, flows, answers uint64
	coveredMs                   int64
	activeSecs                  int
	pps, bps, fpm               float64
}

// answerRatio is the packets the target sent back per packet sent to it.
func (r floodRates) answerRatio() float64 {
	if r.pkts == 0 {
		return 0
	}
	return float64(r.answers) / float64(r.pkts)
}

func (t *floodTarget) at(minute int64) *floodBucket {
	i := minute % int64(len(t.ring))
	if i < 0 {
		i += int64(len(t.ring))
	}
	return &t.ring[i]
}

func (t *floodTarget) rates() floodRates {
	var r floodRates
	earliest := int64(math.MaxInt64)
	for _, b := range t.ring {
		if b.minute <= t.latest-int64(len(t.ring)) {
			continue
		}
		r.answers = flow.SaturatingAdd(r.answers, b.answers)
		r.activeSecs += bits.OnesCount64(b.active)
		if b.flows > 0 {
			r.pkts = flow.SaturatingAdd(r.pkts, b.pkts)
			r.bytes = flow.SaturatingAdd(r.bytes, b.bytes)
			r.flows = flow.SaturatingAdd(r.flows, b.flows)
			earliest = min(earliest, b.startMs)
		}
	}
	if r.flows == 0 {
		return r
	}
	r.coveredMs = t.lastMs - earliest
	secs := float64(max(r.coveredMs, 1000)) / 1000
	r.pps = float64(r.pkts) / secs
	r.bps = float64(r.bytes) * 8 / secs
	r.fpm = float64(r.flows) * 60 / secs
	return r
}

// volume is the target's packets in its window, to choose which gives way.
func (t *floodTarget) volume() uint64 {
	var n uint64
	for _, b := range t.ring {
		if b.minute > t.latest-int64(len(t.ring)) {
			n += b.pkts
		}
	}
	return n
}

func (floodRule) process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert {
	cfg := c.r.flood
	class, _ := floodClass(f, true, cfg.EstablishedTCP)
	minute := f.EndMs / minuteMs
	pkts := f.ScaledPackets()
	s := c.s
	if m := uint32(minute); m > s.gate.minute {
		s.gate = floodGate{minute: m}
	}
	s.gate.pkts = uint32(min(uint64(s.gate.pkts)+pkts, math.MaxUint32))
	st, _ := c.state().(*floodState)
	if st == nil {
		if s.gate.pkts < c.r.floodGate {
			return nil
		}
		st = &floodState{minute: minute}
		c.setState(st)
	}
	open := s.incidentOf(kindFlood) != nil
	if minute > st.minute {
		st.learn(cfg, open)
		st.minute = minute
		// Targets with nothing left in their window give way.
		st.targets = slices.DeleteFunc(st.targets, func(t *floodTarget) bool { return t.latest < minute-int64(cfg.MinMinutes) })
	}

	t := st.target(f.DstAddr.Unmap(), class, cfg)
	if minute <= t.latest-int64(len(t.ring)) {
		return nil // older than the target's window
	}
	t.latest = max(t.latest, minute)
	t.lastMs = max(t.lastMs, f.EndMs)
	b := t.at(minute)
	if b.minute != minute {
		*b = floodBucket{minute: minute, startMs: math.MaxInt64}
	}
	b.pkts = flow.SaturatingAdd(b.pkts, pkts)
	b.bytes = flow.SaturatingAdd(b.bytes, f.ScaledBytes())
	// A record counts as Scale attempts: each had a chance of 1/N to be
	// sampled (flow.Flow.Scale).
	b.flows = flow.SaturatingAdd(b.flows, f.Scale())
	b.startMs = min(b.startMs, f.Start())
	t.markActive(f, cfg.classPPS(class))
	if int(t.nports) < floodMaxPorts && !slices.Contains(t.ports[:t.nports], f.DstPort) {
		t.ports[t.nports] = f.DstPort
		t.nports++
	}

	rt := t.rates()
	if minute == st.minute {
		st.busiest[class] = max(st.busiest[class], rt.pps)
		st.seen[class] = true
	}
	// Sustained: the traffic spans min_minutes and was there in at least
	// three quarters of its seconds.
	if rt.coveredMs < int64(cfg.MinMinutes)*minuteMs || rt.activeSecs < cfg.MinMinutes*45 {
		return nil
	}
	var trigger string
	ceiling := float64(cfg.classPPS(class))
	answered := answerable(class) && rt.answerRatio() > cfg.MaxAnswerRatio
	score := max(rt.pps/float64(cfg.MaxPPS), rt.bps/float64(cfg.MaxBPS))
	if !answered {
		score = max(score, rt.fpm/float64(cfg.MaxFlowsPerMinute), rt.pps/ceiling)
	}
	base := st.mean[class]
	switch {
	case rt.pps >= float64(cfg.MaxPPS):
		trigger = TriggerMaxPPS
	case rt.bps >= float64(cfg.MaxBPS):
		trigger = TriggerMaxBPS
	case answered:
		// An exchange: the whole-host ceilings above are all that apply.
		return nil
	case rt.pps >= ceiling:
		trigger = floodClassTriggers[class]
	case rt.fpm >= float64(cfg.MaxFlowsPerMinute):
		trigger = TriggerMaxFlows
	case cfg.BaselineFactor > 0 && int(st.steps[class]) >= cfg.BaselineWarmup &&
		rt.pps >= float64(cfg.BaselineMinPPS) && rt.pps >= cfg.BaselineFactor*base:
		trigger, score = TriggerBaseline, rt.pps/max(cfg.BaselineFactor*base, float64(cfg.BaselineMinPPS))
	default:
		return nil
	}
	st.overFlows++
	inc, state := e.incident(c.addr, s, kindFlood, f.EndMs, t.lastMs-rt.coveredMs)
	a := e.base(c.addr, s, inc, kindFlood, (t.latest+1)*minuteMs, time.Duration(len(t.ring))*Bucket)
	a.DistinctDsts = 1
	a.Flows = rt.flows
	a.Score = score
	a.Evidence.SampleDsts = []string{t.dst.String()}
	a.Evidence.Window = (time.Duration(len(t.ring)) * Bucket).String()
	a.Evidence.Trigger = trigger
	a.Evidence.Flood = &alert.Flood{
		Target:         t.dst.String(),
		Protocol:       protoName(f.Proto),
		Traffic:        floodClassNames[class],
		Ports:          slices.Clone(t.ports[:t.nports]),
		PPS:            round3(rt.pps),
		BPS:            round3(rt.bps),
		FlowsPerMinute: round3(rt.fpm),
		Seconds:        round3(float64(rt.coveredMs) / 1000),
		Packets:        rt.pkts,
		Bytes:          rt.bytes,
		AnswerPackets:  rt.answers,
		AnswerRatio:    round3(rt.answerRatio()),
		BaselinePPS:    round3(base),
		BaselineSteps:  uint64(st.steps[class]),
	}
	return some(e.emit(inc, state, a, st.overFlows, f.EndMs, cfg.UpdateInterval))
}

// markActive marks the seconds f covered in the target's window. A record
// sampled at 1:N stands for the N/ceiling seconds after it too: at the
// ceiling's rate, that is the expected gap between two sampled packets,
// so that a sampled flood at the ceiling still covers its minute.
func (t *floodTarget) markActive(f *flow.Flow, ceiling int) {
	startS, endS := f.Start()/1000, f.EndMs/1000
	if n := f.Scale(); n > 1 {
		endS += int64(n) / int64(max(ceiling, 1))
	}
	startS = max(startS, (t.latest-int64(len(t.ring))+1)*60)
	endS = min(endS, t.latest*60+59)
	for s := startS; s <= endS; {
		minute := s / 60
		b := t.at(minute)
		if b.minute > minute {
			s = (minute + 1) * 60
			continue
		}
		if b.minute != minute {
			*b = floodBucket{minute: minute, startMs: math.MaxInt64}
		}
		last := min(endS, minute*60+59)
		lo, hi := uint(s-minute*60), uint(last-minute*60)
		b.active |= (uint64(1)<<(hi-lo+1) - 1) << lo
		s = last + 1
	}
}

// answered counts the packets of a flow the subscriber received from one
// of its targets, in the minute the flow ended.
func (st *floodState) answered(f *flow.Flow) {
	src, class := f.SrcAddr.Unmap(), receivedClass(f)
	minute := f.EndMs / minuteMs
	for _, t := range st.targets {
		if t.dst != src || (t.class != class && !(class == floodSYN && t.class == floodTCP)) {
			continue
		}
		if minute <= t.latest-int64(len(t.ring)) {
			continue // older than the target's window
		}
		b := t.at(minute)
		if b.minute > minute {
			continue
		}
		if b.minute != minute {
			*b = floodBucket{minute: minute, startMs: math.MaxInt64}
		}
		b.answers = flow.SaturatingAdd(b.answers, f.ScaledPackets())
	}
}

// learn steps the baselines with the minute that ended; frozen (an open
// incident) it forgets that minute instead. A minute that would have been
// a departure is not learned either: a flood's first minute, before it
// has lasted min_minutes, must not raise the bar it is measured against.
func (st *floodState) learn(cfg OutboundFloodConfiguration, frozen bool) {
	for k := range floodClasses {
		if !st.seen[k] || frozen {
			continue
		}
		x := st.busiest[k]
		if cfg.BaselineFactor > 0 && int(st.steps[k]) >= cfg.BaselineWarmup &&
			x >= float64(cfg.BaselineMinPPS) && x >= cfg.BaselineFactor*st.mean[k] {
			continue
		}
		if st.steps[k] == 0 {
			st.mean[k] = x
		} else {
			st.mean[k] += cfg.BaselineAlpha * (x - st.mean[k])
		}
		if st.steps[k] < math.MaxUint16 {
			st.steps[k]++
		}
	}
	st.busiest, st.seen = [floodClasses]float64{}, [floodClasses]bool{}
}

// target returns the subscriber's target (dst, class), making room for it
// when the table is full: the target with the least traffic in its
// window gives way (the first of equals, so the choice is the same on
// every run).
func (st *floodState) target(dst netip.Addr, class uint8, cfg OutboundFloodConfiguration) *floodTarget {
	for _, t := range st.targets {
		if t.dst == dst && t.class == class {
			return t
		}
	}
	t := &floodTarget{dst: dst, class: class, latest: math.MinInt64 / 2, ring: make([]floodBucket, cfg.MinMinutes+1)}
	if len(st.targets) >= cfg.MaxTargets {
		least := 0
		for i, u := range st.targets {
			if u.volume() < st.targets[least].volume() {
				least = i
			}
		}
		st.targets = slices.Delete(st.targets, least, least+1)
	}
	st.targets = append(st.targets, t)
	return t
}
