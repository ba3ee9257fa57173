package identity

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Table holds bindings and answers who held an address at a time. Records
// are applied in log order (Apply), so that every instance following the
// same topic holds the same table. It is bounded: each address keeps its
// latest maxHistory holdings, and past maxBindings in all a new address is
// refused (counted by the caller) until Prune makes room. Safe for
// concurrent use.
type Table struct {
	mu       sync.RWMutex
	prefixes map[netip.Prefix][]Binding
	// lengths lists the prefix lengths in use per family, longest first,
	// so that a lookup tries only those.
	lengths4, lengths6 []int
	lengthUse          map[int]int // key: bits, +1000 for IPv6
	// blocks holds CGNAT port blocks per public address and block start;
	// starts lists each address's block starts, sorted.
	blocks    map[blockKey][]Binding
	starts    map[netip.Addr][]uint16
	customers map[string]map[netip.Prefix]struct{}

	size        atomic.Int64 // bindings held
	maxBindings int
	maxHistory  int
	slackMs     int64
}

type blockKey struct {
	addr netip.Addr
	lo   uint16
}

// Table bounds.
const (
	DefaultMaxBindings = 8_000_000
	DefaultMaxHistory  = 8
)

// NewTable returns an empty table holding at most maxBindings bindings and
// maxHistory per address or port block (defaults when <= 0).
func NewTable(maxBindings, maxHistory int) *Table {
	if maxBindings <= 0 {
		maxBindings = DefaultMaxBindings
	}
	if maxHistory <= 0 {
		maxHistory = DefaultMaxHistory
	}
	return &Table{
		prefixes: map[netip.Prefix][]Binding{}, lengthUse: map[int]int{},
		blocks: map[blockKey][]Binding{}, starts: map[netip.Addr][]uint16{},
		customers:   map[string]map[netip.Prefix]struct{}{},
		maxBindings: maxBindings, maxHistory: maxHistory, slackMs: DefaultClockSlack.Milliseconds(),
	}
}

// DefaultClockSlack is how far before a holding's start a flow may be
// timed and still be its holder's: NetFlow v9 and IPFIX headers carry
// whole seconds, so an exporter's flow times run up to a second behind,
// and a NAS's clock is not the router's.
const DefaultClockSlack = 5 * time.Second

// SetClockSlack sets how far before a holding's start a flow may be timed
// and still resolve to it, when no holding covers the flow's time.
func (t *Table) SetClockSlack(d time.Duration) { t.slackMs = max(d.Milliseconds(), 0) }

// Len is the number of bindings held.
func (t *Table) Len() int { return int(t.size.Load()) }

// Applied is what one record changed.
type Applied struct {
	// Stored is false when the record was refused (table full) or
	// changed nothing (a duplicate).
	Stored bool
	// Ended lists holdings the record ended: someone else started on the
	// address, or a port block's range.
	Ended []Binding
	// Customers whose holdings changed, b's own first.
	Customers []string
}

// Apply takes one record in log order: it adds a holding, or updates one
// it already has (renewal, stop). A holding that starts on an address ends
// every other holding still open there, as "reassigned"; one that started
// before a later holder's start ends at it.
func (t *Table) Apply(b Binding) Applied {
	b.Prefix = b.Prefix.Masked()
	t.mu.Lock()
	defer t.mu.Unlock()
	if b.Source == SourceCGNAT {
		return t.applyBlock(b)
	}
	h := t.prefixes[b.Prefix]
	h, res := t.merge(h, b, func(o *Binding) bool { return true })
	if !res.Stored {
		return res
	}
	if len(t.prefixes[b.Prefix]) == 0 && len(h) > 0 {
		t.useLength(b.Prefix, 1)
	}
	t.prefixes[b.Prefix] = h
	t.index(b.Customer, b.Prefix)
	return res
}

