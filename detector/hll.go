package detector

import (
	"math"
	"math/bits"
	"net/netip"
)

// hllPrecision: 2^10 one-byte registers, 1 KiB per sketch, standard error
// 1.04/sqrt(1024) = 3.3%. The sketch is only used once a subscriber has
// contacted more destinations than max_destinations, far past every
// threshold, where a few percent no longer change the decision.
const hllPrecision = 10

// hll is a HyperLogLog sketch (Flajolet et al. 2007, with the small-range
// linear-counting correction of Heule et al. 2013). It is our own because
// it is forty lines, needs exactly add/merge/estimate over a fixed,
// process-independent hash (a replay must count as the live run did), and
// the maintained libraries (axiomhq/hyperloglog) bring sparse encodings
// and a seeded hash we would have to work around.
type hll struct{ reg [1 << hllPrecision]uint8 }

func (h *hll) add(x uint64) {
	idx := x >> (64 - hllPrecision)
	rank := uint8(bits.LeadingZeros64(x<<hllPrecision|1<<(hllPrecision-1))) + 1
	if rank > h.reg[idx] {
		h.reg[idx] = rank
	}
}

func (h *hll) merge(o *hll) {
	for i, r := range o.reg {
		if r > h.reg[i] {
			h.reg[i] = r
		}
	}
}

func (h *hll) estimate() uint64 {
	const m = float64(1 << hllPrecision)
	sum, zeros := 0.0, 0
	for _, r := range h.reg {
		sum += 1 / float64(uint64(1)<<r)
		if r == 0 {
			zeros++
		}
	}
	alpha := 0.7213 / (1 + 1.079/m)
	e := alpha * m * m / sum
	if e <= 2.5*m && zeros > 0 {
		e = m * math.Log(m/float64(zeros))
	}
	return uint64(e + 0.5)
}

// hashAddr is a fixed 64-bit hash of an address (splitmix64 finaliser over
// its two halves): the same in every process, unlike hash/maphash.
func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
	lo := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
		uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
	return mix64(mix64(hi) ^ lo)
}

func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
