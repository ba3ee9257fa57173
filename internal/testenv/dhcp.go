package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DHCPNet is a link between two namespaces for DHCP tests:
//
//	server ns ──veth── client ns
//	veth0 203.0.113.1/24     veth0, no address until a DHCP client gets one
//
// The DHCP server (Kea, dnsmasq) runs in the server namespace and runs its
// lease script there, where 127.0.0.1 is that namespace's own loopback:
// Listen opens the test's endpoint inside it. Nothing of it is in the
// root namespace, so it collides with no lab and no DHCP server of the
// host. It is torn down at cleanup, after the processes in it.
type DHCPNet struct {
	Index          int
	Server, Client string     // namespace names
	Iface          string     // the link's name on both sides
	ServerAddr     netip.Addr // on the server's side, in 203.0.113.0/24
	ClientMAC      string     // the client side's hardware address
	lock           *os.File
}

// NewDHCPNet builds a DHCPNet. Each concurrent one (across test processes)
// takes its own index, and so its own namespace names; one left behind by
// a killed run under the same index is removed first.
func NewDHCPNet(t testing.TB) *DHCPNet {
	t.Helper()
	Root(t)
	Tool(t, "ip")
	n := &DHCPNet{Iface: "veth0", ServerAddr: netip.MustParseAddr("203.0.113.1")}
	for i := 1; i <= 15 && n.lock == nil; i++ {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("wormsign-dhcp-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue
		}
		n.lock, n.Index = f, i
	}
	if n.lock == nil {
		t.Fatal("no free DHCP net index")
	}
	n.Server = fmt.Sprintf("wsdhcp%d-srv", n.Index)
	n.Client = fmt.Sprintf("wsdhcp%d-cli", n.Index)
	n.ClientMAC = fmt.Sprintf("02:00:00:00:%02x:01", n.Index)
	n.teardown()
	t.Cleanup(func() {
		n.teardown()
		n.lock.Close()
	})
	cmds := [][]string{
		{"ip", "netns", "add", n.Server},
		{"ip", "netns", "add", n.Client},
		// Made in the namespaces directly: the root namespace never has
		// a link of this name.
		{"ip", "link", "add", n.Iface, "netns", n.Server, "address", fmt.Sprintf("02:00:00:00:%02x:02", n.Index),
			"type", "veth", "peer", "name", n.Iface, "netns", n.Client, "address", n.ClientMAC},
		{"ip", "-n", n.Server, "addr", "add", n.ServerAddr.String() + "/24", "dev", n.Iface},
		{"ip", "-n", n.Server, "link", "set", "lo", "up"},
		{"ip", "-n", n.Server, "link", "set", n.Iface, "up"},
		{"ip", "-n", n.Client, "link", "set", "lo", "up"},
		{"ip", "-n", n.Client, "link", "set", n.Iface, "up"},
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return n
}

// teardown deletes the namespaces; the veth goes with them.
func (n *DHCPNet) teardown() {
	exec.Command("ip", "netns", "del", n.Server).Run()
	exec.Command("ip", "netns", "del", n.Client).Run()
}

// command returns a command that runs inside namespace ns.
func (n *DHCPNet) command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Listen opens a TCP listener on addr ("127.0.0.1:0") inside the server
// namespace, served by this process like any other: a socket stays in the
// namespace it was made in. It is closed at cleanup.
func (n *DHCPNet) Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	// A goroutine of its own, locked to its thread: if the thread cannot
	// go back to this process's namespace, the goroutine ends locked and
	// the runtime discards the thread rather than reuse it.
	go func() {
		runtime.LockOSThread()
		ln, restored, err := listenIn(n.Server, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("cannot listen in namespace %s: %v", n.Server, r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	return r.ln
}

// listenIn listens on addr inside namespace ns from the calling, locked,
// thread, and moves the thread back; restored is false when that failed
// and the thread must not be reused.
func listenIn(ns, addr string) (ln net.Listener, restored bool, err error) {
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, true, err
	}
	defer home.Close()
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("setns: %w", err)
	}
	ln, err = net.Listen("tcp", addr)
	if err2 := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err2 != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, false, fmt.Errorf("setns back: %w", err2)
	}
	return ln, true, err
}

// DHCPServer is a DHCP server running in a DHCPNet's server namespace,
// stopped at cleanup; its log is printed when the test failed.
type DHCPServer struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// Log is what the server wrote so far.
func (s *DHCPServer) Log() string { return s.out.String() }