// merge applies b to the holdings h of one address or block; overlaps
// tells which other holdings b competes with.
func (t *Table) merge(h []Binding, b Binding, overlaps func(*Binding) bool) ([]Binding, Applied) {
	res := Applied{Customers: []string{b.Customer}}
	for i := range h {
		if h[i].same(&b) {
			// The writer applies its records at once and again when it
			// reads them back: an older record of a holding changes
			// nothing.
			if h[i] == b || b.UpdatedMs < h[i].UpdatedMs {
				return h, Applied{}
			}
			h[i] = b
			res.Stored = true
			t.endOthers(h, i, overlaps, &res)
			return h, res
		}
	}
	if len(h) == 0 && int(t.size.Load()) >= t.maxBindings {
		return h, Applied{}
	}
	at, _ := slices.BinarySearchFunc(h, b.StartMs, func(x Binding, start int64) int {
		if x.StartMs <= start {
			return -1
		}
		return 1
	})
	h = slices.Insert(h, at, b)
	t.size.Add(1)
	res.Stored = true
	t.endOthers(h, at, overlaps, &res)
	if len(h) > t.maxHistory {
		drop := len(h) - t.maxHistory
		for _, old := range h[:drop] {
			t.unindex(old.Customer, old.Prefix, h[drop:])
		}
		h = slices.Delete(h, 0, drop)
		t.size.Add(int64(-drop))
	}
	return h, res
}

// endOthers ends the holdings h[i] competes with: an earlier one still
// open at h[i]'s start ends there, and h[i] itself ends at the start of
// a later one.
func (t *Table) endOthers(h []Binding, i int, overlaps func(*Binding) bool, res *Applied) {
	b := &h[i]
	for j := range h {
		o := &h[j]
		if j == i || !overlaps(o) {
			continue
		}
		switch {
		case o.StartMs <= b.StartMs && (o.EndMs == 0 || o.EndMs > b.StartMs):
			o.EndMs, o.EndReason = max(b.StartMs, o.StartMs), EndReassigned
			res.Ended = append(res.Ended, *o)
			res.Customers = appendCustomer(res.Customers, o.Customer)
		case o.StartMs > b.StartMs && (b.EndMs == 0 || b.EndMs > o.StartMs):
			b.EndMs, b.EndReason = o.StartMs, EndReassigned
		}
	}
}

func appendCustomer(list []string, c string) []string {
	if c == "" || slices.Contains(list, c) {
		return list
	}
	return append(list, c)
}

func (t *Table) applyBlock(b Binding) Applied {
	k := blockKey{b.Prefix.Addr(), b.PortLo}
	h := t.blocks[k]
	fresh := len(h) == 0
	// A block is also ended by an allocation under another start that
	// overlaps its range; those live under other keys and are few.
	for _, lo := range t.starts[k.addr] {
		if lo == b.PortLo {
			continue
		}
		other := t.blocks[blockKey{k.addr, lo}]
		for j := range other {
			o := &other[j]
			if o.PortLo <= b.PortHi && b.PortLo <= o.PortHi && o.StartMs <= b.StartMs && (o.EndMs == 0 || o.EndMs > b.StartMs) {
				o.EndMs, o.EndReason = max(b.StartMs, o.StartMs), EndReassigned
			}
		}
	}
	h, res := t.merge(h, b, func(*Binding) bool { return true })
	if !res.Stored {
		return res
	}
	t.blocks[k] = h
	if fresh {
		s := t.starts[k.addr]
		at, _ := slices.BinarySearch(s, b.PortLo)
		t.starts[k.addr] = slices.Insert(s, at, b.PortLo)
	}
	res.Customers = nil
	return res
}

func (t *Table) useLength(p netip.Prefix, delta int) {
	key := p.Bits()
	if p.Addr().Is6() {
		key += 1000
	}
	before := t.lengthUse[key]
	after := before + delta
	if after > 0 {
		t.lengthUse[key] = after
	} else {
		delete(t.lengthUse, key)
	}
	if (before > 0) == (after > 0) {
		return
	}
	t.lengths4, t.lengths6 = t.lengths4[:0], t.lengths6[:0]
	for k := range t.lengthUse {
		if k >= 1000 {
			t.lengths6 = append(t.lengths6, k-1000)
		} else {
			t.lengths4 = append(t.lengths4, k)
		}
	}
	slices.SortFunc(t.lengths4, func(a, b int) int { return b - a })
	slices.SortFunc(t.lengths6, func(a, b int) int { return b - a })
}

