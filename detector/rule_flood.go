package detector

import (
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
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
// Only flood-like traffic counts: ICMP (not errors), UDP, other IP
// protocols and TCP without an ACK from the subscriber (SYN floods);
// TCP in which the subscriber acknowledged the target's data (uploads,
// backups) only with established_tcp. A subscriber gets state only once
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
	g := min(int64(cfg.MaxFlowsPerMinute), 60*int64(cfg.MaxPPS), cfg.MaxBPS*60/8/9216)
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

func (floodRule) wants(r *ruleSet, f *flow.Flow) bool {
	_, ok := floodClass(f, r.flood.EstablishedTCP)
	return ok
}

// floodClass tells the kind of traffic of f, and whether it counts.
func floodClass(f *flow.Flow, establishedTCP bool) (uint8, bool) {
	switch f.Proto {
	case 1, 58:
		return floodICMP, !icmpError(f)
	case flow.ProtoTCP:
		if f.TCPFlags != 0 && f.TCPFlags&flow.TCPAck == 0 {
			return floodSYN, true
		}
		return floodTCP, establishedTCP
	case 17:
		return floodUDP, true
	}
	return floodOther, true
}

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
	startMs            int64 // earliest start of the bucket's flows
}

// floodRates is a target's traffic over its window.
type floodRates struct {
	pkts, bytes, flows uint64
	coveredMs          int64
	pps, bps, fpm      float64
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
		if b.minute > t.latest-int64(len(t.ring)) && b.flows > 0 {
			r.pkts += b.pkts
			r.bytes += b.bytes
			r.flows += b.flows
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

func (floodRule) process(e *Engine, c *ruleCtx, f *flow.Flow) (alert.Alert, bool) {
	cfg := c.r.flood
	class, _ := floodClass(f, cfg.EstablishedTCP)
	minute := f.EndMs / minuteMs
	scale := f.Scale()
	pkts := max(f.Packets, 1) * scale
	s := c.s
	if m := uint32(minute); m > s.gate.minute {
		s.gate = floodGate{minute: m}
	}
	s.gate.pkts = uint32(min(uint64(s.gate.pkts)+pkts, math.MaxUint32))
	st, _ := c.state().(*floodState)
	if st == nil {
		if s.gate.pkts < c.r.floodGate {
			return alert.Alert{}, false
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
		return alert.Alert{}, false // older than the target's window
	}
	t.latest = max(t.latest, minute)
	t.lastMs = max(t.lastMs, f.EndMs)
	b := t.at(minute)
	if b.minute != minute || b.flows == 0 {
		*b = floodBucket{minute: minute, startMs: math.MaxInt64}
	}
	start := f.StartMs
	if start <= 0 || start > f.EndMs {
		start = f.EndMs
	}
	b.pkts += pkts
	b.bytes += f.Bytes * scale
	b.flows += scale
	b.startMs = min(b.startMs, start)
	if int(t.nports) < floodMaxPorts && !slices.Contains(t.ports[:t.nports], f.DstPort) {
		t.ports[t.nports] = f.DstPort
		t.nports++
	}

	rt := t.rates()
	if minute == st.minute {
		st.busiest[class] = max(st.busiest[class], rt.pps)
		st.seen[class] = true
	}
	if rt.coveredMs < int64(cfg.MinMinutes)*minuteMs {
		return alert.Alert{}, false
	}
	var trigger string
	score := max(rt.pps/float64(cfg.MaxPPS), rt.bps/float64(cfg.MaxBPS), rt.fpm/float64(cfg.MaxFlowsPerMinute))
	base := st.mean[class]
	switch {
	case rt.pps >= float64(cfg.MaxPPS):
		trigger = TriggerMaxPPS
	case rt.bps >= float64(cfg.MaxBPS):
		trigger = TriggerMaxBPS
	case rt.fpm >= float64(cfg.MaxFlowsPerMinute):
		trigger = TriggerMaxFlows
	case cfg.BaselineFactor > 0 && int(st.steps[class]) >= cfg.BaselineWarmup &&
		rt.pps >= float64(cfg.BaselineMinPPS) && rt.pps >= cfg.BaselineFactor*base:
		trigger, score = TriggerBaseline, rt.pps/max(cfg.BaselineFactor*base, float64(cfg.BaselineMinPPS))
	default:
		return alert.Alert{}, false
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
		BaselinePPS:    round3(base),
		BaselineSteps:  uint64(st.steps[class]),
	}
	return e.emit(inc, state, a, st.overFlows, f.EndMs, cfg.UpdateInterval)
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
