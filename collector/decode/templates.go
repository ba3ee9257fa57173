package decode

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// templateField is one field of a NetFlow v9 / IPFIX template.
type templateField struct {
	Type   uint16 `json:"type"`
	Length uint16 `json:"length"`
	PEN    uint32 `json:"pen,omitempty"` // IPFIX enterprise number, 0 for IANA
}

// template is a (options) template as the exporter sent it, plus what
// decoding needs to know about it.
type template struct {
	Options    bool            `json:"options,omitempty"`
	ScopeCount int             `json:"scope_count,omitempty"`
	Fields     []templateField `json:"fields"`
	ReceivedMs int64           `json:"received_ms"`

	minSize    int  // bytes of the shortest possible record
	varlen     bool // has IPFIX variable-length fields
	enterprise bool // has IPFIX enterprise-specific fields
	nat        bool // has natEvent: NAT logging records, not flows
	postNAT    bool // has a post-NAT source address
}

func (t *template) prepare() {
	t.minSize, t.varlen, t.enterprise, t.nat, t.postNAT = 0, false, false, false, false
	for _, f := range t.Fields {
		if f.PEN == 0 {
			switch f.Type {
			case ieNATEvent:
				t.nat = true
			case iePostNATSrcIPv4, iePostNATSrcIPv6:
				t.postNAT = true
			}
		}
		switch {
		case f.Length == variableLength:
			// IPFIX variable length; some NetFlow v9 exporters (H3C
			// NetStream) use it too, and no fixed field can be that long.
			t.varlen = true
			t.minSize++
		default:
			t.minSize += int(f.Length)
		}
		if f.PEN != 0 {
			t.enterprise = true
		}
	}
}

type tmplKey struct {
	Version uint16 `json:"version"`
	Domain  uint32 `json:"domain"`
	ID      uint16 `json:"id"`
}

type samplerKey struct {
	Version uint16 `json:"version"`
	Domain  uint32 `json:"domain"`
	Sampler uint64 `json:"sampler"` // 0: the whole observation domain
}

type domainKey struct {
	Version uint16 `json:"version"`
	Domain  uint32 `json:"domain"`
}

type seqKey struct {
	Version uint16 // 5, 9, 10, or sflowSeq
	Domain  uint32
}

type learnedRate struct {
	Rate       uint32 `json:"rate"`
	ReceivedMs int64  `json:"received_ms"`
}

type seqState struct {
	next   uint32
	valid  bool
	seenMs int64
}

type initState struct {
	ms         int64
	receivedMs int64
}

// exporterState is what the decoder keeps for one exporter (address and
// port): templates, learned sampling rates, system init times and
// sequence numbers. Everything it holds is charged to used, its address's
// cap and the global budget (budget.go), under mu.
type exporterState struct {
	mu          sync.Mutex
	templates   map[tmplKey]*template
	rates       map[samplerKey]learnedRate
	systemInit  map[domainKey]initState
	sequences   map[seqKey]seqState
	lastSeenMs  int64
	lastSweepMs int64

	budget  *budget
	addr    *addrUsage
	used    int64 // bytes charged for this exporter, its own cost included
	removed bool  // forgotten by the decoder: charges nothing more
}

func newExporterState(b *budget, a *addrUsage) *exporterState {
	return &exporterState{
		templates:  map[tmplKey]*template{},
		rates:      map[samplerKey]learnedRate{},
		systemInit: map[domainKey]initState{},
		sequences:  map[seqKey]seqState{},
		budget:     b,
		addr:       a,
	}
}

// charge takes n bytes (or gives back -n) from the budget for this
// exporter.
func (e *exporterState) charge(n int64) (Refusal, bool) {
	if e.removed || n == 0 {
		return 0, true
	}
	r, ok := e.budget.charge(e.addr, n)
	if ok {
		e.used += n
	}
	return r, ok
}

// template returns the template for key, or nil when unknown or expired.
func (e *exporterState) template(key tmplKey, nowMs, ttlMs int64) *template {
	t := e.templates[key]
	if t == nil {
		return nil
	}
	if nowMs-t.ReceivedMs > ttlMs {
		e.withdraw(key)
		return nil
	}
	return t
}

