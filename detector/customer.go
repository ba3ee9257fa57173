package detector

import (
	"net/netip"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
)

// customer is what the engine keeps beside the state of a subscriber that
// is a customer (the collector resolved who held the address, see
// identity): its id, and the addresses its flows came from lately, so
// that an alert names the address of the moment and says when it
// changed.
type customer struct {
	id    string
	addrs [maxCustomerAddrs]seenAddr
}

// maxCustomerAddrs bounds the addresses kept per customer: a few
// reconnections within a window; the oldest is forgotten first.
const maxCustomerAddrs = 4

type seenAddr struct {
	addr            netip.Addr
	firstMs, lastMs int64
}

// saw records a flow of the customer from addr at ms.
func (c *customer) saw(addr netip.Addr, ms int64) {
	oldest := 0
	for i := range c.addrs {
		a := &c.addrs[i]
		if a.addr == addr {
			a.firstMs, a.lastMs = min(a.firstMs, ms), max(a.lastMs, ms)
			return
		}
		if !a.addr.IsValid() {
			oldest = i
			break
		}
		if a.lastMs < c.addrs[oldest].lastMs {
			oldest = i
		}
	}
	c.addrs[oldest] = seenAddr{addr: addr, firstMs: ms, lastMs: ms}
}

// latest is the address of the customer's latest flow.
func (c *customer) latest() netip.Addr {
	var best seenAddr
	for _, a := range c.addrs {
		if a.addr.IsValid() && (!best.addr.IsValid() || a.lastMs > best.lastMs) {
			best = a
		}
	}
	return best.addr
}

// SetIdentity sets how the engine learns the binding behind a customer's
// address at a time, for the evidence (source, session, since). Nil: the
// evidence names the customer and addresses only.
func (e *Engine) SetIdentity(lookup func(addr netip.Addr, tMs int64) (identity.Binding, bool)) {
	e.identityOf = lookup
}

// describeCustomer names the customer in a: subscriber_id, the address of
// its latest flow as subscriber_ip, and in the evidence the binding and
// the addresses its flows came from within the window.
func (e *Engine) describeCustomer(a *alert.Alert, c *customer, fromMs, toMs int64) {
	a.SubscriberID = c.id
	latest := c.latest()
	if latest.IsValid() {
		a.SubscriberIP = e.subs.Label(latest)
	}
	id := &alert.Identity{Customer: c.id}
	for _, s := range c.addrs {
		if !s.addr.IsValid() || s.lastMs < fromMs || s.firstMs > toMs {
			continue
		}
		id.Addresses = append(id.Addresses, alert.IdentityAddress{Address: e.subs.Label(s.addr),
			FirstSeen: time.UnixMilli(s.firstMs).UTC(), LastSeen: time.UnixMilli(s.lastMs).UTC()})
	}
	sortAddresses(id.Addresses)
	id.Changed = len(id.Addresses) > 1
	if e.identityOf != nil && latest.IsValid() {
		if b, ok := e.identityOf(latest, toMs); ok && b.Customer == c.id {
			id.Source, id.Session = b.Source, b.Session
			id.Since = time.UnixMilli(b.StartMs).UTC()
		}
	}
	a.Evidence.Identity = id
}

func sortAddresses(as []alert.IdentityAddress) {
	for i := 1; i < len(as); i++ {
		for j := i; j > 0 && as[j].FirstSeen.Before(as[j-1].FirstSeen); j-- {
			as[j], as[j-1] = as[j-1], as[j]
		}
	}
}

// keyOf is the subscriber key of f, whose subscriber address is addr (its
// source or its destination): its customer's (identity.Key) when the
// collector resolved one, else the inside address's behind a CGNAT, else
// the subscriber address's.
func (e *Engine) keyOf(f *flow.Flow, addr netip.Addr) netip.Addr {
	switch {
	case f.Customer != "":
		return identity.Key(f.Customer)
	case f.Inside.IsValid():
		return e.subs.Subscriber(f.Inside)
	}
	return e.subs.Subscriber(addr)
}
