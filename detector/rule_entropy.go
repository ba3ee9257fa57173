package detector

import (
	"math"
	"net/netip"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// entropyRule is dst_entropy: normalised entropy of destination addresses
// and ports per subscriber, the worm pattern and departures from the
// subscriber's own baseline. Its records (entropy.go) are inline in the
// subscriber: every subscriber with traffic has some.
type entropyRule struct{}

func (entropyRule) name() string                      { return alert.KindDstEntropy }
func (entropyRule) enabled(r *ruleSet) bool           { return r.entropy.Enabled }
func (entropyRule) cooldown(r *ruleSet) time.Duration { return r.entropy.Cooldown }
func (entropyRule) keep(r *ruleSet) time.Duration     { return r.entropy.Window }
func (entropyRule) resolved(*subscriber)              {}

// wants every attempt.
func (entropyRule) wants(_ *ruleSet, _ *flow.Flow, attempt bool) bool { return attempt }

func (entropyRule) process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert {
	s, r := c.s, c.r
	if !f.DstAddr.Is4() {
		s.ent.hasV6 = true
	}
	oldest := s.lastMs/minuteMs - int64(r.entMins) + 1
	s.ent.add(dst32(f.DstAddr), f.DstPort, uint32(f.EndMs/minuteMs), uint32(oldest), r.entropy.MaxRecords)
	// The first flow of each event-time minute evaluates the window
	// and steps the baseline: once a minute, spread over the minute
	// instead of a sweep that would stall on every busy subscriber at
	// once. Between those, evaluate on arrival so that a worm is
	// flagged within seconds; waiting for new flows as many as a
	// quarter of the records keeps the cost per flow constant.
	now := uint32(s.lastMs / minuteMs)
	step := s.ent.evalMinute != now && s.ent.scaledFlows(s.sampling) >= uint64(r.entropy.MinFlows)
	if !step && s.ent.since < uint32(max(r.entropy.MinFlows/4, len(s.ent.recs)/4)) {
		return nil
	}
	if step {
		s.ent.evalMinute = now
	}
	return some(e.evaluateEntropy(c.addr, s, r, f.EndMs, step))
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
	open := s.incidentOf(kindEntropy) != nil
	baseMean := s.ent.baselineMean()
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
