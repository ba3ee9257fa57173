package detector

import (
	"slices"
	"strconv"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// darknetRule is darknet: distinct contacts to the ISP's unused space and
// honeypots (detector.darknet.networks). Nobody has a reason to talk to
// those addresses, so a few distinct ones are enough: the subscriber is
// scanning, on whatever port. The lookup is one longest-prefix match in a
// bart table per flow, cheap for an ISP-sized list of prefixes.
type darknetRule struct{}

// darkMaxDsts caps the exact set of dark destinations per subscriber;
// beyond it the count comes from HyperLogLog sketches (fanout).
const darkMaxDsts = 4096

// darkMaxPorts caps the ports and protocols listed in the evidence.
const darkMaxPorts = 16

func (darknetRule) name() string                      { return alert.KindDarknet }
func (darknetRule) enabled(r *ruleSet) bool           { return r.dark.Len() > 0 }
func (darknetRule) cooldown(r *ruleSet) time.Duration { return r.darknet.Cooldown }
func (darknetRule) keep(r *ruleSet) time.Duration     { return r.darknet.Window }
func (darknetRule) resolved(*subscriber)              {}

func (darknetRule) wants(r *ruleSet, f *flow.Flow, attempt bool) bool {
	return attempt && r.dark.Contains(f.DstAddr.Unmap())
}

// darkState is allocated for a subscriber on its first dark contact.
type darkState struct {
	fanout
	firstMs int64    // first dark contact still in the window
	ports   []uint16 // destination ports seen (ICMP: type<<8|code), sorted
	protos  []uint8  // protocols seen, sorted
}

func (darknetRule) process(e *Engine, c *ruleCtx, f *flow.Flow) *alert.Alert {
	cfg := c.r.darknet
	m, _ := c.state().(*darkState)
	if m == nil {
		m = &darkState{fanout: *newFanout(int(cfg.Window / Bucket))}
		c.setState(m)
	}
	if m.empty() {
		m.firstMs = f.EndMs
		m.ports, m.protos = m.ports[:0], m.protos[:0]
	}
	// Distinct dark addresses are never scaled by sampling: each one was
	// seen. Flows are (f.Scale()).
	if _, ok := m.addFirst(f.DstAddr.Unmap(), f.EndMs/minuteMs, false, f.Scale(), darkMaxDsts, cfg.SampleSize); !ok {
		return nil
	}
	m.firstMs = min(m.firstMs, f.EndMs)
	m.ports = insertSorted(m.ports, f.DstPort, darkMaxPorts)
	m.protos = insertSorted(m.protos, f.Proto, darkMaxPorts)
	distinct, flows, _ := m.window(int(cfg.Window / Bucket))
	if distinct < uint64(cfg.MinDsts) {
		return nil
	}
	inc, state := e.incident(c.addr, c.s, kindDarknet, f.EndMs, m.firstMs)
	a := e.base(c.addr, c.s, inc, kindDarknet, (m.latest+1)*minuteMs, cfg.Window)
	a.DistinctDsts = distinct
	a.Flows = flows
	a.Score = float64(distinct) / float64(cfg.MinDsts)
	a.Evidence.SampleDsts = make([]string, len(m.sample))
	for i, d := range m.sample {
		a.Evidence.SampleDsts[i] = d.String()
	}
	a.Evidence.Threshold = uint64(cfg.MinDsts)
	a.Evidence.Window = cfg.Window.String()
	a.Evidence.Saturated = m.saturated
	a.Evidence.Trigger = TriggerMinDsts
	protos := make([]string, len(m.protos))
	for i, p := range m.protos {
		protos[i] = protoName(p)
	}
	a.Evidence.Darknet = &alert.Darknet{
		Ports:        slices.Clone(m.ports),
		Protocols:    protos,
		FirstContact: time.UnixMilli(m.firstMs).UTC(),
	}
	return some(e.emit(inc, state, a, distinct, f.EndMs, cfg.UpdateInterval))
}

// insertSorted adds v to the sorted set s of at most limit values.
func insertSorted[T uint8 | uint16](s []T, v T, limit int) []T {
	i, found := slices.BinarySearch(s, v)
	if found || len(s) >= limit {
		return s
	}
	return slices.Insert(s, i, v)
}

// protoName names the common IP protocols, others by number.
func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 47:
		return "gre"
	case 58:
		return "ipv6-icmp"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}
