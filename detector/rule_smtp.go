package detector

import (
	"math"
	"net/netip"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// smtpRule is smtp_fanout: distinct TCP/25 destinations per subscriber
// over a short and a slow window, and a sequential test on first contacts.
type smtpRule struct{}

func (smtpRule) name() string                      { return alert.KindSMTPFanout }
func (smtpRule) enabled(r *ruleSet) bool           { return r.smtp.Enabled }
func (smtpRule) cooldown(r *ruleSet) time.Duration { return r.smtp.Cooldown }
func (smtpRule) keep(r *ruleSet) time.Duration     { return r.smtp.SlowWindow }
func (smtpRule) wants(_ *ruleSet, f *flow.Flow, attempt bool) bool {
	return attempt && f.Proto == flow.ProtoTCP && f.DstPort == 25
}

func (smtpRule) resolved(s *subscriber) {
	if m, _ := s.more.state[kindSMTP].(*smtpState); m != nil {
		m.resetWalk()
	}
}

func (smtpRule) process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert {
	r := c.r
	m, _ := c.state().(*smtpState)
	if m == nil {
		m = &smtpState{fanout: *newFanout(r.slowMins)}
		c.setState(m)
	}
	if m.empty() {
		m.firstMs = f.EndMs
	}
	failed := failedAttempt(f)
	first, ok := m.addFirst(f.DstAddr, f.EndMs/minuteMs, failed, f.Scale(), r.smtp.MaxDestinations, r.smtp.SampleSize)
	if !ok {
		// Older than the longest window: it can change no count.
		return nil
	}
	if first && r.smtp.Sequential.Enabled {
		m.step(failed, r.smtp.Sequential)
	}
	return some(e.evaluateSMTP(c.addr, c.s, r, m, f.EndMs))
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

// failedAttempt tells a TCP/25 attempt that never became an SMTP session:
// no ACK from the subscriber, or (when flags are not exported, unsampled)
// three packets or fewer.
func failedAttempt(f *flow.Flow) bool {
	if f.TCPFlags != 0 {
		return f.TCPFlags&flow.TCPAck == 0
	}
	return f.Scale() == 1 && f.Packets <= 3
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

func (e *Engine) evaluateSMTP(addr netip.Addr, s *subscriber, r *ruleSet, m *smtpState, nowMs int64) (alert.Alert, bool) {
	cfg := r.smtp
	// Past the cap each count merges up to an hour of sketches; once the
	// incident is open, once a second of event time is enough.
	if inc := s.incidentOf(kindSMTP); inc != nil && m.saturated && nowMs >= inc.lastAboveMs && nowMs-inc.lastAboveMs < 1000 {
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
	a := e.smtpAlert(addr, s, r, m, inc, trigger, distinct, flows, failed, slowDistinct)
	return e.emit(inc, state, a, distinct, nowMs, cfg.UpdateInterval)
}

func (e *Engine) smtpAlert(addr netip.Addr, s *subscriber, r *ruleSet, m *smtpState, inc *incident, trigger string, distinct, flows, failed, slowDistinct uint64) alert.Alert {
	cfg := r.smtp
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
