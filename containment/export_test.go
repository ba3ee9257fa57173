package containment

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func render(t *testing.T, l List, format string, cfg Configuration) string {
	t.Helper()
	var b bytes.Buffer
	if err := l.Write(&b, format, cfg); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestQuarantineDNS: a quarantined subscriber reaches DNS only on the
// resolvers of containment.quarantine_dns, in every export; with none
// configured, no DNS at all. The exports say so in their comments.
func TestQuarantineDNS(t *testing.T) {
	l, cfg := sampleList(t)
	cfg.QuarantineDNS = []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54"), netip.MustParseAddr("2001:db8::53")}
	nft := render(t, l, "nftables", cfg)
	for _, want := range []string{
		"\t\tip saddr @quarantine ip daddr { 192.0.2.53, 192.0.2.54 } meta l4proto { tcp, udp } th dport 53 accept\n",
		"\t\tip6 saddr @quarantine6 ip6 daddr { 2001:db8::53 } meta l4proto { tcp, udp } th dport 53 accept\n",
		"# quarantine: DNS (udp/tcp 53) only to 192.0.2.53, 192.0.2.54, 2001:db8::53 (containment.quarantine_dns); tcp/443, udp/123 (containment.quarantine_allow); everything else dropped\n",
	} {
		if !strings.Contains(nft, want) {
			t.Errorf("nftables lacks %q:\n%s", want, nft)
		}
	}
	for _, line := range strings.Split(nft, "\n") {
		if strings.Contains(line, "dport 53") && !strings.Contains(line, "daddr") && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			t.Errorf("nftables accepts DNS to any server: %q", line)
		}
	}
	ipset := render(t, l, "ipset", cfg)
	if !strings.Contains(ipset, "# quarantine, quarantine6: drop everything from these sources but DNS (udp/tcp 53) to 192.0.2.53, 192.0.2.54, 2001:db8::53 (containment.quarantine_dns) and tcp/443, udp/123 (containment.quarantine_allow)\n") {
		t.Errorf("ipset does not say what quarantine allows:\n%s", ipset)
	}
	exa := render(t, l, "exabgp", cfg)
	for _, want := range []string{
		"announce flow route { match { destination 192.0.2.53/32; source 203.0.113.3/32; protocol [ udp tcp ]; destination-port =53; } then { accept; } }\n",
		"announce flow route { match { destination 192.0.2.54/32; source 203.0.113.3/32; protocol [ udp tcp ]; destination-port =53; } then { accept; } }\n",
		"announce flow route { match { destination 2001:db8::53/128/0; source 2001:db8::3/128/0; protocol [ udp tcp ]; destination-port =53; } then { accept; } }\n",
	} {
		if !strings.Contains(exa, want) {
			t.Errorf("exabgp lacks %q:\n%s", want, exa)
		}
	}
	// Three for the quarantined sources, three for the walled ones
	// (exported as quarantine).
	if strings.Count(exa, "destination-port =53") != 6 {
		t.Errorf("exabgp: want DNS accepted for each quarantined or walled source and resolver of its family only:\n%s", exa)
	}

	// No resolvers: no DNS at all, and the exports say so.
	cfg.QuarantineDNS = nil
	nft = render(t, l, "nftables", cfg)
	if strings.Contains(strings.ReplaceAll(nft, "# quarantine: no DNS", ""), "dport 53") {
		t.Errorf("nftables lets DNS through with no containment.quarantine_dns:\n%s", nft)
	}
	if !strings.Contains(nft, "# quarantine: no DNS (containment.quarantine_dns is empty); tcp/443, udp/123 (containment.quarantine_allow); everything else dropped\n") {
		t.Errorf("nftables does not say quarantine has no DNS:\n%s", nft)
	}
	if ipset = render(t, l, "ipset", cfg); !strings.Contains(ipset, ", and no DNS (containment.quarantine_dns is empty)") {
		t.Errorf("ipset does not say quarantine has no DNS:\n%s", ipset)
	}
	if exa = render(t, l, "exabgp", cfg); strings.Contains(exa, "=53") || !strings.Contains(exa, "# quarantine: no DNS (containment.quarantine_dns is empty)") {
		t.Errorf("exabgp with no containment.quarantine_dns:\n%s", exa)
	}

	// IPv4 resolvers only: IPv6 quarantine gets no DNS.
	cfg.QuarantineDNS = []netip.Addr{netip.MustParseAddr("192.0.2.53")}
	nft = render(t, l, "nftables", cfg)
	if !strings.Contains(nft, "ip saddr @quarantine ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept") || strings.Contains(nft, "@quarantine6 ip6 daddr") {
		t.Errorf("nftables with an IPv4 resolver only:\n%s", nft)
	}
}

