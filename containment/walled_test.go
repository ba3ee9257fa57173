package containment

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// labServers answers in the lab's internet namespace: UDP on the
// resolver's port 53, and TCP on ports 80 and 443 of the remediation site
// and of an ordinary internet server, each with a word of its own.
const labServers = `
import socket, sys, threading
resolver, site, web = sys.argv[1:4]
def tcp(addr, port, reply):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port))
    l.listen(16)
    def serve():
        while True:
            c, _ = l.accept()
            c.settimeout(2)
            try:
                c.recv(4096)
                c.sendall(reply.encode())
            except OSError:
                pass
            c.close()
    threading.Thread(target=serve, daemon=True).start()
def udp(addr, port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    def serve():
        while True:
            d, a = u.recvfrom(512)
            u.sendto(b"answer:" + d, a)
    threading.Thread(target=serve, daemon=True).start()
udp(resolver, 53)
tcp(site, 80, "site-80")
tcp(site, 443, "site-443")
tcp(web, 80, "web-80")
tcp(web, 443, "web-443")
print("ready", flush=True)
sys.stdin.read()
`

// labClient tries one exchange from a subscriber's address and prints
// what came back, or timeout or refused.
const labClient = `
import socket, sys
proto, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.bind((src, 0))
        # Connected, so that a port unreachable is a refusal, not a timeout.
        s.connect((dst, port))
        s.send(b"query")
        print(s.recv(512).decode())
    else:
        s = socket.create_connection((dst, port), 2, (src, 0))
        s.settimeout(2)
        s.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        print(data.decode())
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e)
`

// TestWalledGardenTraffic loads the nftables export of a list with the
// lab's first subscriber walled into the lab's router (the root
// namespace, in a table of the lab's own, matching only packets from the
// subscriber veth, deleted at cleanup), and checks what the walled
// subscriber still reaches: its HTTP to anywhere lands on the notice
// server, which sees the subscriber's own address; DNS to the resolver is
// answered; the remediation site passes on any port, HTTP included; the
// rest is dropped (a timeout, not a refusal). The second subscriber is
// untouched.
func TestWalledGardenTraffic(t *testing.T) {
	nft := testenv.Tool(t, "nft")
	python := testenv.Tool(t, "python3")
	lab := testenv.NewLab(t, 2, 3)
	walled, free := lab.Subscribers[0], lab.Subscribers[1]
	resolver, site, web := lab.Servers[0], lab.Servers[1], lab.Servers[2]
	table := fmt.Sprintf("wormsign_walled_lab%d", lab.Index)
	exec.Command(nft, "delete", "table", "inet", table).Run()
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", table).Run() })

	// The notice server, on the router itself: it says whom it saw.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(lab.RouterAddr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	notice := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "notice for %s", r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go notice.Serve(ln)
	t.Cleanup(func() { notice.Close() })

	srv := lab.Command(lab.Internet, python, "-c", labServers, resolver.String(), site.String(), web.String())
	stdin, err := srv.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); srv.Process.Kill(); srv.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("lab servers did not start: %q %v", line, err)
	}

	cfg := DefaultConfiguration()
	cfg.Nftables = NftablesConfiguration{Table: table, Interfaces: []string{lab.RouterIf}}
	cfg.QuarantineDNS = []netip.Addr{resolver}
	cfg.Walled = WalledConfiguration{
		Redirect: []netip.AddrPort{netip.MustParseAddrPort(ln.Addr().String())},
		Allow:    []netip.Prefix{netip.PrefixFrom(site, 32)},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	l := MakeList([]Entry{{Prefix: netip.PrefixFrom(walled, 32), State: StateActive, Action: ActionWalled,
		IncidentID: "case-lab:walled:1", Kind: KindCase, Actor: "test", Since: now, Expires: now.Add(time.Hour)}}, now, false)
	var b strings.Builder
	if err := l.Write(&b, "nftables", cfg); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "walled.nft")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nft, "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s\nscript:\n%s", err, out, b.String())
	}

	try := func(proto string, from, to netip.Addr, port int) string {
		t.Helper()
		out, err := lab.Command(lab.Subscriber, python, "-c", labClient, proto, from.String(), to.String(), fmt.Sprint(port)).CombinedOutput()
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct {
		what      string
		proto     string
		from, to  netip.Addr
		port      int
		want, not string
	}{
		// The resolver has no web server: only the redirect answers.
		{"walled HTTP to an address without a server lands on the notice server", "tcp", walled, resolver, 80,
			"notice for " + walled.String() + ":", ""},
		{"walled HTTP to a web server lands on the notice server", "tcp", walled, web, 80, "notice for " + walled.String() + ":", "web-80"},
		{"walled DNS to the resolver is answered", "udp", walled, resolver, 53, "answer:query", ""},
		{"walled DNS to another server is dropped", "udp", walled, web, 53, "timeout", ""},
		{"walled HTTP to the remediation site is not redirected", "tcp", walled, site, 80, "site-80", "notice"},
		{"walled reaches the remediation site on any port", "tcp", walled, site, 443, "site-443", ""},
		{"walled HTTPS elsewhere is dropped", "tcp", walled, web, 443, "timeout", ""},
		{"the other subscriber's HTTP is not redirected", "tcp", free, web, 80, "web-80", "notice"},
		{"the other subscriber's HTTPS passes", "tcp", free, web, 443, "web-443", ""},
	} {
		got := try(tc.proto, tc.from, tc.to, tc.port)
		if !strings.Contains(got, tc.want) || tc.not != "" && strings.Contains(got, tc.not) {
			t.Errorf("%s (%s %s -> %s:%d): got %q, want %q", tc.what, tc.proto, tc.from, tc.to, tc.port, got, tc.want)
		}
	}
}
