package detector

import (
	"net/netip"
	"strings"
	"testing"
)

// The map may name DHCP clients by MAC or client id beside networks.
func TestMappingNamesClients(t *testing.T) {
	m, err := ParseMapping(strings.NewReader("network,subscriber_id\n203.0.113.0/24,net-1\n02-00-5E-00-53-01,cust-17\n01:02:00:5e:00:53:02,cust-18\n2001:db8:0:0:0:0:0:1,v6\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.LookupClient("02:00:5e:00:53:01"); got != "cust-17" {
		t.Errorf("MAC: %q, want cust-17", got)
	}
	if got := m.LookupClient("01:02:00:5e:00:53:02"); got != "cust-18" {
		t.Errorf("client id: %q, want cust-18", got)
	}
	if got := m.Lookup(netip.MustParseAddr("2001:db8::1")); got != "v6" {
		t.Errorf("an IPv6 address of eight groups was taken for a client: %q", got)
	}
	if got := m.Lookup(netip.MustParseAddr("203.0.113.9")); got != "net-1" {
		t.Errorf("network: %q", got)
	}
}
