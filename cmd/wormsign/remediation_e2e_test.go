package main

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// labPeer is what a lab host does for the remediation test, in Python:
// get (HTTP GET, prints the body), release (GET the page, then POST its
// form), tcp (connect), dns (an A query, checks the answer's id).
const labPeer = `import http.client, re, socket, struct, sys
mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
def get(path="/", method="GET", body=None):
    c = http.client.HTTPConnection(dst, 80, timeout=4, source_address=(src, 0))
    c.request(method, path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"} if body else {})
    r = c.getresponse()
    return r.status, r.read().decode()
try:
    if mode == "get":
        status, body = get()
        print(status); print(body)
    elif mode == "release":
        status, body = get()
        m = re.search(r'name="token" value="([0-9a-f]+)"', body)
        token = m.group(1) if m else sys.argv[4]
        status, body = get("/wormsign/release", "POST", "token=" + token)
        print(status); print(body)
    elif mode == "tcp":
        socket.create_connection((dst, int(sys.argv[4])), 3, (src, 0)).close()
        print("connected")
    elif mode == "dns":
        q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04help\x03isp\x07example\x00" + struct.pack(">HH", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(3)
        s.sendto(q, (dst, 53)); d = s.recv(512)
        print("answered" if d[:2] == b"\x12\x34" else "garbled")
except OSError as e:
    print("failed", type(e).__name__, e)
`

