package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreeRADIUSProxy is a FreeRADIUS server (Debian's freeradius, 3.x) that
// proxies every Accounting-Request its NAS sends to one home server, the
// way an ISP puts wormsign behind the RADIUS server its NASes already
// talk to. It is stopped at cleanup; its debug log is printed when the
// test failed.
type FreeRADIUSProxy struct {
	// Addr is where it listens for accounting ("127.0.0.1:port").
	Addr string
	// Secret is the shared secret of its NAS client, 127.0.0.1.
	Secret string

	*freeRADIUS
}

// FreeRADIUSProxyConfig says where the proxy forwards accounting.
type FreeRADIUSProxyConfig struct {
	// HomeServer is the accounting home server ("127.0.0.1:port").
	HomeServer string
	// HomeSecret is the secret shared with the home server.
	HomeSecret string
	// NASSecret is the secret shared with the NAS; "testing123" when
	// empty.
	NASSecret string
}

// StartFreeRADIUSProxy starts FreeRADIUS in the foreground with a
// configuration of its own under t.TempDir() and waits until it
// processes requests.
func StartFreeRADIUSProxy(t testing.TB, c FreeRADIUSProxyConfig) *FreeRADIUSProxy {
	t.Helper()
	if c.NASSecret == "" {
		c.NASSecret = "testing123"
	}
	host, port, err := net.SplitHostPort(c.HomeServer)
	if err != nil {
		t.Fatalf("freeradius home server: %v", err)
	}
	dir := t.TempDir()
	listen := FreeUDPPort(t)
	conf := fmt.Sprintf(freeRADIUSProxyConf, dir, listen, host, port, c.HomeSecret, c.NASSecret)
	p := &FreeRADIUSProxy{Addr: loopback(listen), Secret: c.NASSecret}
	p.freeRADIUS = startFreeRADIUS(t, dir, conf)
	return p
}

// freeRADIUS is a running FreeRADIUS: its process and what it wrote.
type freeRADIUS struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startFreeRADIUS writes conf as radiusd.conf in dir, starts FreeRADIUS
// on it in the foreground and waits until it processes requests. It is
// stopped at cleanup; its debug log is printed when the test failed.
func startFreeRADIUS(t testing.TB, dir, conf string) *freeRADIUS {
	t.Helper()
	bin := Tool(t, "freeradius")
	// FreeRADIUS refuses a configuration others may write.
	if err := os.WriteFile(filepath.Join(dir, "radiusd.conf"), []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	p := &freeRADIUS{out: &syncBuffer{}, done: make(chan struct{})}
	// -X: foreground, one thread, every packet in the debug log on
	// stdout. As root it keeps running as root: the configuration names
	// no user (Debian's own runs as freerad).
	p.cmd = exec.Command(bin, "-X", "-d", dir, "-n", "radiusd")
	p.cmd.Dir, p.cmd.Stdout, p.cmd.Stderr = dir, p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("cannot start freeradius: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("freeradius log:\n%s", p.Log())
		}
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(p.out.String(), "Ready to process requests") {
		select {
		case <-p.done:
			t.Fatalf("freeradius exited before it was ready (%v); its log follows", p.cmd.ProcessState)
		case <-deadline:
			t.Fatalf("freeradius not ready within 20s; its log follows")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return p
}

// Log is what FreeRADIUS wrote so far.
func (p *freeRADIUS) Log() string { return p.out.String() }

func (p *freeRADIUS) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// freeRADIUSBaseConf is what every test configuration of FreeRADIUS
// starts with: paths inside the directory (argument 1), log to stdout,
// no Debian include files.
const freeRADIUSBaseConf = `prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
confdir = %[1]s
raddbdir = %[1]s
logdir = %[1]s
run_dir = %[1]s
libdir = /usr/lib/freeradius
pidfile = %[1]s/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {
	destination = stdout
	colourise = no
}
security {
	allow_core_dumps = no
	max_attributes = 200
	status_server = no
}
`

// freeRADIUSProxyConf is a whole radiusd.conf (no Debian include files):
// an accounting listener for the NAS at 127.0.0.1, and a virtual server
// whose preacct section sends every request to the realm of the one home
// server. FreeRADIUS answers the NAS only once the home server answered
// it, adding a Proxy-State the home server must echo. The dictionaries
// come from FreeRADIUS's built-in dictdir, /usr/share/freeradius on
// Debian. Arguments: the directory, the listen port, the home server's
// host, port and secret, the NAS's secret.
const freeRADIUSProxyConf = freeRADIUSBaseConf + `proxy_requests = yes
proxy server {
	default_fallback = no
}
home_server wormsign {
	type = acct
	ipaddr = %[3]s
	port = %[4]s
	secret = %[5]s
	response_window = 5
	status_check = none
}
home_server_pool wormsign {
	type = fail-over
	home_server = wormsign
}
realm wormsign {
	acct_pool = wormsign
	nostrip
}
client nas {
	ipaddr = 127.0.0.1
	secret = %[6]s
}
modules {
	always ok {
		rcode = ok
	}
}
server default {
	listen {
		type = acct
		ipaddr = 127.0.0.1
		port = %[2]d
	}
	preacct {
		update control {
			&Proxy-To-Realm := "wormsign"
		}
	}
	accounting {
		ok
	}
}
`

// FreeRADIUSCoA is a FreeRADIUS server (Debian's freeradius, 3.x) in the
// NAS's place as the Dynamic Authorization Server of RFC 5176: it takes
// CoA-Request and Disconnect-Request from a client at 127.0.0.1, writes
// each to a detail file (Requests reads it back) and answers CoA-ACK or
// Disconnect-ACK, or, with NAKCause, a NAK with that Error-Cause. A
// request whose authenticator does not match the secret is dropped
// unanswered, as a NAS does. It is stopped at cleanup; its debug log is
// printed when the test failed.
type FreeRADIUSCoA struct {
	// Addr is where it listens ("127.0.0.1:port"), Port its port.
	Addr string
	Port int
	// Secret is the shared secret of its client, 127.0.0.1.
	Secret string

	*freeRADIUS
	detail string
}

// FreeRADIUSCoAConfig says how the CoA server answers.
type FreeRADIUSCoAConfig struct {
	// Secret is shared with the client; "testing123" when empty.
	Secret string
	// NAKCause, when set, makes it NAK every request with this
	// Error-Cause, by FreeRADIUS's name ("Session-Context-Not-Found").
	NAKCause string
}

// StartFreeRADIUSCoA starts the CoA server on a free loopback port and
// waits until it processes requests.
func StartFreeRADIUSCoA(t testing.TB, c FreeRADIUSCoAConfig) *FreeRADIUSCoA {
	t.Helper()
	if c.Secret == "" {
		c.Secret = "testing123"
	}
	dir := t.TempDir()
	port := FreeUDPPort(t)
	// recv-coa runs for CoA-Request and Disconnect-Request alike; the
	// section's reject makes FreeRADIUS answer the NAK of the request's
	// kind, with the reply's Error-Cause.
	answer := "ok"
	if c.NAKCause != "" {
		answer = fmt.Sprintf("update reply {\n\t\t\t&Error-Cause := %s\n\t\t}\n\t\treject", c.NAKCause)
	}
	detail := filepath.Join(dir, "coa.detail")
	conf := fmt.Sprintf(freeRADIUSCoAConf, dir, port, c.Secret, detail, answer)
	s := &FreeRADIUSCoA{Addr: loopback(port), Port: port, Secret: c.Secret, detail: detail}
	s.freeRADIUS = startFreeRADIUS(t, dir, conf)
	return s
}

// RADIUSRequest is one request as FreeRADIUS's detail file recorded it:
// its Packet-Type ("CoA-Request", "Disconnect-Request") and attributes by
// name, values as FreeRADIUS prints them (strings unquoted, dates as
// "Jan  2 2026 15:04:05 UTC", enumerations by name).
type RADIUSRequest struct {
	Type       string
	Attributes map[string][]string
}

// Get is the first value of attribute name, "" when absent.
func (r RADIUSRequest) Get(name string) string {
	if v := r.Attributes[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Requests are the requests received so far, in order.
func (s *FreeRADIUSCoA) Requests(t testing.TB) []RADIUSRequest {
	t.Helper()
	raw, err := os.ReadFile(s.detail)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return parseDetail(string(raw))
}

// parseDetail reads a FreeRADIUS detail file: records separated by a blank
// line, each a time line and then one "\tName = value" line per
// attribute.
func parseDetail(text string) []RADIUSRequest {
	var out []RADIUSRequest
	for _, rec := range strings.Split(text, "\n\n") {
		lines := strings.Split(strings.TrimSpace(rec), "\n")
		if len(lines) < 2 {
			continue
		}
		r := RADIUSRequest{Attributes: map[string][]string{}}
		for _, line := range lines[1:] {
			name, value, ok := strings.Cut(strings.TrimSpace(line), " = ")
			if !ok {
				continue
			}
			if u, err := strconv.Unquote(value); err == nil {
				value = u
			}
			if name == "Packet-Type" {
				r.Type = value
				continue
			}
			r.Attributes[name] = append(r.Attributes[name], value)
		}
		out = append(out, r)
	}
	return out
}

// freeRADIUSCoAConf is a whole radiusd.conf (no Debian include files,
// like freeRADIUSProxyConf): a coa listener on 127.0.0.1 for one client,
// and a virtual server whose recv-coa section writes the request to a
// detail file and then answers (ok: ACK; reject: NAK). Arguments: the
// directory, the port, the client's secret, the detail file, the answer.
const freeRADIUSCoAConf = freeRADIUSBaseConf + `client wormsign {
	ipaddr = 127.0.0.1
	secret = %[3]s
}
modules {
	always ok {
		rcode = ok
	}
	always reject {
		rcode = reject
	}
	detail coa_detail {
		filename = %[4]s
		escape_filenames = no
		permissions = 0600
		header = "%%t"
		locking = no
	}
}
server coa {
	listen {
		type = coa
		ipaddr = 127.0.0.1
		port = %[2]d
	}
	recv-coa {
		coa_detail
		%[5]s
	}
	send-coa {
		ok
	}
}
`

// Radclient sends one request with FreeRADIUS's radclient (Debian's
// freeradius-utils): attrs are its attribute lines ("User-Name = alice"),
// code "acct", "auth" or "disconnect". It waits timeout for each of its
// tries and tells whether a reply came; any other failure of radclient
// (an attribute it cannot encode) fails the test.
func Radclient(t testing.TB, addr, code, secret string, tries int, timeout time.Duration, attrs ...string) (string, bool) {
	t.Helper()
	bin := Tool(t, "radclient")
	cmd := exec.Command(bin, "-x", "-r", fmt.Sprint(tries), "-t", fmt.Sprint(timeout.Seconds()), addr, code, secret)
	cmd.Stdin = strings.NewReader(strings.Join(attrs, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil:
		return string(out), true
	case bytes.Contains(out, []byte("No reply from server")):
		return string(out), false
	}
	t.Fatalf("radclient %s %s: %v\n%s", addr, code, err, out)
	return "", false
}

// syncBuffer is a bytes.Buffer a process writes while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