func (t *Table) index(customer string, p netip.Prefix) {
	if customer == "" {
		return
	}
	m := t.customers[customer]
	if m == nil {
		m = map[netip.Prefix]struct{}{}
		t.customers[customer] = m
	}
	m[p] = struct{}{}
}

// unindex forgets that customer held p unless rest still holds a record of
// it.
func (t *Table) unindex(customer string, p netip.Prefix, rest []Binding) {
	if customer == "" || slices.ContainsFunc(rest, func(b Binding) bool { return b.Customer == customer }) {
		return
	}
	if m := t.customers[customer]; m != nil {
		delete(m, p)
		if len(m) == 0 {
			delete(t.customers, customer)
		}
	}
}

// Resolve returns who held addr (and, for a CGNAT public address, port)
// at t (Unix ms): the customer of the longest prefix holding addr then,
// through the port block's inside address behind a CGNAT.
func (t *Table) Resolve(addr netip.Addr, port uint16, tMs int64) (Resolution, bool) {
	if t == nil || t.size.Load() == 0 {
		return Resolution{}, false
	}
	addr = addr.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	var res Resolution
	if s := t.starts[addr]; len(s) > 0 {
		if in, ok := t.block(addr, s, port, tMs); ok {
			res.Inside, addr = in, in
		}
	}
	if b, ok := t.holder(addr, tMs); ok {
		res.Customer, res.Binding = b.Customer, b
	}
	return res, res.Customer != "" || res.Inside.IsValid()
}

func (t *Table) block(addr netip.Addr, starts []uint16, port uint16, tMs int64) (netip.Addr, bool) {
	i, found := slices.BinarySearch(starts, port)
	if !found {
		i--
	}
	for ; i >= 0; i-- {
		h := t.blocks[blockKey{addr, starts[i]}]
		for j := len(h) - 1; j >= 0; j-- {
			if port <= h[j].PortHi && h[j].Holds(tMs) {
				return h[j].Inside, true
			}
		}
		// Blocks rarely overlap; a block far below cannot hold port
		// once one below it does not reach it either.
		if len(h) > 0 && h[len(h)-1].PortHi < port && i < len(starts)-1 {
			break
		}
	}
	return netip.Addr{}, false
}

func (t *Table) holder(addr netip.Addr, tMs int64) (Binding, bool) {
	lengths := t.lengths4
	if addr.Is6() {
		lengths = t.lengths6
	}
	for _, bits := range lengths {
		p, err := addr.Prefix(bits)
		if err != nil {
			continue
		}
		h := t.prefixes[p]
		for j := len(h) - 1; j >= 0; j-- {
			if h[j].Holds(tMs) {
				return h[j], true
			}
		}
	}
	// Nobody held it at t: a holding that began within the slack after
	// t is taken as its holder, the flow's time being a little behind.
	var best Binding
	found := false
	for _, bits := range lengths {
		p, err := addr.Prefix(bits)
		if err != nil {
			continue
		}
		for _, b := range t.prefixes[p] {
			if b.StartMs > tMs && b.StartMs-tMs <= t.slackMs && (!found || b.StartMs < best.StartMs) {
				best, found = b, true
			}
		}
		if found {
			return best, true
		}
	}
	return Binding{}, false
}

// openBlock returns the open port block of addr starting at lo that inside
// holds at t.
func (t *Table) openBlock(addr netip.Addr, lo uint16, inside netip.Addr, tMs int64) (Binding, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	h := t.blocks[blockKey{addr, lo}]
	for j := len(h) - 1; j >= 0; j-- {
		if h[j].Inside == inside && h[j].Open(tMs) && h[j].StartMs <= tMs {
			return h[j], true
		}
	}
	return Binding{}, false
}

// Holding returns the holding of exactly p (not CGNAT) that lasts at t,
// the one a new record for p would compete with.
func (t *Table) Holding(p netip.Prefix, tMs int64) (Binding, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	h := t.prefixes[p.Masked()]
	for j := len(h) - 1; j >= 0; j-- {
		if h[j].Open(tMs) && h[j].StartMs <= tMs {
			return h[j], true
		}
	}
	return Binding{}, false
}

