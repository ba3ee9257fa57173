package testenv

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file holds the lab's hostile outsider (a raw-socket sender of
// packets with forged source addresses) and the traffic peers of the
// hostile end-to-end test: floods, a UDP call, an upload, a scanner, and
// the services the spoofed packets hit.

// Peers send only inside the lab: its subscribers, its internet side and
// the documentation prefix its IPv6 side uses.
var labSpace = []netip.Prefix{
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("2001:db8::/32"),
}

func inLab(a netip.Addr) bool {
	for _, p := range labSpace {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// TCP flags of a spoofed segment.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// Packet is one IPv4 packet with a forged source for Spoof. Proto is "tcp"
// (Flags set, e.g. TCPSyn or TCPAck), "udp" (a small payload) or "icmp"
// (an echo request; SrcPort is its identifier).
type Packet struct {
	Proto            string
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Flags            uint8
}

func (p Packet) String() string {
	return fmt.Sprintf("%s %s %d %s %d %d", p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort, p.Flags)
}

func parsePacket(line string) (Packet, error) {
	f := strings.Fields(line)
	if len(f) != 6 {
		return Packet{}, fmt.Errorf("bad packet %q", line)
	}
	var p Packet
	var err error
	p.Proto = f[0]
	if p.Src, err = netip.ParseAddr(f[1]); err != nil {
		return p, err
	}
	if p.Dst, err = netip.ParseAddr(f[3]); err != nil {
		return p, err
	}
	n := make([]uint64, 3)
	for i, s := range []string{f[2], f[4], f[5]} {
		if n[i], err = strconv.ParseUint(s, 10, 16); err != nil {
			return p, fmt.Errorf("bad packet %q: %w", line, err)
		}
	}
	p.SrcPort, p.DstPort, p.Flags = uint16(n[0]), uint16(n[1]), uint8(n[2])
	return p, nil
}

// Spoof sends packets from the lab's internet namespace through a raw
// socket, in order, about a millisecond apart (so that neither the
// subscriber's kernel nor the exporter's capture has reason to drop any),
// and returns how many it sent. Sources must be in the lab's internet /24
// (addresses nobody holds, or its dark space): routing and rp_filter pass
// them and the answers go nowhere. Destinations must be subscribers.
func (l *Lab) Spoof(t testing.TB, packets []Packet) int {
	t.Helper()
	inet := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(l.Index), 0}), 24)
	var in strings.Builder
	for _, p := range packets {
		if !inet.Contains(p.Src) || !p.Dst.Is4() || !netip.MustParsePrefix("203.0.113.0/24").Contains(p.Dst) {
			t.Fatalf("spoofed packet %s: source must be in %s, destination a subscriber", p, inet)
		}
		fmt.Fprintln(&in, p)
	}
	out := l.startPeer(t, "spoof", l.Internet, strings.NewReader(in.String())).Wait(t)
	var n int
	if _, err := fmt.Sscanf(out, "%d sent", &n); err != nil {
		t.Fatalf("spoofer said %q", out)
	}
	return n
}

// spoof reads packets, one a line, from stdin and sends them with
// IP_HDRINCL (IPPROTO_RAW), headers and checksums built here.
func spoof(r io.Reader) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("cannot open raw socket: %w", err)
	}
	defer syscall.Close(fd)
	fmt.Println("ready")
	sc := bufio.NewScanner(r)
	sent := 0
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		p, err := parsePacket(sc.Text())
		if err != nil {
			return err
		}
		if !p.Src.Is4() || !p.Dst.Is4() || !inLab(p.Src) || !inLab(p.Dst) {
			return fmt.Errorf("packet %s leaves the lab", p)
		}
		raw, err := buildIPv4(p, uint16(sent))
		if err != nil {
			return err
		}
		if err := syscall.Sendto(fd, raw, 0, &syscall.SockaddrInet4{Addr: p.Dst.As4()}); err != nil {
			return fmt.Errorf("cannot send %s: %w", p, err)
		}
		sent++
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("%d sent\n", sent)
	return sc.Err()
}

