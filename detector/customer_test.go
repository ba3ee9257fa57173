package detector

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
)

// A customer keeps one state and one incident across an address change,
// and the next holder of its old address inherits nothing.
func TestCustomerFollowsAddressChange(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	first, second := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.9")
	binding := map[netip.Addr]identity.Binding{
		second: {Customer: "A", Source: identity.SourceRADIUS, Session: "s2", StartMs: at(3)},
	}
	r.e.SetIdentity(func(a netip.Addr, ms int64) (identity.Binding, bool) {
		b, ok := binding[a]
		return b, ok
	})
	send := func(src netip.Addr, customer string, d int, m float64) {
		f := smtpFlow(src, d, at(m), flow.TCPSyn)
		f.Customer = customer
		r.feed(f)
	}
	for i := range 6 {
		send(first, "A", i, 0.1*float64(i))
	}
	// A reconnects on .9 and goes on; B now holds .7 and sends mail to
	// three servers, as anyone may.
	for i := range 6 {
		send(second, "A", 100+i, 3+0.1*float64(i))
	}
	for i := range 3 {
		send(first, "B", 200+i, 3.5+0.1*float64(i))
	}
	r.advance(at(4))
	var ids = map[string]bool{}
	var last alert.Alert
	for _, a := range r.all {
		if a.Kind != alert.KindSMTPFanout {
			continue
		}
		if a.SubscriberID != "A" {
			t.Errorf("alert for %q (%s %s), want only customer A", a.SubscriberID, a.SubscriberIP, a.State)
		}
		ids[a.ID] = true
		last = a
	}
	if len(ids) != 1 {
		t.Fatalf("%d incidents for A, want 1 across the address change: %+v", len(ids), r.all)
	}
	if last.SubscriberIP != second.String() {
		t.Errorf("subscriber_ip %s, want the address of the latest flow %s", last.SubscriberIP, second)
	}
	id := last.Evidence.Identity
	if id == nil || id.Customer != "A" || id.Source != identity.SourceRADIUS || id.Session != "s2" || !id.Since.Equal(at3()) {
		t.Fatalf("identity evidence %+v, want customer A, radius session s2 since %s", id, at3())
	}
	if !id.Changed || len(id.Addresses) != 2 || id.Addresses[0].Address != first.String() || id.Addresses[1].Address != second.String() {
		t.Errorf("addresses %+v changed=%v, want .7 then .9, changed", id.Addresses, id.Changed)
	}
}

func at3() time.Time { return time.UnixMilli(at(3)).UTC() }

// Flows without a customer stay keyed by address, as before identity.
func TestNoCustomerKeysByAddress(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	for i := range 6 {
		r.feed(smtpFlow(zombie, i, at(0.1*float64(i)), flow.TCPSyn))
	}
	if len(r.all) == 0 || r.all[0].SubscriberIP != zombie.String() || r.all[0].Evidence.Identity != nil {
		t.Fatalf("alerts %+v, want one for %s without identity", r.all, zombie)
	}
}
