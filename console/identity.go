package console

import (
	"context"
	"net/http"
	"net/netip"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
)

// bindingSource answers who held what: identity.ClickHouseBindings over
// subscriber_bindings, or this process's identity.Table.
type bindingSource interface {
	History(ctx context.Context, customer string) ([]identity.Binding, error)
	Address(ctx context.Context, addr netip.Addr) ([]identity.Binding, error)
}

// tableBindings asks an in-memory table.
type tableBindings struct{ t *identity.Table }

func (b tableBindings) History(_ context.Context, customer string) ([]identity.Binding, error) {
	return b.t.History(customer), nil
}

func (b tableBindings) Address(_ context.Context, addr netip.Addr) ([]identity.Binding, error) {
	return b.t.Address(addr), nil
}

// Where holdings come from, as the API names it.
const (
	holdingsClickHouse = "clickhouse"
	holdingsMemory     = "memory"
)

// newBindingSource prefers ClickHouse, which keeps identity.retention,
// over the table, which keeps identity.keep; nil when neither is there.
func newBindingSource(db *clickhousedb.DB, t *identity.Table) bindingSource {
	switch {
	case db != nil:
		return identity.NewClickHouseBindings(db)
	case t != nil:
		return tableBindings{t}
	}
	return nil
}

func (c *Component) holdingsFrom() string {
	switch c.bindings.(type) {
	case *identity.ClickHouseBindings:
		return holdingsClickHouse
	case tableBindings:
		return holdingsMemory
	}
	return ""
}

// Holding is one binding as the API shows it: who held an address or
// prefix (or, behind a CGNAT, a port block for an inside address), from
// where and when.
type Holding struct {
	// Customer is empty for a CGNAT port block, whose holder is Inside.
	Customer string `json:"customer"`
	Prefix   string `json:"prefix"`
	PortLo   uint16 `json:"port_lo,omitempty"`
	PortHi   uint16 `json:"port_hi,omitempty"`
	Inside   string `json:"inside,omitempty"`
	// Source is radius, dhcp, cgnat or static; Session the source's
	// name for the holding (Acct-Session-Id, DHCP client id or MAC).
	Source        string    `json:"source"`
	Session       string    `json:"session"`
	NAS           string    `json:"nas"`
	NASIdentifier string    `json:"nas_identifier"`
	Start         time.Time `json:"start"`
	// End is null while the holding lasts; Expires null when it does
	// not expire unless renewed. Open tells whether it lasts now.
	End       *time.Time `json:"end"`
	Expires   *time.Time `json:"expires"`
	EndReason string     `json:"end_reason"`
	Open      bool       `json:"open"`
}

func holdingsOf(bs []identity.Binding, now time.Time) []Holding {
	out := make([]Holding, 0, len(bs))
	at := func(ms int64) *time.Time {
		if ms == 0 {
			return nil
		}
		t := time.UnixMilli(ms).UTC()
		return &t
	}
	for _, b := range bs {
		h := Holding{Customer: b.Customer, Prefix: b.Prefix.String(), PortLo: b.PortLo, PortHi: b.PortHi,
			Source: b.Source, Session: b.Session, NASIdentifier: b.NASIdentifier,
			Start: time.UnixMilli(b.StartMs).UTC(), End: at(b.EndMs), Expires: at(b.ExpiresMs),
			EndReason: b.EndReason, Open: b.Open(now.UnixMilli()) && b.StartMs <= now.UnixMilli()}
		if b.Inside.IsValid() {
			h.Inside = b.Inside.String()
		}
		if b.NAS.IsValid() {
			h.NAS = b.NAS.String()
		}
		out = append(out, h)
	}
	return out
}

// maxCustomerID bounds a customer id: RADIUS User-Name and Class are at
// most 253 bytes.
const maxCustomerID = 253

// customerOf checks a customer id as the path names it: the text an
// identity source took it from, printable, not too long.
func customerOf(s string) (string, error) {
	bad := s == "" || len(s) > maxCustomerID || !utf8.ValidString(s)
	for _, r := range s {
		bad = bad || !unicode.IsPrint(r)
	}
	if bad {
		return "", badf("customer: %q is not a customer id (printable text, at most %d bytes)", s, maxCustomerID)
	}
	return s, nil
}

type customerView struct {
	Customer string `json:"customer"`
	// Holdings are the customer's addresses over time, oldest first;
	// HoldingsFrom says where they come from (clickhouse, memory, or ""
	// when no identity is known here).
	Holdings     []Holding `json:"holdings"`
	HoldingsFrom string    `json:"holdings_from"`
	// HoldingsError says why the holdings could not be read (the rest
	// of the view still answers).
	HoldingsError string     `json:"holdings_error,omitempty"`
	Incidents     []Incident `json:"incidents"`
}

// serveCustomer is GET /api/v1/customers/{id}: the customer's holdings
// and its incidents (those whose subscriber_id names it) since the
// lookback.
func (c *Component) serveCustomer(w http.ResponseWriter, r *http.Request) {
	if err := params(r); err != nil {
		c.fail(w, err)
		return
	}
	id, err := customerOf(r.PathValue("id"))
	if err != nil {
		c.fail(w, err)
		return
	}
	v := customerView{Customer: id, Holdings: []Holding{}, HoldingsFrom: c.holdingsFrom(), Incidents: []Incident{}}
	if c.bindings != nil {
		bs, err := c.bindings.History(r.Context(), id)
		if err != nil {
			v.HoldingsError = c.bindingsFailed(err)
		} else {
			v.Holdings = holdingsOf(bs, c.now())
		}
	}
	events, err := c.store.Events(r.Context(), c.now().Add(-c.config.Lookback))
	if err != nil {
		c.fail(w, err)
		return
	}
	var mine []alert.Alert
	for _, a := range latest(events) {
		if a.SubscriberID == id {
			mine = append(mine, a)
		}
	}
	sortIncidents(mine)
	if v.Incidents, err = c.withAcks(r, mine); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// bindingsFailed logs and counts a failed read of the holdings, which
// leaves the rest of a view standing (a database not yet migrated to
// subscriber_bindings still shows incidents), and says why.
func (c *Component) bindingsFailed(err error) string {
	c.metrics.storeErrors.Inc()
	c.deps.Logger.Warn("cannot read who held what", "error", err)
	return "cannot read the holdings: " + err.Error()
}

// addressHoldings fills in v who held the address a subscriber path
// names (the address itself, or the first address of a prefix) and who
// holds it now.
func (c *Component) addressHoldings(r *http.Request, v *subscriberView) {
	v.Holdings = []Holding{}
	p, err := network.ParsePrefix(r.PathValue("ip"))
	if c.bindings == nil || err != nil {
		return
	}
	bs, err := c.bindings.Address(r.Context(), p.Addr())
	if err != nil {
		v.HoldingsError = c.bindingsFailed(err)
		return
	}
	v.Holdings = holdingsOf(bs, c.now())
	// The table lists the longest prefix first: its open holder is the
	// one Resolve names.
	for _, h := range v.Holdings {
		if h.Open && h.Customer != "" {
			v.Customer = h.Customer
			return
		}
	}
}