// addTemplate stores t unless that would pass a cap or the budget. A
// template that replaces one of the same ID and size costs nothing; one
// that grows and does not fit is refused and the one it replaced
// withdrawn, as it no longer describes the exporter's data.
func (e *exporterState) addTemplate(key tmplKey, t *template, max int) (Refusal, bool) {
	old := e.templates[key]
	if old == nil && len(e.templates) >= max {
		return RefusedTemplatesPerExporter, false
	}
	delta := templateCost(t)
	if old != nil {
		delta -= templateCost(old)
	}
	if r, ok := e.charge(delta); !ok {
		e.withdraw(key)
		return r, false
	}
	e.templates[key] = t
	return 0, true
}

func (e *exporterState) withdraw(key tmplKey) {
	if t := e.templates[key]; t != nil {
		delete(e.templates, key)
		e.charge(-templateCost(t))
	}
}

func (e *exporterState) setRate(key samplerKey, rate uint32, nowMs int64) (Refusal, bool) {
	if _, ok := e.rates[key]; !ok {
		if len(e.rates) >= maxDomainEntries {
			return RefusedDomainsPerExporter, false
		}
		if r, ok := e.charge(costRate); !ok {
			return r, false
		}
	}
	e.rates[key] = learnedRate{rate, nowMs}
	return 0, true
}

func (e *exporterState) rate(key samplerKey, nowMs, ttlMs int64) uint32 {
	r, ok := e.rates[key]
	if !ok {
		return 0
	}
	if nowMs-r.ReceivedMs > ttlMs {
		delete(e.rates, key)
		e.charge(-costRate)
		return 0
	}
	return r.Rate
}

func (e *exporterState) setSystemInit(key domainKey, ms, nowMs int64) (Refusal, bool) {
	if _, ok := e.systemInit[key]; !ok {
		if len(e.systemInit) >= maxDomainEntries {
			return RefusedDomainsPerExporter, false
		}
		if r, ok := e.charge(costInit); !ok {
			return r, false
		}
	}
	e.systemInit[key] = initState{ms, nowMs}
	return 0, true
}

// sweep drops expired state now and then, so that templates nobody looks
// up any more do not stay forever, nor the per-domain entries of
// observation domains that went quiet.
func (e *exporterState) sweep(nowMs, ttlMs int64) {
	if nowMs-e.lastSweepMs < ttlMs/8 {
		return
	}
	e.lastSweepMs = nowMs
	for k, t := range e.templates {
		if nowMs-t.ReceivedMs > ttlMs {
			e.withdraw(k)
		}
	}
	for k, r := range e.rates {
		if nowMs-r.ReceivedMs > ttlMs {
			delete(e.rates, k)
			e.charge(-costRate)
		}
	}
	for k, s := range e.systemInit {
		if nowMs-s.receivedMs > ttlMs {
			delete(e.systemInit, k)
			e.charge(-costInit)
		}
	}
	for k, s := range e.sequences {
		if nowMs-s.seenMs > ttlMs {
			delete(e.sequences, k)
			e.charge(-costSequence)
		}
	}
}

// sequenceGap records sequence number seq of a datagram that advances the
// counter by inc and returns how many units were lost before it. Late or
// repeated datagrams count nothing; a jump of more than a million is taken
// for an exporter restart, not a loss. A domain beyond the caps is not
// tracked: refused is set.
func (e *exporterState) sequenceGap(key seqKey, seq, inc uint32, nowMs int64, rep *Report) uint64 {
	s, known := e.sequences[key]
	var lost uint64
	if known {
		diff := int32(seq - s.next)
		switch {
		case diff > 0 && diff < 1<<20:
			lost = uint64(diff)
		case diff < 0 && diff > -(1<<20):
			// late or repeated: keep waiting for what comes next
			s.seenMs = nowMs
			e.sequences[key] = s
			return 0
		}
	} else {
		r, ok := Refusal(RefusedDomainsPerExporter), len(e.sequences) < maxDomainEntries
		if ok {
			r, ok = e.charge(costSequence)
		}
		if !ok {
			rep.Refused[r]++
			return 0
		}
	}
	e.sequences[key] = seqState{next: seq + inc, valid: true, seenMs: nowMs}
	return lost
}

// resetSequence forgets where key's sequence was: the next datagram
// starts over without counting a gap.
func (e *exporterState) resetSequence(key seqKey) {
	if _, ok := e.sequences[key]; ok {
		delete(e.sequences, key)
		e.charge(-costSequence)
	}
}

// savedState is the template file's content.
type savedState struct {
	Version   int             `json:"version"`
	Exporters []savedExporter `json:"exporters"`
}

