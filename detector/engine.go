package detector

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// Engine holds the per-subscriber windows and incidents of one detector
// and turns flows into alerts. It does no I/O and reads no clock: time is
// the flows' event time only, so a replay yields the alerts of the live run.
type Engine struct {
	config      Configuration
	windowMins  int
	slowMins    int
	subscribers map[netip.Addr]*subscriber
	watermark   int64 // newest flow end time seen, Unix ms
	lastSweep   int64 // minute of the last eviction sweep
	stats       EngineStats
}

// EngineStats counts what the engine did, for metrics.
type EngineStats struct {
	Flows, LateFlows, InvalidFlows, AllowListed, TooOld uint64
}

type subscriber struct {
	smtp      *fanout
	firstMs   int64 // first TCP/25 flow still in the long window
	lastMs    int64 // last flow of any kind
	exporter  netip.Addr
	incidents map[string]*incident // by kind
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

// NewEngine returns an engine with no state.
func NewEngine(config Configuration) *Engine {
	return &Engine{
		config:      config,
		windowMins:  int(config.SMTPFanout.Window / Bucket),
		slowMins:    int(config.SMTPFanout.SlowWindow / Bucket),
		subscribers: map[netip.Addr]*subscriber{},
	}
}

// Stats returns the counters so far.
func (e *Engine) Stats() EngineStats { return e.stats }

// Watermark is the engine's event time, Unix ms.
func (e *Engine) Watermark() int64 { return e.watermark }

// Subscribers is the number of subscribers with state.
func (e *Engine) Subscribers() int { return len(e.subscribers) }

func (e *Engine) allowListed(a netip.Addr) bool {
	for _, p := range e.config.AllowList {
		if p.Contains(a) {
			return true
		}
	}
	return false
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

// Process accounts one flow whose source is a subscriber and returns the
// alerts it causes, including those of incidents its event time resolves.
func (e *Engine) Process(f *flow.Flow) []alert.Alert {
	e.stats.Flows++
	if f.EndMs <= 0 || !f.SrcAddr.IsValid() {
		e.stats.InvalidFlows++
		return nil
	}
	if f.EndMs < e.watermark-e.config.AllowedLateness.Milliseconds() {
		e.stats.LateFlows++
		return nil
	}
	var out []alert.Alert
	if f.EndMs > e.watermark {
		out = e.Advance(f.EndMs)
	}
	if e.allowListed(f.SrcAddr) {
		e.stats.AllowListed++
		return out
	}
	if f.Proto != flow.ProtoTCP || f.DstPort != 25 {
		// Only TCP/25 feeds smtp_fanout so far; other traffic keeps no state.
		return out
	}
	s := e.subscribers[f.SrcAddr]
	if s == nil {
		s = &subscriber{smtp: newFanout(e.slowMins), firstMs: f.EndMs, incidents: map[string]*incident{}}
		e.subscribers[f.SrcAddr] = s
	}
	if s.smtp.empty() {
		s.firstMs = f.EndMs
	}
	s.lastMs = max(s.lastMs, f.EndMs)
	s.exporter = f.Exporter
	cfg := e.config.SMTPFanout
	if !s.smtp.add(f.DstAddr, f.EndMs/Bucket.Milliseconds(), failedAttempt(f), f.Scale(), cfg.MaxDestinations, cfg.SampleSize) {
		e.stats.TooOld++
		return out
	}
	if a, ok := e.evaluateSMTP(f.SrcAddr, s, f.EndMs); ok {
		out = append(out, a)
	}
	return out
}

func (e *Engine) evaluateSMTP(addr netip.Addr, s *subscriber, nowMs int64) (alert.Alert, bool) {
	cfg := e.config.SMTPFanout
	distinct, flows, failed := s.smtp.window(e.windowMins)
	slowDistinct, _, _ := s.smtp.window(e.slowMins)
	if distinct < uint64(cfg.Threshold) && slowDistinct < uint64(cfg.SlowThreshold) {
		return alert.Alert{}, false
	}
	inc := s.incidents[alert.KindSMTPFanout]
	state := alert.StateUpdate
	if inc == nil {
		inc = &incident{
			id:          incidentID(addr, alert.KindSMTPFanout, nowMs),
			firstSeenMs: s.firstMs,
		}
		s.incidents[alert.KindSMTPFanout] = inc
		state = alert.StateOpen
	}
	inc.lastAboveMs = nowMs
	inc.lastSeenMs = max(inc.lastSeenMs, s.lastMs)
	a := e.smtpAlert(addr, s, inc, distinct, flows, failed, slowDistinct)
	inc.last = a
	if state == alert.StateUpdate &&
		(distinct <= inc.lastEmitDistinct || nowMs-inc.lastEmitMs < cfg.UpdateInterval.Milliseconds()) {
		return alert.Alert{}, false
	}
	a.State = state
	inc.lastEmitMs = nowMs
	inc.lastEmitDistinct = distinct
	return a, true
}

func (e *Engine) smtpAlert(addr netip.Addr, s *subscriber, inc *incident, distinct, flows, failed, slowDistinct uint64) alert.Alert {
	cfg := e.config.SMTPFanout
	windowEnd := (s.smtp.latest + 1) * Bucket.Milliseconds()
	share := 0.0
	if flows > 0 {
		share = float64(failed) / float64(flows)
	}
	sample := make([]string, len(s.smtp.sample))
	for i, d := range s.smtp.sample {
		sample[i] = d.String()
	}
	return alert.Alert{
		ID:           inc.id,
		Kind:         alert.KindSMTPFanout,
		SubscriberIP: addr.String(),
		WindowStart:  time.UnixMilli(windowEnd - cfg.Window.Milliseconds()).UTC(),
		WindowEnd:    time.UnixMilli(windowEnd).UTC(),
		FirstSeen:    time.UnixMilli(inc.firstSeenMs).UTC(),
		LastSeen:     time.UnixMilli(inc.lastSeenMs).UTC(),
		DistinctDsts: distinct,
		Flows:        flows,
		// Past the threshold, every failed attempt adds weight: a zombie
		// hammering dead or refusing MX hosts scores up to twice as high as
		// a busy but successful sender of the same fan-out.
		Score:    float64(distinct) / float64(cfg.Threshold) * (1 + share),
		Exporter: s.exporter.String(),
		Evidence: alert.Evidence{
			SampleDsts:        sample,
			FailedAttempts:    failed,
			CompletedAttempts: flows - failed,
			FailedShare:       share,
			Threshold:         uint64(cfg.Threshold),
			Window:            cfg.Window.String(),
			DistinctDsts60m:   slowDistinct,
			Saturated:         s.smtp.saturated,
		},
	}
}

// incidentID is stable for an incident and the same in a replay: it hashes
// the subscriber, the kind and the event time the incident opened.
func incidentID(addr netip.Addr, kind string, openedMs int64) string {
	h := sha256.Sum256([]byte(addr.String() + "|" + kind + "|" + strconv.FormatInt(openedMs, 10)))
	return hex.EncodeToString(h[:12])
}

// Advance moves event time to nowMs: incidents quiet for the cool-down are
// resolved and subscribers with nothing left in their windows are evicted.
func (e *Engine) Advance(nowMs int64) []alert.Alert {
	if nowMs <= e.watermark {
		return nil
	}
	e.watermark = nowMs
	minute := nowMs / Bucket.Milliseconds()
	if minute == e.lastSweep {
		return nil
	}
	e.lastSweep = minute
	return e.sweep(nowMs)
}

// Flush resolves every open incident, as at the end of a replayed capture.
func (e *Engine) Flush() []alert.Alert {
	var out []alert.Alert
	for addr, s := range e.subscribers {
		for kind, inc := range s.incidents {
			out = append(out, resolved(inc))
			delete(s.incidents, kind)
		}
		delete(e.subscribers, addr)
	}
	sortAlerts(out)
	return out
}

func (e *Engine) sweep(nowMs int64) []alert.Alert {
	var out []alert.Alert
	cooldown := e.config.SMTPFanout.Cooldown.Milliseconds()
	keep := e.config.SMTPFanout.SlowWindow.Milliseconds() + e.config.AllowedLateness.Milliseconds()
	for addr, s := range e.subscribers {
		for kind, inc := range s.incidents {
			if nowMs-inc.lastAboveMs >= cooldown {
				out = append(out, resolved(inc))
				delete(s.incidents, kind)
			}
		}
		if len(s.incidents) == 0 && nowMs-s.lastMs > keep {
			delete(e.subscribers, addr)
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
		return cmp.Or(strings.Compare(a.SubscriberIP, b.SubscriberIP), strings.Compare(a.Kind, b.Kind))
	})
}
