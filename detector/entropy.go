package detector

import (
	"math"
	"net/netip"
	"slices"
)

// entropyState keeps what dst_entropy needs of one subscriber: one record
// per (destination, port, minute) with its observed flow count, in arrival
// order, and the subscriber's own moving baseline. It is inline in the
// subscriber and costs 16 bytes per record, so a quiet subscriber with a
// handful of flows stays under 160 bytes; the baseline is allocated only
// at its first step, which needs min_flows.
//
// Past max_records the records are thinned by a hash of the destination
// (adaptive sampling, Flajolet 1990): at level L only destinations whose
// hash has L leading zero bits are kept, so the kept set is a uniform 1/2^L
// sample of destinations with all their flows. Distinct and flow counts are
// scaled back by 2^L; entropies are computed on the kept records, which
// keeps the shape of the distribution (a worm's thousands of addresses on
// one port stay high and low).
type entropyState struct {
	recs []entRec
	// base is the baseline, allocated at its first step: a quiet
	// subscriber never reaches min_flows and needs none.
	base *entropyBaseline
	// since counts flows added since the last evaluation, for the
	// evaluation on arrival; raw is the sum of the records' counts.
	since uint32
	raw   uint32
	// evalMinute is the event-time minute of the last baseline step.
	evalMinute uint32
	evals      uint16 // baseline steps so far
	level      uint8
	hasV6      bool // some destination is IPv6: records hold hashes, no sample
}

// entropyBaseline is the subscriber's moving mean and variance of its
// destination address and port entropies.
type entropyBaseline struct {
	mean [2]float32 // addresses, ports
	vari [2]float32
}

// baselineMean is the baseline's mean, zero before its first step.
func (s *entropyState) baselineMean() [2]float32 {
	if s.base == nil {
		return [2]float32{}
	}
	return s.base.mean
}

type entRec struct {
	minute uint32 // Unix minute
	dst    uint32 // IPv4 address, or a hash of an IPv6 one
	n      uint32 // observed flows (not scaled by sampling)
	port   uint16
}

