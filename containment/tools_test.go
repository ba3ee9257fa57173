package containment

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// sampleList has an entry in each of the six sets, and a walled garden
// with a notice server in each family.
func sampleList(t *testing.T) (List, Configuration) {
	t.Helper()
	cfg := testConfig()
	cfg.QuarantineAllow = []PortRule{{"tcp", 443}, {"udp", 123}}
	cfg.QuarantineDNS = []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}
	cfg.WidestPrefixV4 = 28
	cfg.Walled = WalledConfiguration{
		Redirect: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.80:8080"), netip.MustParseAddrPort("[2001:db8::80]:80")},
		// The /32 inside the /24 is left out: nft refuses overlapping
		// intervals.
		Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("198.51.100.7/32"),
			netip.MustParsePrefix("2001:db8:1::/48")},
	}
	p := NewPolicy(cfg, nil, nil)
	now := at(0)
	for _, e := range []struct{ pfx, action string }{
		{"203.0.113.2/32", ActionBlockSMTP}, {"203.0.113.16/28", ActionBlockSMTP},
		{"2001:db8::2/128", ActionBlockSMTP}, {"203.0.113.3/32", ActionQuarantine}, {"2001:db8::3/128", ActionQuarantine},
		{"203.0.113.4/32", ActionWalled}, {"2001:db8::4/128", ActionWalled},
	} {
		if _, err := p.Add(netip.MustParsePrefix(e.pfx), e.action, "carol", "", time.Hour, now); err != nil {
			t.Fatal(err)
		}
	}
	return MakeList(p.Entries(), now.Add(10*time.Minute), false), cfg
}

// netns makes a network namespace for the test, deleted at cleanup.
func netns(t *testing.T) string {
	t.Helper()
	testenv.Root(t)
	testenv.Tool(t, "ip")
	name := fmt.Sprintf("wsct%d", os.Getpid())
	exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func inNS(t *testing.T, ns string, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s\ninput:\n%s", strings.Join(args, " "), err, out, stdin)
	}
	return string(out)
}

func TestNftablesLoads(t *testing.T) {
	testenv.Tool(t, "nft")
	ns := netns(t)
	l, cfg := sampleList(t)
	common := []string{"set smtp_block ", "set smtp_block6 ", "set quarantine ", "set quarantine6 ", "set walled ", "set walled6 ",
		"203.0.113.2 timeout", "203.0.113.16/28 timeout", "2001:db8::2 timeout", "203.0.113.3 timeout", "2001:db8::3 timeout",
		"203.0.113.4 timeout", "2001:db8::4 timeout",
		"hook forward", "@smtp_block tcp dport 25 drop", "@quarantine drop", "tcp dport 443 accept",
		"@quarantine ip daddr 192.0.2.53 meta l4proto { tcp, udp } th dport 53 accept",
		"@quarantine6 ip6 daddr 2001:db8::53 meta l4proto { tcp, udp } th dport 53 accept",
		"@walled ip daddr 192.0.2.53 meta l4proto { tcp, udp } th dport 53 accept",
		"@walled6 ip6 daddr 2001:db8::53 meta l4proto { tcp, udp } th dport 53 accept",
		"ip saddr @walled ip daddr 198.51.100.0/24 accept", "ip6 saddr @walled6 ip6 daddr 2001:db8:1::/48 accept",
		"ip saddr @walled drop", "ip6 saddr @walled6 drop"}
	for _, tc := range []struct {
		name     string
		redirect []netip.AddrPort
		want     []string
		not      []string
	}{
		{"both families", cfg.Walled.Redirect, []string{"hook prerouting", "ip daddr 192.0.2.80 tcp dport 8080 accept",
			"ip6 daddr 2001:db8::80 tcp dport 80 accept",
			"ip saddr @walled ip daddr != 198.51.100.0/24 tcp dport 80 dnat ip to 192.0.2.80:8080",
			"ip6 saddr @walled6 ip6 daddr != 2001:db8:1::/48 tcp dport 80 dnat ip6 to [2001:db8::80]:80"}, nil},
		{"IPv4 only", cfg.Walled.Redirect[:1], []string{"hook prerouting", "dnat ip to 192.0.2.80:8080"}, []string{"dnat ip6"}},
		{"none", nil, nil, []string{"prerouting", "dnat"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cfg
			cfg.Walled.Redirect = tc.redirect
			var b bytes.Buffer
			if err := l.Write(&b, "nftables", cfg); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "wormsign.nft")
			os.WriteFile(file, b.Bytes(), 0o644)
			// Twice: the second load replaces the first.
			inNS(t, ns, nil, "nft", "-f", file)
			inNS(t, ns, nil, "nft", "-f", file)
			out := inNS(t, ns, nil, "nft", "list", "table", "inet", "wormsign")
			for _, want := range append(common, tc.want...) {
				if !strings.Contains(out, want) {
					t.Errorf("nft list lacks %q:\n%s", want, out)
				}
			}
			for _, not := range tc.not {
				if strings.Contains(out, not) {
					t.Errorf("nft list has %q:\n%s", not, out)
				}
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "dport 53") && !strings.Contains(line, "daddr") {
					t.Errorf("quarantine or walled accepts DNS to any server: %q", line)
				}
			}
			if n := strings.Count(out, "table inet wormsign"); n != 1 {
				t.Errorf("%d tables after two loads, want 1", n)
			}
			// An empty list empties the sets.
			b.Reset()
			MakeList(nil, at(0), false).Write(&b, "nftables", cfg)
			os.WriteFile(file, b.Bytes(), 0o644)
			inNS(t, ns, nil, "nft", "-f", file)
			if out := inNS(t, ns, nil, "nft", "list", "table", "inet", "wormsign"); strings.Contains(out, "203.0.113.2") || strings.Contains(out, "203.0.113.4") {
				t.Errorf("entries left after loading an empty list:\n%s", out)
			}
		})
	}
}