func TestQuarantineDNSValidate(t *testing.T) {
	cfg := DefaultConfiguration()
	if len(cfg.QuarantineDNS) != 0 {
		t.Errorf("default quarantine_dns %v, want none", cfg.QuarantineDNS)
	}
	cfg.QuarantineDNS = []netip.Addr{{}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "containment.quarantine_dns") {
		t.Errorf("an invalid resolver: %v, want an error naming containment.quarantine_dns", err)
	}
}

// TestWalledExports: the walled garden in each export. nftables and the
// ipset comments redirect HTTP to the notice server of the family (but
// not to the remediation sites), accept DNS to the resolvers, the
// remediation sites and the notice server, and drop the rest; ExaBGP
// exports walled as quarantine.
func TestWalledExports(t *testing.T) {
	l, cfg := sampleList(t)
	nft := render(t, l, "nftables", cfg)
	for _, want := range []string{
		"# walled: IPv4 HTTP (tcp/80) redirected to the notice server 192.0.2.80:8080, IPv6 HTTP (tcp/80) redirected to the notice server [2001:db8::80]:80; " +
			"DNS (udp/tcp 53) only to 192.0.2.53, 2001:db8::53 (containment.quarantine_dns); anything to 198.51.100.0/24, 2001:db8:1::/48 (remediation.allow); everything else dropped\n",
		"\tset walled {\n\t\ttype ipv4_addr\n\t\tflags interval, timeout\n\t\telements = { 203.0.113.4 timeout 3000s }\n\t}\n",
		"\tset walled6 {\n\t\ttype ipv6_addr\n\t\tflags interval, timeout\n\t\telements = { 2001:db8::4 timeout 3000s }\n\t}\n",
		"\t\tip saddr @walled ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept\n" +
			"\t\tip saddr @walled ip daddr { 198.51.100.0/24 } accept\n" +
			"\t\tip saddr @walled ip daddr 192.0.2.80 tcp dport 8080 accept\n" +
			"\t\tip saddr @walled drop\n",
		"\t\tip6 saddr @walled6 ip6 daddr { 2001:db8::53 } meta l4proto { tcp, udp } th dport 53 accept\n" +
			"\t\tip6 saddr @walled6 ip6 daddr { 2001:db8:1::/48 } accept\n" +
			"\t\tip6 saddr @walled6 ip6 daddr 2001:db8::80 tcp dport 80 accept\n" +
			"\t\tip6 saddr @walled6 drop\n",
		"\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n" +
			"\t\tip saddr @walled ip daddr != { 198.51.100.0/24 } tcp dport 80 dnat ip to 192.0.2.80:8080\n" +
			"\t\tip6 saddr @walled6 ip6 daddr != { 2001:db8:1::/48 } tcp dport 80 dnat ip6 to [2001:db8::80]:80\n\t}\n}\n",
	} {
		if !strings.Contains(nft, want) {
			t.Errorf("nftables lacks %q:\n%s", want, nft)
		}
	}
	if !strings.HasPrefix(nft[strings.Index(nft, "table inet"):], "table inet wormsign {}\ndelete table inet wormsign\ntable inet wormsign {\n") {
		t.Errorf("nftables does not swap the table atomically:\n%s", nft)
	}

	// The subscriber-facing interfaces restrict the DNAT too.
	withIf := cfg
	withIf.Nftables.Interfaces = []string{"eth1"}
	if s := render(t, l, "nftables", withIf); !strings.Contains(s, "\t\tiifname { \"eth1\" } ip saddr @walled ip daddr != { 198.51.100.0/24 } tcp dport 80 dnat ip to 192.0.2.80:8080\n") {
		t.Errorf("nftables with interfaces:\n%s", s)
	}

	// IPv4 notice server only: IPv6 HTTP is dropped, and the export says so.
	v4 := cfg
	v4.Walled.Redirect = cfg.Walled.Redirect[:1]
	s := render(t, l, "nftables", v4)
	for _, want := range []string{
		"# walled: IPv4 HTTP (tcp/80) redirected to the notice server 192.0.2.80:8080, IPv6 HTTP dropped (no IPv6 address in remediation.notice_redirect); ",
		"\t\t# no ip6 notice server (remediation.notice_redirect): walled ip6 HTTP is dropped\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("nftables with an IPv4 notice server only lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "dnat ip6") || strings.Contains(s, "ip6 daddr 2001:db8::80") {
		t.Errorf("nftables redirects IPv6 without an IPv6 notice server:\n%s", s)
	}
	// None, nor remediation sites: no nat chain at all.
	none := cfg
	none.Walled = WalledConfiguration{}
	s = render(t, l, "nftables", none)
	if strings.Contains(s, "prerouting") || strings.Contains(s, "dnat") || strings.Contains(s, "@walled ip daddr {") && strings.Contains(s, "} accept\n\t\tip saddr @walled drop") {
		t.Errorf("nftables without a notice server or sites:\n%s", s)
	}
	if !strings.Contains(s, "IPv6 HTTP dropped") || !strings.Contains(s, "no remediation site (remediation.allow is empty)") {
		t.Errorf("nftables does not say walled has no notice server nor sites:\n%s", s)
	}

	ipset := render(t, l, "ipset", cfg)
	for _, want := range []string{
		"# walled, walled6: IPv4 HTTP (tcp/80) redirected to the notice server 192.0.2.80:8080, ",
		"#   iptables -t nat -A PREROUTING -m set --match-set walled src -d 198.51.100.0/24 -j ACCEPT\n" +
			"#   iptables -t nat -A PREROUTING -m set --match-set walled src -p tcp --dport 80 -j DNAT --to-destination 192.0.2.80:8080\n",
		"#   ip6tables -t nat -A PREROUTING -m set --match-set walled6 src -p tcp --dport 80 -j DNAT --to-destination [2001:db8::80]:80\n",
		"#   iptables -A FORWARD -m set --match-set walled src -d 192.0.2.53 -p udp --dport 53 -j ACCEPT\n",
		"#   iptables -A FORWARD -m set --match-set walled src -d 198.51.100.0/24 -j ACCEPT\n",
		"#   iptables -A FORWARD -m set --match-set walled src -d 192.0.2.80 -p tcp --dport 8080 -j ACCEPT\n",
		"#   iptables -A FORWARD -m set --match-set walled src -j DROP\n",
		"#   ip6tables -A FORWARD -m set --match-set walled6 src -j DROP\n",
		"create walled hash:ip family inet ", "create walled6 hash:ip family inet6 ",
		"add walled 203.0.113.4 timeout 3000 -exist\n", "add walled6 2001:db8::4 timeout 3000 -exist\n",
	} {
		if !strings.Contains(ipset, want) {
			t.Errorf("ipset lacks %q:\n%s", want, ipset)
		}
	}
	if s := render(t, l, "ipset", none); strings.Contains(s, "DNAT") {
		t.Errorf("ipset redirects without a notice server:\n%s", s)
	}

	exa := render(t, l, "exabgp", cfg)
	for _, want := range []string{
		"# walled: exported as quarantine: FlowSpec cannot DNAT",
		"announce flow route { match { destination 192.0.2.53/32; source 203.0.113.4/32; protocol [ udp tcp ]; destination-port =53; } then { accept; } }\n",
		"announce flow route { match { source 203.0.113.4/32; } then { discard; } }\n",
		"announce flow route { match { source 2001:db8::4/128/0; } then { discard; } }\n",
	} {
		if !strings.Contains(exa, want) {
			t.Errorf("exabgp lacks %q:\n%s", want, exa)
		}
	}

	if plain := render(t, l, "plain", cfg); !strings.Contains(plain, "\n203.0.113.4\n") || !strings.Contains(plain, "\n2001:db8::4\n") {
		t.Errorf("plain lacks the walled entries:\n%s", plain)
	}
	var j JSONList
	if err := json.Unmarshal([]byte(render(t, l, "json", cfg)), &j); err != nil {
		t.Fatal(err)
	}
	walled := 0
	for _, e := range j.Entries {
		if e.Action == ActionWalled && (e.IP == "203.0.113.4" || e.IP == "2001:db8::4") {
			walled++
		}
	}
	if walled != 2 {
		t.Errorf("json has %d walled entries, want 2: %+v", walled, j.Entries)
	}
}