func dst32(a netip.Addr) uint32 {
	if a.Is4() {
		b := a.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	return uint32(hashAddr(a))
}

func (s *entropyState) kept(dst uint32) bool {
	return s.level == 0 || mix64(uint64(dst))>>(64-uint(s.level)) == 0
}

// add records one flow. Flows of the same minute to the same destination
// and port share a record when it is among the last few.
func (s *entropyState) add(dst uint32, port uint16, minute uint32, oldest uint32, maxRecords int) {
	s.since++
	if !s.kept(dst) {
		return
	}
	for i := len(s.recs) - 1; i >= 0 && i >= len(s.recs)-8; i-- {
		r := &s.recs[i]
		if r.minute == minute && r.dst == dst && r.port == port {
			r.n++
			s.raw++
			return
		}
	}
	for len(s.recs) >= maxRecords {
		s.expire(oldest)
		if len(s.recs) < maxRecords*3/4 {
			break
		}
		s.level++
		s.thin()
		if !s.kept(dst) {
			return
		}
	}
	s.recs = append(s.recs, entRec{minute: minute, dst: dst, n: 1, port: port})
	s.raw++
}

func (s *entropyState) thin() {
	out := s.recs[:0]
	s.raw = 0
	for _, r := range s.recs {
		if s.kept(r.dst) {
			out = append(out, r)
			s.raw += r.n
		}
	}
	s.recs = out
}

// expire drops records before oldest; with none left, thinning restarts.
func (s *entropyState) expire(oldest uint32) {
	if len(s.recs) == 0 {
		return
	}
	out := s.recs[:0]
	s.raw = 0
	for _, r := range s.recs {
		if r.minute >= oldest {
			out = append(out, r)
			s.raw += r.n
		}
	}
	clear(s.recs[len(out):])
	s.recs = out
	switch {
	case len(s.recs) == 0:
		s.recs = nil // give the memory back
		s.level = 0
	case cap(s.recs) > 64 && len(s.recs) < cap(s.recs)/4:
		s.recs = append([]entRec(nil), s.recs...)
	}
}

// scaledFlows is how many flows the records stand for, sampling and
// thinning undone.
func (s *entropyState) scaledFlows(sampling uint32) uint64 {
	return uint64(s.raw) << s.level * uint64(max(sampling, 1))
}

// entropyStats is one evaluation of the window.
type entropyStats struct {
	flows, rawFlows     uint64 // flows scaled by sampling and thinning; as observed
	distinct, ports     uint64 // scaled by thinning
	addrH, portH        float64
	topPort             uint16
	topPortShare        float64
	sample              []string
	firstMinute         uint32
	thinning, samplingN uint64
}

// scratch holds maps reused across evaluations, to spare the allocator.
type scratch struct {
	dsts   map[uint32]uint64
	ports  map[uint16]uint64
	counts []uint64
}

func (s *entropyState) evaluate(sc *scratch, scale uint64, sampleSize int) entropyStats {
	clear(sc.dsts)
	clear(sc.ports)
	st := entropyStats{thinning: 1 << s.level, samplingN: scale, firstMinute: math.MaxUint32}
	for _, r := range s.recs {
		if _, seen := sc.dsts[r.dst]; !seen && len(st.sample) < sampleSize && !s.hasV6 {
			st.sample = append(st.sample, netip.AddrFrom4([4]byte{byte(r.dst >> 24), byte(r.dst >> 16), byte(r.dst >> 8), byte(r.dst)}).String())
		}
		sc.dsts[r.dst] += uint64(r.n)
		sc.ports[r.port] += uint64(r.n)
		st.rawFlows += uint64(r.n)
		st.firstMinute = min(st.firstMinute, r.minute)
	}
	if st.rawFlows == 0 {
		return st
	}
	st.flows = st.rawFlows * st.thinning * scale
	st.distinct = uint64(len(sc.dsts)) * st.thinning
	st.ports = uint64(len(sc.ports))
	st.addrH = normalisedEntropy(sc, sc.dsts, st.rawFlows)
	st.portH = normalisedEntropy(sc, sc.ports, st.rawFlows)
	var top uint64
	for p, n := range sc.ports {
		if n > top || (n == top && p < st.topPort) {
			top, st.topPort = n, p
		}
	}
	st.topPortShare = float64(top) / float64(st.rawFlows)
	return st
}

// normalisedEntropy is H/log2(total): 1 when every flow goes to a
// different value, 0 when all go to one. Dividing by the flow count rather
// than the number of distinct values keeps "two servers, evenly" low.
// The terms are added in sorted order: floating-point addition depends on
// the order, and map order differs from run to run, which would make a
// replay's scores differ in the last digit.
func normalisedEntropy[K comparable](sc *scratch, counts map[K]uint64, total uint64) float64 {
	if total < 2 {
		return 0
	}
	sc.counts = sc.counts[:0]
	for _, n := range counts {
		sc.counts = append(sc.counts, n)
	}
	slices.Sort(sc.counts)
	h := 0.0
	for _, n := range sc.counts {
		p := float64(n) / float64(total)
		h -= p * math.Log2(p)
	}
	return h / math.Log2(float64(total))
}

// departure compares an evaluation with the baseline, then (unless frozen
// by an open incident) steps the baseline. It returns the largest
// departure found, in entropy units, and whether it crosses the limit.
func (s *entropyState) departure(st entropyStats, cfg DstEntropyConfiguration, frozen bool) (delta float64, over bool) {
	h := [2]float64{st.addrH, st.portH}
	if int(s.evals) >= cfg.BaselineWarmup && cfg.BaselineDeviation > 0 && s.base != nil {
		for i := range h {
			d := math.Abs(h[i] - float64(s.base.mean[i]))
			limit := max(cfg.BaselineDeviation*math.Sqrt(float64(s.base.vari[i])), cfg.BaselineMinDelta)
			if d > delta {
				delta = d
			}
			if d > limit {
				over = true
			}
		}
	}
	if frozen {
		return delta, over
	}
	a := cfg.BaselineAlpha
	first := s.base == nil
	if first {
		s.base = &entropyBaseline{}
	}
	b := s.base
	for i := range h {
		if first {
			b.mean[i], b.vari[i] = float32(h[i]), 0
			continue
		}
		// West's incremental exponentially weighted mean and variance.
		diff := h[i] - float64(b.mean[i])
		incr := a * diff
		b.mean[i] = float32(float64(b.mean[i]) + incr)
		b.vari[i] = float32((1 - a) * (float64(b.vari[i]) + diff*incr))
	}
	if s.evals < math.MaxUint16 {
		s.evals++
	}
	return delta, over
}