func TestIpsetRestores(t *testing.T) {
	testenv.Tool(t, "ipset")
	ns := netns(t)
	l, cfg := sampleList(t)
	var b bytes.Buffer
	if err := l.Write(&b, "ipset", cfg); err != nil {
		t.Fatal(err)
	}
	inNS(t, ns, b.Bytes(), "ipset", "restore")
	inNS(t, ns, b.Bytes(), "ipset", "restore") // again: -exist, flush
	out := inNS(t, ns, nil, "ipset", "list")
	for _, want := range []string{"Name: smtp_block\n", "Name: smtp_block6\n", "Name: quarantine\n", "Name: quarantine6\n",
		"Name: walled\n", "Name: walled6\n", "family inet6", "203.0.113.2 timeout", "203.0.113.17 timeout", "203.0.113.3 timeout",
		"2001:db8::2 timeout", "2001:db8::3 timeout", "203.0.113.4 timeout", "2001:db8::4 timeout"} {
		if !strings.Contains(out, want) {
			t.Errorf("ipset list lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "203.0.113.2 timeout"); n != 1 {
		t.Errorf("203.0.113.2 listed %d times after two restores, want 1", n)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "exec", ns, "ipset", "destroy").Run() })
}

func TestExaBGPValidates(t *testing.T) {
	bin := testenv.Tool(t, "exabgp")
	l, cfg := sampleList(t)
	var b bytes.Buffer
	if err := l.Write(&b, "exabgp-conf", cfg); err != nil {
		t.Fatal(err)
	}
	conf := "neighbor 127.0.0.2 {\n\trouter-id 127.0.0.1;\n\tlocal-address 127.0.0.1;\n\tlocal-as 64512;\n\tpeer-as 64512;\n" +
		"\tfamily {\n\t\tipv4 flow;\n\t\tipv6 flow;\n\t}\n" + indent(b.String()) + "}\n"
	file := filepath.Join(t.TempDir(), "exabgp.conf")
	os.WriteFile(file, []byte(conf), 0o644)
	out, err := exec.Command(bin, "--validate", file).CombinedOutput()
	if err != nil {
		t.Fatalf("exabgp --validate: %v\n%s\nconfiguration:\n%s", err, out, conf)
	}
	// The API form carries the same routes.
	b.Reset()
	l.Write(&b, "exabgp", cfg)
	if n := strings.Count(b.String(), "announce flow route { match { source "); n != 7 {
		t.Errorf("%d announce lines, want 7:\n%s", n, b.String())
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("\t" + l + "\n")
	}
	return b.String()
}
