package detector

import (
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// relayRule is relay_abuse: connections (and bytes) per subscriber to the
// ISP's own mail submission servers, against a ceiling and against the
// subscriber's own moving baseline. A spam bot that has stolen its
// owner's SMTP AUTH credentials sends through the ISP's relay on 587 or
// 465, where a port-25 block does not reach it and smtp_fanout sees a
// single destination.
type relayRule struct{}

// relayMaxListed caps the relays and ports listed in the evidence.
const relayMaxListed = 8

// Triggers of relay_abuse and outbound_flood.
const (
	TriggerMaxConnections = "max_connections"
	TriggerMaxBytes       = "max_bytes"
	TriggerMinDsts        = "min_dsts"
	TriggerMaxPPS         = "max_pps"
	TriggerMaxBPS         = "max_bps"
	TriggerMaxFlows       = "max_flows_per_minute"
)

func (relayRule) name() string                      { return alert.KindRelayAbuse }
func (relayRule) enabled(r *ruleSet) bool           { return r.relays.Len() > 0 }
func (relayRule) cooldown(r *ruleSet) time.Duration { return r.relay.Cooldown }
func (relayRule) keep(r *ruleSet) time.Duration     { return r.relay.Window }
func (relayRule) resolved(*subscriber)              {}

// wants connection attempts: a sampled record stands for Scale attempts
// only when it holds the SYN (network.Attempt), not the middle of a
// session, which would count one connection many times.
func (relayRule) wants(r *ruleSet, f *flow.Flow, attempt bool) bool {
	return attempt && f.Proto == flow.ProtoTCP && slices.Contains(r.relay.Ports, f.DstPort) && r.relays.Contains(f.DstAddr.Unmap())
}

// relayState is allocated for a subscriber on its first connection to a
// relay.
type relayState struct {
	ring    []relayBucket // one per minute of the window
	latest  int64         // newest minute seen
	firstMs int64         // first connection still in the window
	relays  []netip.Addr  // relays used, in first-use order
	ports   []uint16      // their ports, sorted
	// The baseline: connections per minute, exponentially weighted, over
	// every minute since the first connection (quiet ones included).
	mean, vari float64
	steps      uint32
	nextMinute int64 // first minute not yet learned
}

type relayBucket struct {
	minute       int64
	conns, bytes uint64
}

func (m *relayState) at(minute int64) *relayBucket {
	i := minute % int64(len(m.ring))
	if i < 0 {
		i += int64(len(m.ring))
	}
	return &m.ring[i]
}

// window sums the buckets of the window ending at the newest minute.
func (m *relayState) window() (conns, bytes uint64) {
	for _, b := range m.ring {
		if b.minute > m.latest-int64(len(m.ring)) {
			conns += b.conns
			bytes += b.bytes
		}
	}
	return conns, bytes
}

// learn steps the baseline over the minutes before minute, each with its
// connections (0 for a minute without any); frozen, it only skips them.
func (m *relayState) learn(minute int64, alpha float64, frozen bool) {
	n := minute - m.nextMinute
	if n <= 0 {
		return
	}
	for i := int64(0); i < min(n, 1000) && !frozen; i++ {
		mm := m.nextMinute + i
		x := 0.0
		if b := m.at(mm); b.minute == mm {
			x = float64(b.conns)
		}
		if m.steps == 0 {
			m.mean, m.vari = x, 0
		} else {
			// West's incremental exponentially weighted mean and variance.
			diff := x - m.mean
			incr := alpha * diff
			m.mean += incr
			m.vari = (1 - alpha) * (m.vari + diff*incr)
		}
		m.steps++
	}
	if !frozen && n > 1000 {
		// A thousand quiet minutes have taken the mean to nothing.
		m.steps = uint32(min(uint64(m.steps)+uint64(n-1000), math.MaxUint32))
	}
	m.nextMinute = minute
}

func (relayRule) process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert {
	cfg := c.r.relay
	mins := int(cfg.Window / Bucket)
	minute := f.EndMs / minuteMs
	m, _ := c.state().(*relayState)
	if m == nil {
		m = &relayState{ring: make([]relayBucket, mins), latest: minute, firstMs: f.EndMs, nextMinute: minute}
		c.setState(m)
	}
	if minute <= m.latest-int64(mins) {
		return nil // older than the window: it changes nothing
	}
	open := c.s.incidentOf(kindRelay) != nil
	m.learn(minute, cfg.BaselineAlpha, open)
	if minute > m.latest {
		if conns, _ := m.window(); conns == 0 || minute-m.latest >= int64(mins) {
			m.firstMs = f.EndMs
			m.relays, m.ports = m.relays[:0], m.ports[:0]
		}
		m.latest = minute
	}
	b := m.at(minute)
	if b.minute != minute {
		*b = relayBucket{minute: minute}
	}
	b.conns = flow.SaturatingAdd(b.conns, f.Scale())
	b.bytes = flow.SaturatingAdd(b.bytes, f.ScaledBytes())
	m.firstMs = min(m.firstMs, f.EndMs)
	relay := f.DstAddr.Unmap()
	if !slices.Contains(m.relays, relay) && len(m.relays) < relayMaxListed {
		m.relays = append(m.relays, relay)
	}
	m.ports = insertSorted(m.ports, f.DstPort, relayMaxListed)

	conns, bytes := m.window()
	expected := float64(mins) * m.mean
	limit := expected + cfg.BaselineDeviation*math.Sqrt(float64(mins)*m.vari)
	var trigger string
	score := float64(conns) / float64(cfg.MaxConnections)
	switch {
	case conns >= uint64(cfg.MaxConnections):
		trigger = TriggerMaxConnections
	case cfg.MaxBytes > 0 && bytes >= uint64(cfg.MaxBytes):
		trigger, score = TriggerMaxBytes, float64(bytes)/float64(cfg.MaxBytes)
	case int(m.steps) >= cfg.BaselineWarmup && cfg.BaselineDeviation > 0 &&
		conns >= uint64(cfg.BaselineMinConnections) && float64(conns) > limit:
		trigger, score = TriggerBaseline, float64(conns)/max(limit, float64(cfg.BaselineMinConnections), 1)
	default:
		return nil
	}
	inc, state := e.incident(c.addr, c.s, kindRelay, f.EndMs, m.firstMs)
	a := e.base(c.addr, c.s, inc, kindRelay, (m.latest+1)*minuteMs, cfg.Window)
	a.DistinctDsts = uint64(len(m.relays))
	a.Flows = conns
	a.Score = score
	a.Evidence.Threshold = uint64(cfg.MaxConnections)
	a.Evidence.Window = cfg.Window.String()
	a.Evidence.Trigger = trigger
	relays := make([]string, len(m.relays))
	for i, r := range m.relays {
		relays[i] = r.String()
	}
	a.Evidence.SampleDsts = relays
	a.Evidence.Relay = &alert.Relay{
		Connections:         conns,
		Bytes:               bytes,
		Relays:              relays,
		Ports:               slices.Clone(m.ports),
		BaselineConnections: round3(expected),
		BaselineStdDev:      round3(math.Sqrt(float64(mins) * m.vari)),
		BaselineSteps:       uint64(m.steps),
	}
	return some(e.emit(inc, state, a, conns, f.EndMs, cfg.UpdateInterval))
}