// buildIPv4 returns the packet p as it goes on the wire.
func buildIPv4(p Packet, id uint16) ([]byte, error) {
	var proto uint8
	var l4 []byte
	switch p.Proto {
	case "tcp":
		proto = syscall.IPPROTO_TCP
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
		binary.BigEndian.PutUint16(l4[2:], p.DstPort)
		binary.BigEndian.PutUint32(l4[4:], 0x1000000+uint32(id)*7919) // sequence
		if p.Flags&TCPAck != 0 {
			binary.BigEndian.PutUint32(l4[8:], 0x2000000+uint32(id)*104729)
		}
		l4[12] = 5 << 4 // data offset: no options
		l4[13] = p.Flags
		binary.BigEndian.PutUint16(l4[14:], 64240) // window
		binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudoSum(p.Src, p.Dst, proto, len(l4))))
	case "udp":
		proto = syscall.IPPROTO_UDP
		l4 = make([]byte, 8+32)
		copy(l4[8:], "wormsign lab spoofed datagram...")
		binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
		binary.BigEndian.PutUint16(l4[2:], p.DstPort)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		sum := checksum(l4, pseudoSum(p.Src, p.Dst, proto, len(l4)))
		if sum == 0 {
			sum = 0xffff // 0 means "no checksum" in UDP
		}
		binary.BigEndian.PutUint16(l4[6:], sum)
	case "icmp":
		proto = syscall.IPPROTO_ICMP
		l4 = icmpEcho(p.SrcPort, id)
	default:
		return nil, fmt.Errorf("unknown protocol %q", p.Proto)
	}
	h := make([]byte, 20, 20+len(l4))
	h[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(h[4:], id)
	h[8] = 64 // TTL
	h[9] = proto
	src, dst := p.Src.As4(), p.Dst.As4()
	copy(h[12:], src[:])
	copy(h[16:], dst[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, l4...), nil
}

// icmpEcho is an ICMP echo request with its checksum.
func icmpEcho(ident, seq uint16) []byte {
	m := make([]byte, 8+32)
	m[0] = 8 // echo request
	binary.BigEndian.PutUint16(m[4:], ident)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], "wormsign lab echo request.......")
	binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
	return m
}

// pseudoSum is the sum of the IPv4 pseudo header TCP and UDP checksums
// cover.
func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	for _, b := range [][]byte{s[:], d[:]} {
		sum += uint32(b[0])<<8 | uint32(b[1])
		sum += uint32(b[2])<<8 | uint32(b[3])
	}
	return sum + uint32(proto) + uint32(length)
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Peer is a traffic peer started in a lab namespace. It has said "ready"
// (bound its sockets); Wait collects what it reports at its end.
type Peer struct {
	role string
	cmd  *exec.Cmd
	out  *bufio.Reader
}

func (l *Lab) startPeer(t testing.TB, role, ns string, stdin io.Reader, env ...string) *Peer {
	t.Helper()
	cmd := l.peer(role, ns, env...)
	cmd.Stdin = stdin
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start peer %s: %v", role, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	p := &Peer{role: role, cmd: cmd, out: bufio.NewReader(out)}
	if line, err := p.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("peer %s did not start: %q %v", role, line, err)
	}
	return p
}

// Wait waits for the peer to end and returns what it printed after "ready".
func (p *Peer) Wait(t testing.TB) string {
	t.Helper()
	rest, _ := io.ReadAll(p.out)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("peer %s: %v", p.role, err)
	}
	return strings.TrimSpace(string(rest))
}

// StartUDPEcho answers every datagram to addr:port in namespace ns with
// the same datagram, until cleanup.
func (l *Lab) StartUDPEcho(t testing.TB, ns string, addr netip.Addr, port int) {
	t.Helper()
	l.startPeer(t, "udp-echo", ns, nil, "TESTENV_LOCAL="+netip.AddrPortFrom(addr, uint16(port)).String())
}

// StartTCPSink accepts connections on addr:port in namespace ns and reads
// them to the end, until cleanup: an open port, or an upload's server.
func (l *Lab) StartTCPSink(t testing.TB, ns string, addr netip.Addr, port int) {
	t.Helper()
	l.startPeer(t, "tcp-sink", ns, nil, "TESTENV_LOCAL="+netip.AddrPortFrom(addr, uint16(port)).String())
}

