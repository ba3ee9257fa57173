package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
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
	bin := Tool(t, "freeradius")
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
	// FreeRADIUS refuses a configuration others may write.
	if err := os.WriteFile(filepath.Join(dir, "radiusd.conf"), []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	p := &FreeRADIUSProxy{Addr: loopback(listen), Secret: c.NASSecret, out: &syncBuffer{}, done: make(chan struct{})}
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
func (p *FreeRADIUSProxy) Log() string { return p.out.String() }

func (p *FreeRADIUSProxy) stop() {
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

// freeRADIUSProxyConf is a whole radiusd.conf (no Debian include files):
// an accounting listener for the NAS at 127.0.0.1, and a virtual server
// whose preacct section sends every request to the realm of the one home
// server. FreeRADIUS answers the NAS only once the home server answered
// it, adding a Proxy-State the home server must echo. The dictionaries
// come from FreeRADIUS's built-in dictdir, /usr/share/freeradius on
// Debian. Arguments: the directory, the listen port, the home server's
// host, port and secret, the NAS's secret.
const freeRADIUSProxyConf = `prefix = /usr
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
proxy_requests = yes
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
