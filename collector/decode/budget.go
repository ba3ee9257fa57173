package decode

import (
	"net/netip"
	"sync/atomic"
)

// The decoder's state (exporters, templates and their fields, learned
// sampling rates, sequence numbers and system init times per observation
// domain) is charged against one global budget (collector.
// decoder_budget_bytes) and a cap per exporter address, all its ports and
// domains together (collector.max_state_per_address). A charge that would
// pass either is refused and counted by reason; nothing is evicted to make
// room, so state already learned (a router's templates, refreshed at the
// same size) keeps working however much hostile input arrives. Expired
// state is credited back.
//
// The costs are estimates of the Go heap each entry takes (struct, map
// slot and its share of map growth), calibrated by TestBudgetCost: the
// budget bounds real memory, within a small factor.
const (
	costAddress  = 128 // addrUsage and its map slot
	costExporter = 512 // exporterState, its four maps, its map slot
	costTemplate = 192 // template struct, pointer, map slot, slice header
	costField    = 8   // one templateField
	costRate     = 64  // learned sampling rate
	costSequence = 48  // sequence number of a domain
	costInit     = 48  // system init time of a domain
)

func templateCost(t *template) int64 { return costTemplate + costField*int64(cap(t.Fields)) }

// Refusal says why the decoder did not keep some state.
type Refusal uint8

// Refusal reasons; RefusalReasons names them for metrics.
const (
	// RefusedGlobalBudget: collector.decoder_budget_bytes is spent.
	RefusedGlobalBudget Refusal = iota
	// RefusedAddressCap: the exporter address (all its ports and
	// domains) holds collector.max_state_per_address.
	RefusedAddressCap
	// RefusedTemplatesPerExporter: the exporter (address and port) holds
	// collector.max_templates_per_exporter templates.
	RefusedTemplatesPerExporter
	// RefusedTooManyExporters: collector.max_exporters exporters
	// (address and port) have state.
	RefusedTooManyExporters
	// RefusedDomainsPerExporter: the exporter holds maxDomainEntries
	// sampling rates, sequence numbers or system init times (one per
	// observation domain or sampler).
	RefusedDomainsPerExporter
	// NumRefusals is the number of reasons.
	NumRefusals
)

// RefusalReasons are the metric labels of the refusal reasons.
var RefusalReasons = [NumRefusals]string{
	"global_budget", "address_cap", "templates_per_exporter", "too_many_exporters", "domains_per_exporter",
}

func (r Refusal) String() string { return RefusalReasons[r] }

// maxDomainEntries bounds each per-domain map of one exporter (address
// and port): learned rates, sequence numbers, system init times.
const maxDomainEntries = 1024

// addrUsage is what one exporter address holds, all ports together.
type addrUsage struct {
	used      atomic.Int64
	exporters int // under Decoder.mu
}

// budget is the global account.
type budget struct {
	used    atomic.Int64
	limit   int64
	perAddr int64
}

// reserve adds n to v unless that passes limit.
func reserve(v *atomic.Int64, n, limit int64) bool {
	for {
		cur := v.Load()
		if cur+n > limit {
			return false
		}
		if v.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// charge takes n bytes (n may be negative: a credit) from the address's
// cap and the global budget, or refuses.
func (b *budget) charge(a *addrUsage, n int64) (Refusal, bool) {
	if n <= 0 {
		a.used.Add(n)
		b.used.Add(n)
		return 0, true
	}
	if !reserve(&a.used, n, b.perAddr) {
		return RefusedAddressCap, false
	}
	if !reserve(&b.used, n, b.limit) {
		a.used.Add(-n)
		return RefusedGlobalBudget, false
	}
	return 0, true
}

// StateBytes is the decoder state charged against the budget now.
func (d *Decoder) StateBytes() int64 { return d.budget.used.Load() }

// BudgetBytes is collector.decoder_budget_bytes.
func (d *Decoder) BudgetBytes() int64 { return d.budget.limit }

// Exporters is how many exporters (address and port) have state, and from
// how many addresses.
func (d *Decoder) Exporters() (exporters, addresses int) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.exporters), len(d.addrs)
}

// AddressStateBytes is the state charged to one exporter address.
func (d *Decoder) AddressStateBytes(a netip.Addr) int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if u := d.addrs[a.Unmap()]; u != nil {
		return u.used.Load()
	}
	return 0
}

// maybeReclaim runs Reclaim at most once per reclaim interval of receive
// time, so that state of exporters that went away is given back without
// a timer (replay runs on capture time).
func (d *Decoder) maybeReclaim(nowMs int64) {
	last := d.lastReclaimMs.Load()
	if nowMs-last < d.reclaimEveryMs {
		return
	}
	if d.lastReclaimMs.CompareAndSwap(last, nowMs) {
		d.Reclaim(nowMs)
	}
}

// Reclaim forgets exporters silent for longer than the template TTL and
// expires the templates, rates and per-domain entries of the others that
// have not swept themselves lately, crediting the budget.
func (d *Decoder) Reclaim(nowMs int64) {
	d.mu.RLock()
	list := make([]netip.AddrPort, 0, len(d.exporters))
	for a := range d.exporters {
		list = append(list, a)
	}
	d.mu.RUnlock()
	for _, a := range list {
		d.mu.RLock()
		e := d.exporters[a]
		d.mu.RUnlock()
		if e == nil {
			continue
		}
		e.mu.Lock()
		idle := nowMs-e.lastSeenMs > d.templateTTL
		if !idle {
			e.sweep(nowMs, d.templateTTL)
		}
		e.mu.Unlock()
		if idle {
			d.mu.Lock()
			d.removeIdleLocked(a, nowMs)
			d.mu.Unlock()
		}
	}
}

// removeIdleLocked forgets exporter a, with d.mu held, if it is still idle.
func (d *Decoder) removeIdleLocked(a netip.AddrPort, nowMs int64) bool {
	e := d.exporters[a]
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if nowMs-e.lastSeenMs <= d.templateTTL {
		return false
	}
	delete(d.exporters, a)
	// A decode that fetched e before it was removed finishes on an orphan
	// that charges nothing more.
	e.removed = true
	d.budget.charge(e.addr, -e.used)
	e.used = 0
	if e.addr.exporters--; e.addr.exporters == 0 {
		delete(d.addrs, a.Addr().Unmap())
		d.budget.charge(e.addr, -costAddress)
	}
	return true
}
