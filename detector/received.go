package detector

import (
	"net/netip"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// received remembers exchanges, so that an outbound flow can be told an
// answer (network.Attempt): per local address and port, remote address
// and port and protocol, the earliest start of the flows the subscriber
// received and whether the remote ever acknowledged, and the earliest
// start of the subscriber's own flows there. Inbound and outbound flows
// arrive in the subscriber's partition, in order.
//
// It is one fixed table per engine, not per subscriber, so that a quiet
// subscriber costs nothing and a flood of spoofed inbound flows cannot
// grow memory: 4-way buckets, a new entry taking the slot of the one seen
// longest ago. A flow evicted before its answer arrives leaves the answer
// to the port rule. Keys are hashed with a fixed function, so a replay
// fills the table exactly as the live run did.
type received struct {
	slots []receivedSlot
	mask  uint64 // buckets - 1
}

type receivedSlot struct {
	key     uint64
	inMs    int64  // earliest start received; 0 = nothing received
	outMs   int64  // earliest start sent; 0 = nothing sent
	lastSec uint32 // newest end either way, Unix seconds; 0 = empty
	acked   bool
}

const receivedWays = 4

// receivedKeepMs is how long an exchange is remembered after its last
// flow: an answer goes out within seconds, and a long exchange is
// exported again every active timeout (a minute to half an hour),
// refreshing it.
const receivedKeepMs = 30 * minuteMs

func newReceived(entries int) *received {
	buckets := uint64(1)
	for buckets*receivedWays < uint64(entries) {
		buckets <<= 1
	}
	return &received{slots: make([]receivedSlot, buckets*receivedWays), mask: buckets - 1}
}

// receivedKey hashes an exchange's endpoints: local is the subscriber's
// side, whichever way the flow went.
func receivedKey(local, remote netip.Addr, localPort, remotePort uint16, proto uint8) uint64 {
	return mix64(hashAddr(local.Unmap()) ^ mix64(hashAddr(remote.Unmap())+uint64(localPort)<<24|uint64(remotePort)<<8|uint64(proto)))
}

// slot returns the exchange's slot, taking over the one seen longest ago
// (or a stale one) for a new exchange.
func (r *received) slot(key uint64, f *flow.Flow) *receivedSlot {
	i := (key & r.mask) * receivedWays
	b := r.slots[i : i+receivedWays]
	oldest := 0
	for i := range b {
		if b[i].key == key && b[i].lastSec != 0 {
			if int64(b[i].lastSec)*1000+receivedKeepMs < f.Start() {
				b[i] = receivedSlot{key: key} // a new exchange on old ports
			}
			return &b[i]
		}
		if b[i].lastSec < b[oldest].lastSec {
			oldest = i
		}
	}
	b[oldest] = receivedSlot{key: key}
	return &b[oldest]
}

func (s *receivedSlot) touch(f *flow.Flow) {
	s.lastSec = max(s.lastSec, uint32(max(f.EndMs/1000, 1)))
}

func earliest(ms, start int64) int64 {
	if ms == 0 {
		return start
	}
	return min(ms, start)
}

// add records an inbound flow (its destination is the subscriber).
func (r *received) add(f *flow.Flow) {
	s := r.slot(receivedKey(f.DstAddr, f.SrcAddr, f.DstPort, f.SrcPort, f.Proto), f)
	s.inMs = earliest(s.inMs, f.Start())
	s.acked = s.acked || f.Proto != flow.ProtoTCP || f.TCPFlags == 0 || f.TCPFlags&flow.TCPAck != 0
	s.touch(f)
}

// exchange returns what is known of the exchange of the outbound flow f,
// as it was before f, and records f in it.
func (r *received) exchange(f *flow.Flow) network.Received {
	s := r.slot(receivedKey(f.SrcAddr, f.DstAddr, f.SrcPort, f.DstPort, f.Proto), f)
	in := network.Received{Known: s.inMs != 0, StartMs: s.inMs, NeverAcked: !s.acked, SentStartMs: s.outMs}
	s.outMs = earliest(s.outMs, f.Start())
	s.touch(f)
	return in
}