// Holdings returns customer's holdings that last at t, oldest first:
// where the customer is now.
func (t *Table) Holdings(customer string, tMs int64) []Binding {
	return t.ofCustomer(customer, func(b *Binding) bool { return b.Open(tMs) && b.StartMs <= tMs })
}

// History returns every holding of customer the table keeps, oldest
// first.
func (t *Table) History(customer string) []Binding {
	return t.ofCustomer(customer, func(*Binding) bool { return true })
}

func (t *Table) ofCustomer(customer string, keep func(*Binding) bool) []Binding {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []Binding
	for p := range t.customers[customer] {
		for _, b := range t.prefixes[p] {
			if b.Customer == customer && keep(&b) {
				out = append(out, b)
			}
		}
	}
	sortBindings(out)
	return out
}

// Address returns every holding of addr's prefixes the table keeps
// (longest prefix first, then oldest first) and the port blocks of addr.
func (t *Table) Address(addr netip.Addr) []Binding {
	addr = addr.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	lengths := t.lengths4
	if addr.Is6() {
		lengths = t.lengths6
	}
	var out []Binding
	for _, bits := range lengths {
		if p, err := addr.Prefix(bits); err == nil {
			out = append(out, t.prefixes[p]...)
		}
	}
	for _, lo := range t.starts[addr] {
		out = append(out, t.blocks[blockKey{addr, lo}]...)
	}
	return out
}

// OpenFrom returns the holdings reported by nas that last at t: what an
// Accounting-On or -Off from it ends.
func (t *Table) OpenFrom(nas netip.Addr, source string, tMs int64) []Binding {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []Binding
	for _, h := range t.prefixes {
		for _, b := range h {
			if b.NAS == nas && b.Source == source && b.Open(tMs) {
				out = append(out, b)
			}
		}
	}
	sortBindings(out)
	return out
}

// All returns every binding, for a state file: in an order that, applied
// again, gives the same table.
func (t *Table) All() []Binding {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]Binding, 0, t.size.Load())
	for _, h := range t.prefixes {
		out = append(out, h...)
	}
	for _, h := range t.blocks {
		out = append(out, h...)
	}
	sortBindings(out)
	return out
}

// Prune forgets holdings that ended before cutoff (Unix ms), so that the
// table holds what late flows and the console can still ask about, not
// years of it (ClickHouse keeps the history).
func (t *Table) Prune(cutoffMs int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	gone := func(b Binding) bool { e := b.EndAt(); return e > 0 && e < cutoffMs }
	n := 0
	for p, h := range t.prefixes {
		kept := slices.DeleteFunc(slices.Clone(h), gone)
		if len(kept) == len(h) {
			continue
		}
		n += len(h) - len(kept)
		for _, old := range h {
			if gone(old) {
				t.unindex(old.Customer, p, kept)
			}
		}
		if len(kept) == 0 {
			delete(t.prefixes, p)
			t.useLength(p, -1)
		} else {
			t.prefixes[p] = kept
		}
	}
	for k, h := range t.blocks {
		kept := slices.DeleteFunc(h, gone)
		n += len(h) - len(kept)
		if len(kept) > 0 {
			t.blocks[k] = kept
			continue
		}
		delete(t.blocks, k)
		s := t.starts[k.addr]
		if i, ok := slices.BinarySearch(s, k.lo); ok {
			s = slices.Delete(s, i, i+1)
		}
		if len(s) == 0 {
			delete(t.starts, k.addr)
		} else {
			t.starts[k.addr] = s
		}
	}
	t.size.Add(int64(-n))
	return n
}

func sortBindings(bs []Binding) {
	slices.SortStableFunc(bs, func(a, b Binding) int {
		switch {
		case a.StartMs != b.StartMs:
			return int(min(max(a.StartMs-b.StartMs, -1), 1))
		case a.Prefix != b.Prefix:
			if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
				return c
			}
			return a.Prefix.Bits() - b.Prefix.Bits()
		}
		return int(a.PortLo) - int(b.PortLo)
	})
}
