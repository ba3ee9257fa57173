package testenv

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Lab is a small network made of namespaces for end-to-end tests:
//
//	subscriber ns ──veth── root ns (routes) ──veth── internet ns
//	203.0.113.(16i+2..)    RouterIf: exporters       198.18.i.(2..)
//	                       capture here
//
// The root namespace routes between the two veths only (forwarding is
// enabled on those two interfaces alone), so an exporter running in the
// root namespace sees the subscribers' traffic and exports to the
// collector on 127.0.0.1. Traffic never leaves the lab's namespaces.
type Lab struct {
	Index       int
	Subscriber  string       // namespace of the subscriber hosts
	Internet    string       // namespace answering on the internet addresses
	RouterIf    string       // root-side interface facing the subscribers
	InternetIf  string       // root-side interface facing the internet
	Subscribers []netip.Addr // addresses in the subscriber namespace
	Servers     []netip.Addr // addresses in the internet namespace
	lock        *os.File
}

// NewLab builds a lab with nSubs subscriber addresses and nServers internet
// addresses. Each concurrent lab (across test processes) takes its own
// index, so their links and subnets never collide. It is torn down at
// cleanup.
func NewLab(t testing.TB, nSubs, nServers int) *Lab {
	t.Helper()
	Root(t)
	Tool(t, "ip")
	if nSubs < 1 || nSubs > 13 || nServers < 1 || nServers > 250 {
		t.Fatalf("lab of %d subscribers and %d servers is out of range", nSubs, nServers)
	}
	l := &Lab{}
	for i := 1; i <= 15 && l.lock == nil; i++ {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("wormsign-lab-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue
		}
		l.lock, l.Index = f, i
	}
	if l.lock == nil {
		t.Fatal("no free lab index")
	}
	i := l.Index
	l.Subscriber = fmt.Sprintf("wslab%d-sub", i)
	l.Internet = fmt.Sprintf("wslab%d-inet", i)
	l.RouterIf = fmt.Sprintf("wslab%ds", i)
	routerInet := fmt.Sprintf("wslab%di", i)
	l.InternetIf = routerInet
	subNet := netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(16 * (i - 1))}), 28)
	subGW := subNet.Addr().Next()
	inetGW := netip.AddrFrom4([4]byte{198, 18, byte(i), 1})
	for a, n := subGW.Next(), 0; n < nSubs; a, n = a.Next(), n+1 {
		l.Subscribers = append(l.Subscribers, a)
	}
	for a, n := inetGW.Next(), 0; n < nServers; a, n = a.Next(), n+1 {
		l.Servers = append(l.Servers, a)
	}
	// A lab left behind by a killed run would make the commands below fail.
	l.teardown()
	t.Cleanup(func() {
		l.teardown()
		l.lock.Close()
	})
	cmds := [][]string{
		{"ip", "netns", "add", l.Subscriber},
		{"ip", "netns", "add", l.Internet},
		{"ip", "link", "add", l.RouterIf, "type", "veth", "peer", "name", "eth0", "netns", l.Subscriber},
		{"ip", "link", "add", routerInet, "type", "veth", "peer", "name", "eth0", "netns", l.Internet},
		{"ip", "addr", "add", subGW.String() + "/28", "dev", l.RouterIf},
		{"ip", "addr", "add", inetGW.String() + "/24", "dev", routerInet},
		{"ip", "link", "set", l.RouterIf, "up"},
		{"ip", "link", "set", routerInet, "up"},
		{"sysctl", "-qw", "net.ipv4.conf." + l.RouterIf + ".forwarding=1"},
		{"sysctl", "-qw", "net.ipv4.conf." + routerInet + ".forwarding=1"},
		{"ip", "-n", l.Subscriber, "link", "set", "lo", "up"},
		{"ip", "-n", l.Subscriber, "link", "set", "eth0", "up"},
		{"ip", "-n", l.Internet, "link", "set", "lo", "up"},
		{"ip", "-n", l.Internet, "link", "set", "eth0", "up"},
	}
	for _, a := range l.Subscribers {
		cmds = append(cmds, []string{"ip", "-n", l.Subscriber, "addr", "add", a.String() + "/28", "dev", "eth0"})
	}
	for _, a := range l.Servers {
		cmds = append(cmds, []string{"ip", "-n", l.Internet, "addr", "add", a.String() + "/24", "dev", "eth0"})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", l.Subscriber, "route", "add", "198.18.0.0/15", "via", subGW.String()},
		[]string{"ip", "-n", l.Internet, "route", "add", "203.0.113.0/24", "via", inetGW.String()},
	)
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return l
}

