package containment

import (
	"bytes"
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
	if strings.Count(exa, "destination-port =53") != 3 {
		t.Errorf("exabgp: want DNS accepted for each quarantined source and resolver of its family only:\n%s", exa)
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
