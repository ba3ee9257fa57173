package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/internal/testenv"
)

// TestCGNATCountsPerCustomer: two customers behind one public address of
// a carrier-grade NAT (nft SNAT in the lab's router, each inside address
// to a port range of its own), softflowd exporting what it sees on the
// outside, where every flow has the public address. The NAT's port-block
// allocations reach the collector as IPFIX NAT logging records (RFC 8158,
// built to the RFC: no NAT here exports them), RADIUS names the inside
// addresses' customers. Fan-out is then counted per customer: the zombie
// customer behind the NAT is found and blocked on its inside address, the
// other customer, whose mail leaves from the same public address, is not.
func TestCGNATCountsPerCustomer(t *testing.T) {
	radclient := testenv.Tool(t, "radclient")
	nft := testenv.Tool(t, "nft")
	lab := testenv.NewLab(t, 2, 40)
	zombie, user := lab.Subscribers[0], lab.Subscribers[1]
	// 203.0.113.240-255 is outside every lab's /28.
	public := netip.AddrFrom4([4]byte{203, 0, 113, byte(240 + lab.Index)})
	natTable := fmt.Sprintf("wormsign_cgnat%d", lab.Index)
	blockTable := fmt.Sprintf("wormsign_lab%d", lab.Index)
	for _, tbl := range []string{"ip " + natTable, "inet " + blockTable} {
		exec.Command(nft, append([]string{"delete", "table"}, strings.Fields(tbl)...)...).Run()
		t.Cleanup(func() { exec.Command(nft, append([]string{"delete", "table"}, strings.Fields(tbl)...)...).Run() })
	}
	rules := fmt.Sprintf(`table ip %s {
	chain post {
		type nat hook postrouting priority srcnat;
		oifname "%[2]s" ip saddr %[3]s meta l4proto { tcp, udp } snat to %[5]s:40000-40999
		oifname "%[2]s" ip saddr %[4]s meta l4proto { tcp, udp } snat to %[5]s:41000-41999
		oifname "%[2]s" ip saddr { %[3]s, %[4]s } snat to %[5]s
	}
}
`, natTable, lab.InternetIf, zombie, user, public)
	natFile := filepath.Join(t.TempDir(), "cgnat.nft")
	os.WriteFile(natFile, []byte(rules), 0o644)
	if out, err := exec.Command(nft, "-f", natFile).CombinedOutput(); err != nil {
		t.Fatalf("nft -f cgnat: %v\n%s", err, out)
	}

	port := testenv.FreeUDPPort(t)
	radius := fmt.Sprintf("127.0.0.1:%d", testenv.FreeUDPPort(t))
	api := freeAPIAddr(t)
	p := startWormsign(t, append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+api,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
		"WORMSIGN_CONTAINMENT_NFTABLES_TABLE="+blockTable,
		"WORMSIGN_CONTAINMENT_NFTABLES_INTERFACES="+lab.RouterIf,
		"WORMSIGN_IDENTITY_CGNAT_ENABLED=true",
		"WORMSIGN_IDENTITY_RADIUS_LISTEN="+radius,
		"WORMSIGN_IDENTITY_RADIUS_SECRET=lab-secret",
		"WORMSIGN_IDENTITY_RADIUS_CLIENTS=127.0.0.1/32",
	), "run")
	waitLog(t, p, "wormsign started")
	for customer, addr := range map[string]netip.Addr{"customer-A": zombie, "customer-B": user} {
		cmd := exec.Command(radclient, "-r", "3", "-t", "2", radius, "acct", "lab-secret")
		cmd.Stdin = strings.NewReader(fmt.Sprintf("Acct-Status-Type = Start\nUser-Name = \"%s\"\nAcct-Session-Id = \"%s-1\"\nFramed-IP-Address = %s\n", customer, customer, addr))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("radclient: %v\n%s", err, out)
		}
	}
	// The NAT's port-block allocations, as its IPFIX NAT logging would
	// tell them to the collector.
	now := uint64(time.Now().Add(-10 * time.Second).UnixMilli())
	allocation := func(inside netip.Addr, lo, hi uint16) []byte {
		return nfbuild.Cat(nfbuild.IP(inside.String()), nfbuild.IP(public.String()), nfbuild.U16(lo), nfbuild.U16(hi),
			[]byte{16}, nfbuild.U64(now)) // natEvent 16: port block allocation
	}
	msg := nfbuild.Message{Version: 10, Domain: 1, UnixSecs: uint32(time.Now().Unix()), Sets: [][]byte{
		// sourceIPv4Address, postNATSourceIPv4Address, portRangeStart,
		// portRangeEnd, natEvent, observationTimeMilliseconds
		nfbuild.Set(2, nfbuild.Template(300, 8, 4, 225, 4, 361, 2, 362, 2, 230, 1, 323, 8)),
		nfbuild.Set(300, allocation(zombie, 40000, 40999), allocation(user, 41000, 41999)),
	}}.Bytes()
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(msg)
	conn.Close()

	seen := collectAlerts(p)
	lab.StartSMTPServers(t, lab.Servers[:30])
	sf := lab.StartSoftflowdOn(t, lab.InternetIf, 9, port)
	if n := lab.SMTPSessions(t, zombie, lab.Servers[:30]); n != 30 {
		t.Fatalf("zombie had %d SMTP sessions through the NAT, want 30", n)
	}
	if n := lab.SMTPSessions(t, user, lab.Servers[:3]); n != 3 {
		t.Fatalf("ordinary user had %d SMTP sessions through the NAT, want 3", n)
	}
	sf.ExpireAll(t)
	deadline := time.Now().Add(30 * time.Second)
	var opened alert.Alert
	for opened.ID == "" {
		for _, a := range seen() {
			if a.Kind == alert.KindSMTPFanout && a.State == alert.StateOpen {
				opened = a
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no smtp_fanout alert for the customer behind the NAT")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if opened.SubscriberID != "customer-A" || opened.SubscriberIP != zombie.String() {
		t.Errorf("alert for %s (%s), want customer-A on its inside address %s", opened.SubscriberIP, opened.SubscriberID, zombie)
	}
	time.Sleep(2 * time.Second)
	for _, a := range seen() {
		if a.SubscriberID != "customer-A" || a.SubscriberIP == public.String() {
			t.Errorf("alert %s %s for %s (%s): only customer A, on its inside address, did wrong", a.Kind, a.State, a.SubscriberIP, a.SubscriberID)
		}
	}

	// The block lands on the inside address, where the router applies
	// it before the NAT: the zombie's mail stops, the neighbour's not.
	for getBlocklist(t, api, "plain") != zombie.String()+"\n" {
		if time.Now().After(deadline) {
			t.Fatalf("block list %q, want only the inside address %s", getBlocklist(t, api, "plain"), zombie)
		}
		time.Sleep(200 * time.Millisecond)
	}
	loadBlocklist(t, nft, api)
	if n := lab.SMTPSessions(t, zombie, lab.Servers[:2]); n != 0 {
		t.Errorf("blocked zombie had %d SMTP sessions, want 0", n)
	}
	if n := lab.SMTPSessions(t, user, lab.Servers[:2]); n != 2 {
		t.Errorf("its neighbour behind the same public address had %d SMTP sessions, want 2", n)
	}
	p.stop(t)
}