// StartUDPStream binds local in namespace ns and, for duration, sends rate
// datagrams a second to remote, all from that one socket (one flow), and
// counts the datagrams it receives. With rate 0 it only receives (a
// target that never answers) and remote is not used.
// Wait returns "sent N received M".
func (l *Lab) StartUDPStream(t testing.TB, ns string, local, remote netip.AddrPort, rate int, duration time.Duration) *Peer {
	t.Helper()
	env := []string{"TESTENV_LOCAL=" + local.String(), "TESTENV_RATE=" + strconv.Itoa(rate), "TESTENV_DURATION=" + duration.String()}
	if rate > 0 {
		env = append(env, "TESTENV_TARGET="+remote.String())
	}
	return l.startPeer(t, "udp-stream", ns, nil, env...)
}

// StartICMPFlood has subscriber `from` send rate ICMP echo requests a
// second to target for duration. Wait returns "sent N replies M".
func (l *Lab) StartICMPFlood(t testing.TB, from, target netip.Addr, rate int, duration time.Duration) *Peer {
	t.Helper()
	return l.startPeer(t, "icmp-flood", l.Subscriber, nil, "TESTENV_FROM="+from.String(), "TESTENV_TARGET="+target.String(),
		"TESTENV_RATE="+strconv.Itoa(rate), "TESTENV_DURATION="+duration.String())
}

// StartTCPUpload has subscriber `from` send size bytes over one TCP
// connection to target, spread evenly over duration. Wait returns
// "sent N bytes".
func (l *Lab) StartTCPUpload(t testing.TB, from netip.Addr, target netip.AddrPort, size int, duration time.Duration) *Peer {
	t.Helper()
	return l.startPeer(t, "tcp-upload", l.Subscriber, nil, "TESTENV_FROM="+from.String(), "TESTENV_TARGET="+target.String(),
		"TESTENV_COUNT="+strconv.Itoa(size), "TESTENV_DURATION="+duration.String())
}

// TCPScan has subscriber `from` (IPv4 or IPv6) try one TCP connection to
// port on each target in turn, giving each timeout, as a scanning worm
// does, and returns how many targets answered (accepted or refused).
func (l *Lab) TCPScan(t testing.TB, from netip.Addr, targets []netip.Addr, port int, timeout time.Duration) int {
	t.Helper()
	out := l.startPeer(t, "tcp-scan", l.Subscriber, nil, "TESTENV_FROM="+from.String(), "TESTENV_TARGETS="+joinAddrs(targets),
		"TESTENV_PORT="+strconv.Itoa(port), "TESTENV_DURATION="+timeout.String()).Wait(t)
	var n int
	if _, err := fmt.Sscanf(out, "%d answered", &n); err != nil {
		t.Fatalf("scanner said %q", out)
	}
	return n
}

// CaptureRouter records the packets on the lab's router interface that
// match the capture filter, e.g. to check that spoofed packets reached a
// subscriber and what it answered. Count reads the file; the capture
// stops at cleanup at the latest.
func (l *Lab) CaptureRouter(t testing.TB, filter string) *Capture {
	t.Helper()
	return startDumpcap(t, l.RouterIf, filter, "router.pcapng")
}

// Count stops the capture and returns how many of its packets match the
// tshark display filter.
func (c *Capture) Count(t testing.TB, displayFilter string) int {
	t.Helper()
	c.Stop(t)
	out, err := exec.Command(Tool(t, "tshark"), "-r", c.Path, "-Y", displayFilter, "-T", "fields", "-e", "frame.number").Output()
	if err != nil {
		t.Fatalf("tshark -Y %q: %v", displayFilter, err)
	}
	return len(strings.Fields(string(out)))
}

func udpEcho(local string) error {
	c, err := net.ListenPacket("udp", local)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		c.WriteTo(buf[:n], from)
	}
}

func tcpSink(local string) error {
	l, err := net.Listen("tcp", local)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			io.Copy(io.Discard, conn)
			conn.Close()
		}()
	}
}

// pace calls send as often as needed to keep rate calls a second up for
// duration, in small steps so the packets are spread out evenly.
func pace(rate int, duration time.Duration, send func() error) (int, error) {
	began := time.Now()
	sent := 0
	for time.Since(began) < duration {
		for sent < int(time.Since(began).Seconds()*float64(rate)) {
			if err := send(); err != nil {
				return sent, err
			}
			sent++
		}
		time.Sleep(2 * time.Millisecond)
	}
	return sent, nil
}