func (n *DHCPNet) startServer(t testing.TB, name, ready, dir string, cmd *exec.Cmd) *DHCPServer {
	t.Helper()
	s := &DHCPServer{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, s.Log())
		}
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(s.out.String(), ready) {
		select {
		case <-s.done:
			t.Fatalf("%s exited at start:\n%s", name, s.Log())
		case <-deadline:
			t.Fatalf("%s did not start within 20s:\n%s", name, s.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return s
}

func (s *DHCPServer) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// KeaConfig is what a test's Kea serves.
type KeaConfig struct {
	// Script is the run_script hook's script (libdhcp_run_script.so).
	// Kea runs it with an empty environment.
	Script string
	// Pool is the range handed out, e.g. "203.0.113.100 - 203.0.113.110".
	Pool string
	// Lease timers, in seconds.
	ValidLifetime, RenewTimer, RebindTimer int
}

// StartKea starts kea-dhcp4 (Debian's kea-dhcp4-server, 2.2) in the server
// namespace, on Iface, with its configuration, leases and pid file under
// t.TempDir(), and waits until it serves. Expired leases are reclaimed
// every second, so that lease4_expire comes soon after a lease's end.
func (n *DHCPNet) StartKea(t testing.TB, c KeaConfig) *DHCPServer {
	t.Helper()
	bin := Tool(t, "kea-dhcp4")
	hook := keaHook(t, "libdhcp_run_script.so")
	dir := t.TempDir()
	conf := map[string]any{"Dhcp4": map[string]any{
		"interfaces-config": map[string]any{"interfaces": []string{n.Iface}},
		"lease-database": map[string]any{
			"type": "memfile", "persist": true, "name": filepath.Join(dir, "leases4.csv"), "lfc-interval": 0,
		},
		"valid-lifetime": c.ValidLifetime, "renew-timer": c.RenewTimer, "rebind-timer": c.RebindTimer,
		"expired-leases-processing": map[string]any{
			"reclaim-timer-wait-time": 1, "flush-reclaimed-timer-wait-time": 0, "hold-reclaimed-time": 0,
		},
		"subnet4": []any{map[string]any{
			"id": 1, "subnet": netip.PrefixFrom(n.ServerAddr, 24).Masked().String(),
			"pools": []any{map[string]any{"pool": c.Pool}},
		}},
		"hooks-libraries": []any{map[string]any{
			"library": hook, "parameters": map[string]any{"name": c.Script, "sync": false},
		}},
		"loggers": []any{map[string]any{
			"name": "kea-dhcp4", "severity": "INFO", "output_options": []any{map[string]any{"output": "stdout"}},
		}},
	}}
	raw, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "kea-dhcp4.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := n.command(n.Server, bin, "-c", path)
	// Its pid and lock files, in /run/kea otherwise.
	cmd.Env = append(os.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
	return n.startServer(t, "kea-dhcp4", "DHCP4_STARTED", dir, cmd)
}

// keaHook finds a Kea hook library: Debian puts them in
// /usr/lib/<triplet>/kea/hooks.
func keaHook(t testing.TB, name string) string {
	t.Helper()
	for _, pattern := range []string{"/usr/lib/*/kea/hooks/", "/usr/lib/kea/hooks/", "/usr/local/lib/kea/hooks/", "/usr/lib64/kea/hooks/"} {
		if found, _ := filepath.Glob(pattern + name); len(found) > 0 {
			return found[0]
		}
	}
	Unavailable(t, "Kea hook %s is not installed (deploy/test-tools.sh installs kea-dhcp4-server)", name)
	return ""
}

// DnsmasqConfig is what a test's dnsmasq serves.
type DnsmasqConfig struct {
	// Script is the --dhcp-script.
	Script string
	// Range is the --dhcp-range, e.g. "203.0.113.50,203.0.113.60,2m"
	// (dnsmasq's shortest lease is 2 minutes).
	Range string
	// Env is added to dnsmasq's environment, which its script inherits.
	Env []string
}

// StartDnsmasq starts dnsmasq in the foreground in the server namespace,
// DHCP only (--port=0), on Iface, and waits until it serves. It runs the
// script on renewals too (--script-on-renewal) and as root, so that it
// can read files under t.TempDir(); it hands out addresses without
// pinging them first (--no-ping), which would cost seconds per client.
func (n *DHCPNet) StartDnsmasq(t testing.TB, c DnsmasqConfig) *DHCPServer {
	t.Helper()
	bin := Tool(t, "dnsmasq")
	dir := t.TempDir()
	cmd := n.command(n.Server, bin, "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface="+n.Iface, "--bind-interfaces", "--no-ping", "--dhcp-range="+c.Range,
		"--dhcp-script="+c.Script, "--script-on-renewal",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--user=root", "--group=root")
	cmd.Env = append(os.Environ(), c.Env...)
	return n.startServer(t, "dnsmasq", "DHCP, IP range", dir, cmd)
}

// Dhclient is ISC dhclient (Debian's isc-dhcp-client) running in the
// foreground in a DHCPNet's client namespace, with its own configuration,
// lease and pid files. Its script puts the leased address on Iface (a
// DHCPRELEASE is sent from it) and notes every event; it touches nothing
// else (Debian's dhclient-script would rewrite the host's resolv.conf).
type Dhclient struct {
	n                              *DHCPNet
	bin, conf, leases, pid, script string
	events                         string
	cmd                            *exec.Cmd
	out                            *syncBuffer
	done                           chan struct{}
}

// StartDhclient starts dhclient on Iface, sending clientID (hex octets,
// "01:02:00:00:00:71:01") as its client identifier unless empty, and
// waits until it is bound. It is stopped at cleanup.
func (n *DHCPNet) StartDhclient(t testing.TB, clientID string) *Dhclient {
	t.Helper()
	d := &Dhclient{n: n, bin: Tool(t, "dhclient")}
	ip := Tool(t, "ip")
	dir := t.TempDir()
	d.conf, d.leases, d.pid = filepath.Join(dir, "dhclient.conf"), filepath.Join(dir, "dhclient.leases"), filepath.Join(dir, "dhclient.pid")
	d.script, d.events = filepath.Join(dir, "dhclient-script"), filepath.Join(dir, "events")
	conf := "request subnet-mask;\nsend host-name \"wormsign-test\";\n"
	if clientID != "" {
		conf += "send dhcp-client-identifier " + clientID + ";\n"
	}
	script := fmt.Sprintf(`#!/bin/sh
echo "$reason ${new_ip_address:-}" >>%[1]s
case $reason in
BOUND | RENEW | REBIND | REBOOT) %[2]s addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
RELEASE | EXPIRE | STOP) [ -n "${old_ip_address:-}" ] && %[2]s addr del "$old_ip_address/$old_subnet_mask" dev "$interface" ;;
esac
exit 0
`, d.events, ip)
	for path, content := range map[string]string{d.conf: conf, d.script: script} {
		if err := os.WriteFile(path, []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(d.stop)
	d.start(t)
	d.WaitBound(t, 1)
	return d
}

func (d *Dhclient) args(extra ...string) []string {
	return append(append(extra, "-v", "-cf", d.conf, "-sf", d.script, "-lf", d.leases, "-pf", d.pid), d.n.Iface)
}

// start runs dhclient in the foreground (-d), trying once (-1).
func (d *Dhclient) start(t testing.TB) {
	t.Helper()
	d.out, d.done = &syncBuffer{}, make(chan struct{})
	d.cmd = d.n.command(d.n.Client, d.bin, d.args("-d", "-1")...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("cannot start dhclient: %v", err)
	}
	done := d.done
	go func() { d.cmd.Wait(); close(done) }()
}

// Bound is how many times dhclient has bound so far (BOUND, REBOOT,
// RENEW, REBIND) and to what address last.
func (d *Dhclient) Bound() (int, netip.Addr) {
	f, err := os.Open(d.events)
	if err != nil {
		return 0, netip.Addr{}
	}
	defer f.Close()
	n, last := 0, netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		reason, addr, _ := strings.Cut(sc.Text(), " ")
		switch reason {
		case "BOUND", "REBOOT", "RENEW", "REBIND":
			if a, err := netip.ParseAddr(addr); err == nil {
				n, last = n+1, a
			}
		}
	}
	return n, last
}

// WaitBound waits up to 60 s until dhclient has bound n times in all (the
// first lease, then renewals and restarts) and returns the address.
func (d *Dhclient) WaitBound(t testing.TB, n int) netip.Addr {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		if got, addr := d.Bound(); got >= n {
			return addr
		}
		select {
		case <-d.done:
			t.Fatalf("dhclient exited before binding %d times:\n%s", n, d.out.String())
		case <-deadline:
			t.Fatalf("dhclient did not bind %d times within 60s:\n%s", n, d.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Restart stops dhclient without a release and starts it again on its
// lease file: it asks for its address again (INIT-REBOOT), as a rebooted
// client does, and is bound once more.
func (d *Dhclient) Restart(t testing.TB) netip.Addr {
	t.Helper()
	n, _ := d.Bound()
	d.stop()
	d.start(t)
	return d.WaitBound(t, n+1)
}

// Release releases the lease (dhclient -r, which also stops the running
// dhclient).
func (d *Dhclient) Release(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", d.n.Client, d.bin}, d.args("-r")...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dhclient -r: %v\n%s", err, out)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("dhclient still runs after dhclient -r:\n%s", d.out.String())
	}
}

// Kill ends dhclient at once, without a release: its lease runs out on
// the server.
func (d *Dhclient) Kill(t testing.TB) {
	t.Helper()
	d.cmd.Process.Kill()
	<-d.done
}

// stop ends dhclient (SIGTERM: it sends nothing) if it still runs.
func (d *Dhclient) stop() {
	if d.cmd == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}
