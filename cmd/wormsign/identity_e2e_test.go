package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/internal/testenv"
)

// TestBlockFollowsCustomer, in the lab with softflowd exporting NetFlow v9
// and a real radclient reporting sessions to `wormsign run`'s RADIUS
// accounting listener: see blockFollowsCustomer.
func TestBlockFollowsCustomer(t *testing.T) {
	radclient := testenv.Tool(t, "radclient")
	radius := fmt.Sprintf("127.0.0.1:%d", testenv.FreeUDPPort(t))
	acct := func(status, user, session string, addr netip.Addr) {
		t.Helper()
		attrs := fmt.Sprintf("Acct-Status-Type = %s\nUser-Name = \"%s\"\nAcct-Session-Id = \"%s\"\nFramed-IP-Address = %s\nNAS-IP-Address = 192.0.2.1\nAcct-Interim-Interval = 300\n",
			status, user, session, addr)
		cmd := exec.Command(radclient, "-x", "-r", "3", "-t", "2", radius, "acct", "lab-secret")
		cmd.Stdin = strings.NewReader(attrs)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Accounting-Response") {
			t.Fatalf("radclient %s %s %s: %v\n%s", status, user, addr, err, out)
		}
	}
	blockFollowsCustomer(t, []string{
		"WORMSIGN_IDENTITY_RADIUS_LISTEN=" + radius,
		"WORMSIGN_IDENTITY_RADIUS_SECRET=lab-secret",
		"WORMSIGN_IDENTITY_RADIUS_CLIENTS=127.0.0.1/32",
	}, "radius", func(_ string, customer, session string, addr netip.Addr) { acct("Start", customer, session, addr) },
		func(_ string, customer, session string, addr netip.Addr) { acct("Stop", customer, session, addr) })
}

// TestBlockFollowsCustomerDHCP is the same with DHCP leases reported by
// deploy/identity/wormsign-lease, called as dnsmasq's --dhcp-script calls
// it, to the binary's lease endpoint; the static map names the clients'
// MACs as customers. (Real Kea and dnsmasq serving a DHCP client through
// the script are identity's TestDHCPKea and TestDHCPDnsmasq.)
func TestBlockFollowsCustomerDHCP(t *testing.T) {
	sh := testenv.Tool(t, "sh")
	testenv.Tool(t, "curl")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "lease-token")
	os.WriteFile(tokenFile, []byte("lease-token\n"), 0o600)
	mapFile := filepath.Join(dir, "subscribers.csv")
	macs := map[string]string{"customer-A": "02:00:00:00:00:0a", "customer-B": "02:00:00:00:00:0b"}
	os.WriteFile(mapFile, []byte("network,subscriber_id\n"+macs["customer-A"]+",customer-A\n"+macs["customer-B"]+",customer-B\n"), 0o644)
	script, err := filepath.Abs("../../deploy/identity/wormsign-lease")
	if err != nil {
		t.Fatal(err)
	}
	lease := func(api, action, customer string, addr netip.Addr) {
		t.Helper()
		cmd := exec.Command(sh, script, action, macs[customer], addr.String(), "pc-"+customer)
		cmd.Env = append(os.Environ(), "WORMSIGN_LEASE_URL=http://"+api+"/api/v1/identity/leases",
			"WORMSIGN_LEASE_TOKEN_FILE="+tokenFile, "WORMSIGN_LEASE_SERVER=192.0.2.1",
			fmt.Sprintf("DNSMASQ_LEASE_EXPIRES=%d", time.Now().Add(time.Hour).Unix()))
		if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
			t.Fatalf("wormsign-lease %s %s %s: %v %s", action, customer, addr, err, out)
		}
	}
	blockFollowsCustomer(t, []string{
		"WORMSIGN_IDENTITY_DHCP_TOKEN_FILE=" + tokenFile,
		"WORMSIGN_IDENTITY_DHCP_CUSTOMER=mac",
		"WORMSIGN_DETECTOR_SUBSCRIBER_MAP=" + mapFile,
	}, "dhcp", func(api, customer, _ string, addr netip.Addr) { lease(api, "add", customer, addr) },
		func(api, customer, _ string, addr netip.Addr) { lease(api, "del", customer, addr) })
}

