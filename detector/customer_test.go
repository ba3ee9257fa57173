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

// A dual-stack customer's IPv4 and IPv6 flows count together: three mail
// servers from each family make the five of the threshold.
func TestDualStackCustomerCountsTogether(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	v4, v6 := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8:7::1")
	for i := range 3 {
		f := smtpFlow(v4, i, at(0.1*float64(i)), flow.TCPSyn)
		f.Customer = "A"
		r.feed(f)
		g := smtpFlow(v6, 50+i, at(0.1*float64(i)+0.05), flow.TCPSyn)
		g.DstAddr = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 15: byte(i + 1)})
		g.Customer = "A"
		r.feed(g)
	}
	var opened *alert.Alert
	for i, a := range r.all {
		if a.Kind == alert.KindSMTPFanout && a.State == alert.StateOpen {
			opened = &r.all[i]
		}
	}
	if opened == nil || opened.SubscriberID != "A" || opened.DistinctDsts < 5 {
		t.Fatalf("alerts %+v: want one smtp_fanout for customer A over both families", r.all)
	}
	if id := opened.Evidence.Identity; id == nil || len(id.Addresses) != 2 {
		t.Errorf("identity %+v: want the IPv4 address and the IPv6 prefix", opened.Evidence.Identity)
	}
}