func peerParams() (rate int, duration time.Duration, err error) {
	if rate, err = strconv.Atoi(os.Getenv("TESTENV_RATE")); err != nil || rate < 0 {
		return 0, 0, fmt.Errorf("bad rate %q", os.Getenv("TESTENV_RATE"))
	}
	duration, err = time.ParseDuration(os.Getenv("TESTENV_DURATION"))
	return rate, duration, err
}

func udpStream(local, target string) error {
	rate, duration, err := peerParams()
	if err != nil {
		return err
	}
	var remote *net.UDPAddr
	if rate > 0 {
		ap, err := netip.ParseAddrPort(target)
		if err != nil || !inLab(ap.Addr()) {
			return fmt.Errorf("bad target %q", target)
		}
		remote = net.UDPAddrFromAddrPort(ap)
	}
	laddr, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	received := make(chan int)
	go func() {
		n := 0
		buf := make([]byte, 2048)
		for {
			if _, err := c.Read(buf); err != nil {
				break // the deadline: the stream is over
			}
			n++
		}
		received <- n
	}()
	c.SetReadDeadline(time.Now().Add(duration + 500*time.Millisecond))
	payload := make([]byte, 160) // a voice frame's size
	sent, err := pace(rate, duration, func() error {
		_, err := c.WriteToUDP(payload, remote)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("sent %d received %d\n", sent, <-received)
	return nil
}

func icmpFlood(from, target string) error {
	rate, duration, err := peerParams()
	if err != nil {
		return err
	}
	dst, err := netip.ParseAddr(target)
	if err != nil || !dst.Is4() || !inLab(dst) {
		return fmt.Errorf("bad target %q", target)
	}
	c, err := net.ListenPacket("ip4:icmp", from)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	ident := uint16(os.Getpid())
	replies := make(chan int)
	go func() {
		n := 0
		buf := make([]byte, 2048)
		for {
			m, src, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			// The kernel hands this socket every ICMP packet: count
			// the echo replies to these requests only.
			if m >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == ident && src.String() == target {
				n++
			}
		}
		replies <- n
	}()
	to := &net.IPAddr{IP: dst.AsSlice()}
	seq := uint16(0)
	sent, err := pace(rate, duration, func() error {
		seq++
		_, err := c.WriteTo(icmpEcho(ident, seq), to)
		return err
	})
	if err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	fmt.Printf("sent %d replies %d\n", sent, <-replies)
	return nil
}

func tcpUpload(from, target string) error {
	size, err := strconv.Atoi(os.Getenv("TESTENV_COUNT"))
	if err != nil {
		return err
	}
	duration, err := time.ParseDuration(os.Getenv("TESTENV_DURATION"))
	if err != nil {
		return err
	}
	remote, err := netip.ParseAddrPort(target)
	if err != nil || !inLab(remote.Addr()) {
		return fmt.Errorf("bad target %q", target)
	}
	local, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(from, "0"))
	if err != nil {
		return err
	}
	d := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", target)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	const chunk = 16 << 10
	buf := make([]byte, chunk)
	// Chunks per second that spread size over duration.
	rate := int(float64(size) / chunk / duration.Seconds())
	chunks, err := pace(max(rate, 1), duration, func() error {
		_, err := conn.Write(buf)
		return err
	})
	if err != nil {
		return err
	}
	if err := conn.Close(); err != nil {
		return err
	}
	fmt.Printf("sent %d bytes\n", chunks*chunk)
	return nil
}

func tcpScan(from string, targets []string, port string) error {
	timeout, err := time.ParseDuration(os.Getenv("TESTENV_DURATION"))
	if err != nil {
		return err
	}
	local, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(from, "0"))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	d := net.Dialer{LocalAddr: local, Timeout: timeout}
	answered := 0
	for _, t := range targets {
		if a, err := netip.ParseAddr(t); err != nil || !inLab(a) {
			return fmt.Errorf("bad target %q", t)
		}
		conn, err := d.Dial("tcp", net.JoinHostPort(t, port))
		switch {
		case err == nil:
			conn.Close()
			answered++
		case errors.Is(err, syscall.ECONNREFUSED):
			answered++
		}
	}
	fmt.Printf("%d answered\n", answered)
	return nil
}