// blockFollowsCustomer: customer A, a zombie on .a7, is detected and
// blocked under its customer id. A's holding of .a7 ends; customer B gets
// .a7 and A comes back on .a9. The block list then holds .a9 and not
// .a7; B, which sends two mails from .a7, gets no alert and no block (the
// router applies the list with nft); A's incident goes on under the same
// id as it keeps spamming from .a9. start and stop tell the identity
// source (env configures it) that a customer holds, or no longer holds,
// an address; source is what the alerts must name.
func blockFollowsCustomer(t *testing.T, env []string, source string, start, stop func(api, customer, session string, addr netip.Addr)) {
	nft := testenv.Tool(t, "nft")
	lab := testenv.NewLab(t, 3, 80)
	table := fmt.Sprintf("wormsign_lab%d", lab.Index)
	exec.Command(nft, "delete", "table", "inet", table).Run()
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", table).Run() })
	port := testenv.FreeUDPPort(t)
	api := freeAPIAddr(t)
	p := startWormsign(t, append(append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+api,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
		"WORMSIGN_CONTAINMENT_TICK=1s",
		"WORMSIGN_CONTAINMENT_NFTABLES_TABLE="+table,
		"WORMSIGN_CONTAINMENT_NFTABLES_INTERFACES="+lab.RouterIf,
		"WORMSIGN_DETECTOR_SMTP_FANOUT_UPDATE_INTERVAL=1s",
	), env...), "run")
	waitLog(t, p, "wormsign started")
	// .a7 and .a9 of the issue; the lab's second address stays unused.
	a7, a9 := lab.Subscribers[0], lab.Subscribers[2]

	seen := collectAlerts(p)
	blocklist := func() string { return getBlocklist(t, api, "plain") }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 30s for %s; block list %q, alerts %+v", what, blocklist(), seen())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	start(api, "customer-A", "a-1", a7)
	lab.StartSMTPServers(t, append(slices.Clone(lab.Servers[:30]), lab.Servers[40:50]...))
	sf := lab.StartSoftflowd(t, 9, port)
	if n := lab.SMTPSessions(t, a7, lab.Servers[:40]); n != 30 {
		t.Fatalf("zombie A had %d SMTP sessions answered from %s, want 30", n, a7)
	}
	sf.ExpireAll(t)
	waitFor("A blocked on "+a7.String(), func() bool { return blocklist() == a7.String()+"\n" })
	waitFor("A's open alert on stdout", func() bool {
		return slices.ContainsFunc(seen(), func(a alert.Alert) bool { return a.Kind == alert.KindSMTPFanout && a.State == alert.StateOpen })
	})
	var incident string
	for _, a := range seen() {
		if a.Kind == alert.KindSMTPFanout && a.State == alert.StateOpen {
			incident = a.ID
			if a.SubscriberID != "customer-A" || a.SubscriberIP != a7.String() || a.Evidence.Identity == nil ||
				a.Evidence.Identity.Source != source {
				t.Fatalf("open alert %+v (identity %+v), want customer-A on %s from %s", a, a.Evidence.Identity, a7, source)
			}
		}
	}
	if incident == "" {
		t.Fatalf("no smtp_fanout open among %+v", seen())
	}

	// A's session stops; B gets .a7; A reconnects on .a9.
	stop(api, "customer-A", "a-1", a7)
	start(api, "customer-B", "b-1", a7)
	start(api, "customer-A", "a-2", a9)
	waitFor("the block to move to "+a9.String(), func() bool { return blocklist() == a9.String()+"\n" })
	loadBlocklist(t, nft, api)

	// B mails two servers from .a7; A goes on from .a9, where the
	// router now drops its mail.
	if n := lab.SMTPSessions(t, a7, lab.Servers[:2]); n != 2 {
		t.Errorf("customer B had %d SMTP sessions from %s, want 2: the next holder must not be blocked", n, a7)
	}
	if n := lab.SMTPSessions(t, a9, lab.Servers[40:50]); n != 0 {
		t.Errorf("blocked customer A had %d SMTP sessions from %s, want 0", n, a9)
	}
	sf.ExpireAll(t)
	waitFor("A's incident to go on from "+a9.String(), func() bool {
		for _, a := range seen() {
			if a.ID == incident && a.State == alert.StateUpdate && a.SubscriberIP == a9.String() {
				return true
			}
		}
		return false
	})
	for _, a := range seen() {
		if a.SubscriberID == "customer-B" || (a.SubscriberIP == a7.String() && a.SubscriberID != "customer-A") {
			t.Errorf("alert %s %s for %s (%s): customer B did nothing wrong", a.Kind, a.State, a.SubscriberIP, a.SubscriberID)
		}
		if a.Kind == alert.KindSMTPFanout && a.ID != incident {
			t.Errorf("second smtp_fanout incident %s for %s (%s), want A's one incident %s", a.ID, a.SubscriberIP, a.SubscriberID, incident)
		}
		if a.ID == incident && a.SubscriberIP == a9.String() {
			if id := a.Evidence.Identity; id == nil || id.Source != source || !id.Changed || len(id.Addresses) != 2 {
				t.Errorf("update on %s: identity %+v, want %s and the change inside the window", a9, id, source)
			}
		}
	}
	if got := blocklist(); got != a9.String()+"\n" {
		t.Errorf("block list %q at the end, want only %s", got, a9)
	}
	// The console names the customer and its address history.
	req, _ := http.NewRequest("GET", "http://"+api+"/api/v1/customers/customer-A", nil)
	req.Header.Set("Authorization", "Bearer lab-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Holdings []struct {
			Prefix    string     `json:"prefix"`
			Source    string     `json:"source"`
			End       *time.Time `json:"end"`
			EndReason string     `json:"end_reason"`
		} `json:"holdings"`
		Incidents []struct {
			ID string `json:"id"`
		} `json:"incidents"`
	}
	json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	var ended, open bool
	for _, h := range view.Holdings {
		ended = ended || (h.Prefix == a7.String()+"/32" && h.End != nil && h.Source == source)
		open = open || (h.Prefix == a9.String()+"/32" && h.End == nil && h.Source == source)
	}
	if !ended || !open || len(view.Incidents) == 0 || view.Incidents[0].ID != incident {
		t.Errorf("console customer view %+v, want %s ended, %s held, incident %s", view, a7, a9, incident)
	}
	p.stop(t)
}