func (l *Lab) teardown() {
	exec.Command("ip", "link", "del", l.RouterIf).Run()
	exec.Command("ip", "link", "del", fmt.Sprintf("wslab%di", l.Index)).Run()
	exec.Command("ip", "netns", "del", l.Subscriber).Run()
	exec.Command("ip", "netns", "del", l.Internet).Run()
}

// Command returns a command that runs inside namespace ns.
func (l *Lab) Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Nudge sends a burst of full-size frames that are not IP onto the router
// interface. Exporters built on libpcap with a zero timeout (softflowd
// 1.1.0) get captured packets in ring blocks that are handed over only once
// filled; these frames fill them, and exporters ignore them without making
// flows of them.
func (l *Lab) Nudge(t testing.TB) {
	t.Helper()
	l.nudge(t, l.RouterIf)
}

func (l *Lab) nudge(t testing.TB, iface string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, 0)
	if err != nil {
		t.Fatalf("cannot open packet socket: %v", err)
	}
	defer syscall.Close(fd)
	ifi, err := interfaceIndex(iface)
	if err != nil {
		t.Fatal(err)
	}
	// Broadcast frames with the IEEE local experimental ethertype 0x88b5.
	frame := make([]byte, 1500)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5})
	addr := &syscall.SockaddrLinklayer{Ifindex: ifi, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	for range 100 {
		if err := syscall.Sendto(fd, frame, 0, addr); err != nil {
			t.Fatalf("cannot send nudge frame: %v", err)
		}
	}
}

func interfaceIndex(name string) (int, error) {
	raw, err := os.ReadFile(filepath.Join("/sys/class/net", name, "ifindex"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// Softflowd is a running softflowd exporting from the lab's router interface.
type Softflowd struct {
	lab     *Lab
	iface   string
	control string
	cmd     *exec.Cmd
}

// StartSoftflowd starts softflowd on the router interface exporting NetFlow
// version (5, 9 or 10 for IPFIX) to 127.0.0.1:port. It stops at cleanup.
func (l *Lab) StartSoftflowd(t testing.TB, version, port int) *Softflowd {
	t.Helper()
	return l.StartSoftflowdOn(t, l.RouterIf, version, port)
}

// StartSoftflowdOn is StartSoftflowd on another of the root namespace's
// interfaces: InternetIf sees the subscribers' traffic after a NAT.
func (l *Lab) StartSoftflowdOn(t testing.TB, iface string, version, port int) *Softflowd {
	t.Helper()
	bin := Tool(t, "softflowd")
	dir := t.TempDir()
	s := &Softflowd{lab: l, iface: iface, control: filepath.Join(dir, "ctl")}
	s.cmd = exec.Command(bin, "-d", "-i", iface, "-n", fmt.Sprintf("127.0.0.1:%d", port),
		"-v", strconv.Itoa(version), "-c", s.control, "-p", filepath.Join(dir, "pid"))
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("cannot start softflowd: %v", err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := s.ctl("statistics"); err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatal("softflowd control socket did not answer")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Softflowd) ctl(cmd string) (string, error) {
	out, err := exec.Command("softflowctl", "-c", s.control, cmd).CombinedOutput()
	return string(out), err
}

// counts parses softflowctl statistics: packets softflowd has handled
// (made flows of, or ignored) and packets the kernel has queued for it.
func (s *Softflowd) counts() (handled, received uint64, err error) {
	out, err := s.ctl("statistics")
	if err != nil {
		return 0, 0, err
	}
	fields := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		// e.g. "Packets processed: 120", "Ignored packets: 163 (163 non-IP, 0 too short)"
		name, value, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(strings.TrimSpace(value), " ")
		if n, err := strconv.ParseUint(num, 10, 64); err == nil {
			fields[name] = n
		}
	}
	for _, k := range []string{"Packets processed", "Ignored packets", "Packets received by libpcap"} {
		if _, ok := fields[k]; !ok {
			return 0, 0, fmt.Errorf("softflowctl statistics lacks %q:\n%s", k, out)
		}
	}
	return fields["Packets processed"] + fields["Ignored packets"] + fields["Fragments"], fields["Packets received by libpcap"], nil
}

// ExpireAll makes softflowd export every flow, after making sure it has
// handled every packet the kernel captured for it up to now.
func (s *Softflowd) ExpireAll(t testing.TB) {
	t.Helper()
	_, want, err := s.counts()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		handled, _, err := s.counts()
		if err != nil {
			t.Fatal(err)
		}
		if handled >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("softflowd handled %d of %d captured packets", handled, want)
		}
		s.lab.nudge(t, s.iface)
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := s.ctl("expire-all"); err != nil {
		t.Fatalf("softflowctl expire-all: %v\n%s", err, out)
	}
}