type savedExporter struct {
	Exporter   string          `json:"exporter"`
	Templates  []savedTemplate `json:"templates,omitempty"`
	Rates      []savedRate     `json:"sampling_rates,omitempty"`
	SystemInit []savedInit     `json:"system_init,omitempty"`
}

type savedTemplate struct {
	tmplKey
	template
}

type savedRate struct {
	samplerKey
	learnedRate
}

type savedInit struct {
	domainKey
	Ms int64 `json:"ms"`
}

const templateFileVersion = 1

// SaveTemplates writes every exporter's templates and learned sampling
// rates to path, atomically (a crash leaves the previous file).
func (d *Decoder) SaveTemplates(path string) error {
	state := savedState{Version: templateFileVersion}
	d.mu.RLock()
	addrs := make([]netip.AddrPort, 0, len(d.exporters))
	for a := range d.exporters {
		addrs = append(addrs, a)
	}
	d.mu.RUnlock()
	slices.SortFunc(addrs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	for _, a := range addrs {
		d.mu.RLock()
		e := d.exporters[a]
		d.mu.RUnlock()
		if e == nil {
			continue
		}
		se := savedExporter{Exporter: a.String()}
		e.mu.Lock()
		for k, t := range e.templates {
			se.Templates = append(se.Templates, savedTemplate{k, *t})
		}
		for k, r := range e.rates {
			se.Rates = append(se.Rates, savedRate{k, r})
		}
		for k, si := range e.systemInit {
			se.SystemInit = append(se.SystemInit, savedInit{k, si.ms})
		}
		e.mu.Unlock()
		if len(se.Templates)+len(se.Rates)+len(se.SystemInit) == 0 {
			continue
		}
		// Stable order keeps the file diffable.
		slices.SortFunc(se.Templates, func(a, b savedTemplate) int { return cmpKey(a.tmplKey, b.tmplKey) })
		slices.SortFunc(se.Rates, func(a, b savedRate) int {
			return cmpKey(tmplKey{a.Version, a.Domain, 0}, tmplKey{b.Version, b.Domain, 0})*2 + cmp.Compare(a.Sampler, b.Sampler)
		})
		state.Exporters = append(state.Exporters, se)
	}
	raw, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("cannot encode templates: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".templates-*")
	if err != nil {
		return fmt.Errorf("cannot save templates: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot save templates: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot save templates: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cannot save templates: %w", err)
	}
	return nil
}

func cmpKey(a, b tmplKey) int {
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Domain, b.Domain); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// LoadTemplates reads a file written by SaveTemplates. A missing file is
// not an error: it is the first start. Entries older than the TTL at
// nowMs, or beyond the caps, are left out.
func (d *Decoder) LoadTemplates(path string, nowMs int64) (int, error) {
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cannot read templates: %w", err)
	}
	var state savedState
	if err := json.Unmarshal(raw, &state); err != nil {
		return 0, fmt.Errorf("cannot decode template file %s: %w", path, err)
	}
	if state.Version != templateFileVersion {
		return 0, fmt.Errorf("template file %s has version %d, want %d", path, state.Version, templateFileVersion)
	}
	loaded := 0
	for _, se := range state.Exporters {
		addr, err := netip.ParseAddrPort(se.Exporter)
		if err != nil {
			return loaded, fmt.Errorf("template file %s: exporter %q: %w", path, se.Exporter, err)
		}
		e, r, ok := d.exporter(addr, nowMs)
		if !ok {
			// Beyond the caps: the rest of the file is not loaded.
			return loaded, fmt.Errorf("template file %s: exporter %s: %s", path, addr, r)
		}
		e.mu.Lock()
		for _, st := range se.Templates {
			t := st.template
			if nowMs-t.ReceivedMs > d.templateTTL || st.ID < firstDataSet || len(t.Fields) == 0 || t.ScopeCount > len(t.Fields) {
				continue
			}
			t.prepare()
			if _, ok := e.addTemplate(st.tmplKey, &t, d.maxTemplates); ok {
				loaded++
			}
		}
		for _, sr := range se.Rates {
			if nowMs-sr.ReceivedMs <= d.templateTTL {
				e.setRate(sr.samplerKey, sr.Rate, sr.ReceivedMs)
			}
		}
		for _, si := range se.SystemInit {
			e.setSystemInit(si.domainKey, si.Ms, nowMs)
		}
		e.mu.Unlock()
	}
	return loaded, nil
}
