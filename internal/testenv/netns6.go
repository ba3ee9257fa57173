package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Lab6 is a lab's IPv6 side, on the same namespaces and veths as its IPv4:
//
//	subscriber ns ──veth── root ns (routes) ──veth── internet ns
//	2001:db8:203:i::2..    ::1 on both sides         2001:db8:198:i::2..
//
// Each lab index has its own two /64s, inside the documentation prefix.
type Lab6 struct {
	SubscriberNet netip.Prefix // the subscribers' /64
	Subscribers   []netip.Addr // addresses in the subscriber namespace, in SubscriberNet
	Servers       []netip.Addr // addresses in the internet namespace
}

// EnableIPv6 gives the lab IPv6: nSubs subscriber addresses in one /64 (as
// one subscriber host's addresses within its prefix, e.g. its privacy
// addresses) and nServers internet addresses. The root namespace forwards
// IPv6 between the lab's two veths only (force_forwarding, Linux 6.17 and
// later: the global switch would turn the whole host into a router).
// Addresses skip duplicate address detection so that they work at once.
// Everything goes away with the lab's links and namespaces.
func (l *Lab) EnableIPv6(t testing.TB, nSubs, nServers int) *Lab6 {
	t.Helper()
	if nSubs < 1 || nSubs > 200 || nServers < 1 || nServers > 200 {
		t.Fatalf("IPv6 lab of %d subscribers and %d servers is out of range", nSubs, nServers)
	}
	routerInet := fmt.Sprintf("wslab%di", l.Index) // as NewLab names it
	subNet := netip.MustParsePrefix(fmt.Sprintf("2001:db8:203:%x::/64", l.Index))
	inetNet := netip.MustParsePrefix(fmt.Sprintf("2001:db8:198:%x::/64", l.Index))
	subGW, inetGW := subNet.Addr().Next(), inetNet.Addr().Next()
	l6 := &Lab6{SubscriberNet: subNet}
	for a, n := subGW.Next(), 0; n < nSubs; a, n = a.Next(), n+1 {
		l6.Subscribers = append(l6.Subscribers, a)
	}
	for a, n := inetGW.Next(), 0; n < nServers; a, n = a.Next(), n+1 {
		l6.Servers = append(l6.Servers, a)
	}
	for _, dev := range []string{l.RouterIf, routerInet} {
		if _, err := os.Stat("/proc/sys/net/ipv6/conf/" + dev + "/force_forwarding"); err != nil {
			Unavailable(t, "IPv6 lab: this kernel has no per-interface force_forwarding (Linux 6.17+): %v", err)
		}
	}
	cmds := [][]string{
		{"sysctl", "-qw", "net.ipv6.conf." + l.RouterIf + ".disable_ipv6=0"},
		{"sysctl", "-qw", "net.ipv6.conf." + routerInet + ".disable_ipv6=0"},
		{"ip", "netns", "exec", l.Subscriber, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"},
		{"ip", "netns", "exec", l.Internet, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"},
		{"ip", "-6", "addr", "add", subGW.String() + "/64", "dev", l.RouterIf, "nodad"},
		{"ip", "-6", "addr", "add", inetGW.String() + "/64", "dev", routerInet, "nodad"},
		{"sysctl", "-qw", "net.ipv6.conf." + l.RouterIf + ".force_forwarding=1"},
		{"sysctl", "-qw", "net.ipv6.conf." + routerInet + ".force_forwarding=1"},
	}
	for _, a := range l6.Subscribers {
		cmds = append(cmds, []string{"ip", "-n", l.Subscriber, "-6", "addr", "add", a.String() + "/64", "dev", "eth0", "nodad"})
	}
	for _, a := range l6.Servers {
		cmds = append(cmds, []string{"ip", "-n", l.Internet, "-6", "addr", "add", a.String() + "/64", "dev", "eth0", "nodad"})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", l.Subscriber, "-6", "route", "add", inetNet.String(), "via", subGW.String()},
		[]string{"ip", "-n", l.Internet, "-6", "route", "add", subNet.String(), "via", inetGW.String()},
	)
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return l6
}
