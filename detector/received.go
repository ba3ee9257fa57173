package detector

import (
	"net/netip"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// received remembers the flows subscribers were sent, so that an outbound
// flow can be told an answer (network.Attempt): per local address and
// port, remote address and port and protocol, the earliest start, the
// newest end and whether the remote ever acknowledged. The flows arrive
// in the subscriber's partition with its outbound ones, in order.
//
// It is one fixed table per engine, not per subscriber, so that a quiet
// subscriber costs nothing and a flood of spoofed inbound flows cannot
// grow memory: 4-way buckets, a new entry taking the slot of the one seen
// longest ago. A flow evicted before its answer arrives leaves the answer
// to the port rule. Keys are hashed with a fixed function, so a replay
// fills the table exactly as the live run did.
type received struct {
	slots  []receivedSlot
	mask   uint64 // buckets - 1
	keepMs int64
}

type receivedSlot struct {
	key     uint64
	startMs int64
	lastSec uint32 // newest end, Unix seconds; 0 = empty
	acked   bool
}

const receivedWays = 4

// receivedKeep is how long a received flow can be answered: an answer
// goes out within seconds, and a long exchange is exported again every
// active timeout (a minute to half an hour), refreshing it.
const receivedKeepMs = 30 * minuteMs

func newReceived(entries int) *received {
	buckets := uint64(1)
	for buckets*receivedWays < uint64(entries) {
		buckets <<= 1
	}
	return &received{slots: make([]receivedSlot, buckets*receivedWays), mask: buckets - 1, keepMs: receivedKeepMs}
}

// receivedKey hashes one direction's endpoints; local and remote are the
// subscriber's side and the other side, whichever way the flow went.
func receivedKey(local, remote netip.Addr, localPort, remotePort uint16, proto uint8) uint64 {
	return mix64(hashAddr(local.Unmap()) ^ mix64(hashAddr(remote.Unmap())+uint64(localPort)<<24|uint64(remotePort)<<8|uint64(proto)))
}

func (r *received) bucket(key uint64) []receivedSlot {
	i := (key & r.mask) * receivedWays
	return r.slots[i : i+receivedWays]
}

// add records an inbound flow (its destination is the subscriber).
func (r *received) add(f *flow.Flow) {
	key := receivedKey(f.DstAddr, f.SrcAddr, f.DstPort, f.SrcPort, f.Proto)
	start, lastSec := f.Start(), uint32(max(f.EndMs/1000, 1))
	acked := f.Proto != flow.ProtoTCP || f.TCPFlags == 0 || f.TCPFlags&flow.TCPAck != 0
	b := r.bucket(key)
	oldest := 0
	for i := range b {
		s := &b[i]
		if s.key == key && s.lastSec != 0 {
			if int64(s.lastSec)*1000+r.keepMs < start {
				*s = receivedSlot{key: key, startMs: start, lastSec: lastSec, acked: acked}
				return
			}
			s.startMs = min(s.startMs, start)
			s.lastSec = max(s.lastSec, lastSec)
			s.acked = s.acked || acked
			return
		}
		if s.lastSec < b[oldest].lastSec {
			oldest = i
		}
	}
	b[oldest] = receivedSlot{key: key, startMs: start, lastSec: lastSec, acked: acked}
}

// lookup returns what was received on the endpoints of the outbound flow f
// recently enough to be answered by it.
func (r *received) lookup(f *flow.Flow) network.Received {
	if r == nil {
		return network.Received{}
	}
	key := receivedKey(f.SrcAddr, f.DstAddr, f.SrcPort, f.DstPort, f.Proto)
	for _, s := range r.bucket(key) {
		if s.key == key && s.lastSec != 0 && int64(s.lastSec)*1000+r.keepMs >= f.Start() {
			return network.Received{Known: true, StartMs: s.startMs, NeverAcked: !s.acked}
		}
	}
	return network.Received{}
}