type labCase struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// TestRemediationWalledGarden is the remediation ladder on the lab, through
// `wormsign run`, a real Postfix relay and the nftables export loaded into
// the lab's router (the root namespace, in a table of the lab's own that
// matches only packets from the subscriber veth, deleted at cleanup):
//   - the zombie is notified by mail (the evidence in it), then walled: its
//     HTTP to any address lands on the notice page (a real request through
//     the DNAT, the page naming its case), DNS to the resolver and TCP to
//     the remediation site pass, other traffic is dropped; its neighbour's
//     HTTP is not redirected;
//   - it presses the button (a POST from its own address, through the
//     DNAT) and its traffic passes again;
//   - it relapses: straight to the block (quarantine), HTTP no longer
//     reaches even the notice page;
//   - the desk releases; it relapses again and is walled, and the button is
//     refused (self_release_max 1) with whom to call;
//   - the desk marks a false positive: released and closed, the list empty.
func TestRemediationWalledGarden(t *testing.T) {
	nft := testenv.Tool(t, "nft")
	python := testenv.Tool(t, "python3")
	dnsmasq := testenv.Tool(t, "dnsmasq")
	mta := testenv.StartPostfix(t, testenv.PostfixConfig{})
	lab := testenv.NewLab(t, 2, 70)
	port := testenv.FreeUDPPort(t)
	api := freeAPIAddr(t)
	table := fmt.Sprintf("wormsign_lab%d", lab.Index)
	exec.Command(nft, "delete", "table", "inet", table).Run()
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", table).Run() })
	zombie, user := lab.Subscribers[0], lab.Subscribers[1]
	// The notice server listens on the router's own address on the
	// subscribers' side, where the DNAT sends the walled HTTP.
	notice := netip.AddrPortFrom(lab.RouterAddr(), uint16(8000+lab.Index))
	web, resolver, site, other := lab.Servers[60], lab.Servers[61], lab.Servers[62], lab.Servers[63]

	dir := t.TempDir()
	contacts := filepath.Join(dir, "contacts.csv")
	os.WriteFile(contacts, []byte("subscriber_id,email,name,language\n"+zombie.String()+",zed@customers.example,Zed Customer,en\n"), 0o600)
	peer := filepath.Join(dir, "peer.py")
	os.WriteFile(peer, []byte(labPeer), 0o644)
	run := func(from netip.Addr, args ...string) string {
		out, _ := lab.Command(lab.Subscriber, python, append([]string{peer, args[0], from.String()}, args[1:]...)...).CombinedOutput()
		return html.UnescapeString(string(out))
	}

	// The internet: a resolver, TCP services on the remediation site and
	// on another host.
	dns := lab.Command(lab.Internet, dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--user=root",
		"--listen-address="+resolver.String(), "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts", "--address=/isp.example/198.18.0.99")
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	for _, a := range []netip.Addr{site, other} {
		srv := lab.Command(lab.Internet, python, "-c", fmt.Sprintf("import socket\ns=socket.create_server(('%s',443))\nwhile True: s.accept()[0].close()", a))
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	}

	p := startWormsign(t, append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+api,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_DETECTOR_SMTP_FANOUT_UPDATE_INTERVAL=1s",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
		"WORMSIGN_CONTAINMENT_TICK=1s",
		"WORMSIGN_CONTAINMENT_NFTABLES_TABLE="+table,
		"WORMSIGN_CONTAINMENT_NFTABLES_INTERFACES="+lab.RouterIf,
		"WORMSIGN_CONTAINMENT_QUARANTINE_DNS="+resolver.String(),
		"WORMSIGN_REMEDIATION_ENABLED=true",
		"WORMSIGN_REMEDIATION_TICK=1s",
		"WORMSIGN_REMEDIATION_LADDER=notify:0s,walled:3s,block:24h",
		"WORMSIGN_REMEDIATION_SELF_RELEASE_MAX=1",
		"WORMSIGN_REMEDIATION_RELAPSE_GRACE=1s",
		"WORMSIGN_REMEDIATION_NOTICE_LISTEN="+notice.String(),
		"WORMSIGN_REMEDIATION_ALLOW="+site.String()+"/32",
		"WORMSIGN_REMEDIATION_CONTACTS_CSV="+contacts,
		"WORMSIGN_REMEDIATION_DESK_NAME=Example ISP abuse desk",
		"WORMSIGN_REMEDIATION_DESK_PHONE=+49 30 1234567",
		"WORMSIGN_REMEDIATION_SMTP_ADDR="+mta.Addr(),
		"WORMSIGN_REMEDIATION_SMTP_FROM=abuse@isp.example",
		"WORMSIGN_REMEDIATION_SMTP_SERVER_NAME="+mta.ServerName(),
		"WORMSIGN_REMEDIATION_SMTP_CA_FILE="+mta.CertFile(),
		"WORMSIGN_REMEDIATION_SMTP_USERNAME="+mta.User(),
		"WORMSIGN_REMEDIATION_SMTP_PASSWORD="+mta.Password(),
	), "run")
	waitLog(t, p, "wormsign started")

	call := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, "http://"+api+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer lab-token")
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}
	zombieCase := func() labCase {
		_, raw := call("GET", "/api/v1/cases?customer="+zombie.String(), "")
		var out struct{ Cases []labCase }
		json.Unmarshal(raw, &out)
		if len(out.Cases) == 0 {
			return labCase{}
		}
		return out.Cases[0]
	}
	waitState := func(state string) labCase {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if c := zombieCase(); c.State == state {
				return c
			}
			if time.Now().After(deadline) {
				_, raw := call("GET", "/api/v1/cases", "")
				t.Fatalf("zombie's case not %s within 60 s: %s", state, raw)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	load := func() { loadBlocklist(t, nft, api) }
	reached := func(from, to netip.Addr, port int) bool {
		return strings.HasPrefix(run(from, "tcp", to.String(), fmt.Sprint(port)), "connected")
	}

	// The zombie spams: SMTP servers on 30 hosts, 10 refusing.
	lab.StartSMTPServers(t, lab.Servers[:30])
	sf := lab.StartSoftflowd(t, 9, port)
	spam := func(targets []netip.Addr) {
		// Past remediation.relapse_grace since a release: the flows are
		// new activity, not the tail of what opened the case.
		time.Sleep(2 * time.Second)
		lab.SMTPSessions(t, zombie, targets)
		sf.ExpireAll(t)
	}
	spam(append(slices.Clone(lab.Servers[30:40]), lab.Servers[:30]...))

	// Notified: the mail went through Postfix with the evidence.
	mails := mta.WaitMessages(t, 1, 60*time.Second)
	c := waitState("walled")
	if body := mails[0].Body; !strings.Contains(body, zombie.String()) || !strings.Contains(body, "different destinations") ||
		!strings.Contains(body, c.ID) || mails[0].Header.Get("To") != `"Zed Customer" <zed@customers.example>` {
		t.Errorf("notice:\n%v\n%s", mails[0].Header, body)
	}
	load()

	// Walled: HTTP to any address is the notice page.
	page := run(zombie, "get", web.String())
	if !strings.HasPrefix(page, "200") || !strings.Contains(page, "Security notice") ||
		!strings.Contains(page, c.ID) || !strings.Contains(page, "I have cleaned my computer") {
		t.Errorf("walled zombie's HTTP did not land on its notice page:\n%s", page)
	}
	// The form of the page as the customer first saw it: a tab left open.
	form := regexp.MustCompile(`name="token" value="([0-9a-f]+)"`).FindStringSubmatch(page)
	if form == nil {
		t.Fatalf("no release form on the notice page:\n%s", page)
	}
	if out := run(user, "get", web.String()); strings.Contains(out, "Security notice") {
		t.Errorf("the neighbour's HTTP was redirected:\n%s", out)
	}
	if out := run(zombie, "dns", resolver.String()); !strings.HasPrefix(out, "answered") {
		t.Errorf("walled zombie's DNS to the resolver: %s", out)
	}
	if !reached(zombie, site, 443) {
		t.Errorf("walled zombie cannot reach the remediation site")
	}
	if reached(zombie, other, 443) {
		t.Errorf("walled zombie reached %s:443, want dropped", other)
	}
	if !reached(user, other, 443) {
		t.Errorf("the neighbour cannot reach %s:443", other)
	}

	// The button, from the zombie's own address through the DNAT.
	if out := run(zombie, "release", web.String(), "none"); !strings.HasPrefix(out, "200") || !strings.Contains(out, "Your connection is released") {
		t.Fatalf("self-release:\n%s", out)
	}
	waitState("released")
	load()
	if !reached(zombie, other, 443) {
		t.Errorf("self-released zombie cannot reach %s:443", other)
	}
	if out := run(zombie, "get", web.String()); strings.Contains(out, "Security notice") {
		t.Errorf("self-released zombie's HTTP still redirected:\n%s", out)
	}

	// Relapse after the self-release: straight to the block.
	spam(lab.Servers[40:50])
	waitState("blocked")
	load()
	if out := run(zombie, "get", web.String()); strings.Contains(out, "Security notice") {
		t.Errorf("blocked zombie's HTTP reached the notice page:\n%s", out)
	}
	if reached(zombie, other, 443) {
		t.Errorf("blocked zombie reached %s:443", other)
	}
	if out := run(zombie, "dns", resolver.String()); !strings.HasPrefix(out, "answered") {
		t.Errorf("blocked zombie's DNS to the resolver: %s", out)
	}

	// The desk releases; the next relapse walls again (a second notice),
	// and the one self-release is spent.
	if code, raw := call("POST", "/api/v1/cases/"+c.ID+"/release", `{"note":"called the customer"}`); code != 200 {
		t.Fatalf("desk release: %d %s", code, raw)
	}
	waitState("released")
	load()
	spam(lab.Servers[50:60])
	waitState("walled")
	load()
	if out := run(zombie, "get", web.String()); strings.Contains(out, "I have cleaned my computer") || !strings.Contains(out, "+49 30 1234567") {
		t.Errorf("page past the self-release limit:\n%s", out)
	}
	// The button of the page left open is refused, and says whom to call.
	if out := run(zombie, "release", web.String(), form[1]); !strings.HasPrefix(out, "403") ||
		!strings.Contains(out, "Only Example ISP abuse desk can release it now: call +49 30 1234567") {
		t.Errorf("self-release past the limit:\n%s", out)
	}
	if c := zombieCase(); c.State != "walled" {
		t.Errorf("case %s after the refused release, want walled", c.State)
	}
	mta.WaitMessages(t, 2, 60*time.Second)

	// A false positive: everything released, the case closed.
	if code, raw := call("POST", "/api/v1/cases/"+c.ID+"/false_positive", `{"note":"a mailing list server"}`); code != 200 {
		t.Fatalf("false positive: %d %s", code, raw)
	}
	waitState("false_positive")
	if l := getBlocklist(t, api, "plain"); l != "" {
		t.Errorf("block list after the false positive: %q, want empty", l)
	}
	load()
	if !reached(zombie, other, 443) {
		t.Errorf("zombie cannot reach %s:443 after the false positive", other)
	}
	_, raw := call("GET", "/api/v1/cases/"+c.ID, "")
	var view struct {
		Events []struct{ Type, Actor string }
	}
	json.Unmarshal(raw, &view)
	var types []string
	for _, e := range view.Events {
		types = append(types, e.Type+"/"+e.Actor)
	}
	for _, want := range []string{"open/policy", "notify/policy", "walled/policy", "self_release/customer", "reopen/policy",
		"blocked/policy", "released/admin", "release_denied/customer", "false_positive/admin"} {
		if !slices.Contains(types, want) {
			t.Errorf("history %v lacks %s", types, want)
		}
	}
	p.stop(t)
}
