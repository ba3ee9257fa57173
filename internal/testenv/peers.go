package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Peers run inside a lab's namespaces as copies of the test binary itself:
// a package whose tests use them calls RunPeer first thing in TestMain.
const peerEnv = "TESTENV_PEER"

// RunPeer runs the peer role named in the environment and exits; without
// one it returns and the tests run.
func RunPeer() {
	role := os.Getenv(peerEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "smtp-server":
		err = smtpServer(strings.Split(os.Getenv("TESTENV_ADDRS"), ","), envOr("TESTENV_PORT", "25"))
	case "smtp-submit":
		n, _ := strconv.Atoi(os.Getenv("TESTENV_COUNT"))
		err = smtpSubmit(os.Getenv("TESTENV_FROM"), os.Getenv("TESTENV_TARGET"), n)
	case "udp-sender":
		err = udpSender(os.Getenv("TESTENV_FROM"), os.Getenv("TESTENV_TARGET"), os.Getenv("TESTENV_RATE"), os.Getenv("TESTENV_DURATION"))
	case "smtp-client":
		err = smtpClient(os.Getenv("TESTENV_FROM"), strings.Split(os.Getenv("TESTENV_TARGETS"), ","))
	case "spoof":
		err = spoof(os.Stdin)
	case "udp-echo":
		err = udpEcho(os.Getenv("TESTENV_LOCAL"))
	case "tcp-sink":
		err = tcpSink(os.Getenv("TESTENV_LOCAL"))
	case "udp-stream":
		err = udpStream(os.Getenv("TESTENV_LOCAL"), os.Getenv("TESTENV_TARGET"))
	case "icmp-flood":
		err = icmpFlood(os.Getenv("TESTENV_FROM"), os.Getenv("TESTENV_TARGET"))
	case "tcp-upload":
		err = tcpUpload(os.Getenv("TESTENV_FROM"), os.Getenv("TESTENV_TARGET"))
	case "tcp-scan":
		err = tcpScan(os.Getenv("TESTENV_FROM"), strings.Split(os.Getenv("TESTENV_TARGETS"), ","), os.Getenv("TESTENV_PORT"))
	default:
		err = fmt.Errorf("unknown peer role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// smtpServer answers like a mail server on port 25 of each address, until
// killed: banner, a reply per command, close on QUIT.
func smtpServer(addrs []string, port string) error {
	for _, a := range addrs {
		l, err := net.Listen("tcp", net.JoinHostPort(a, port))
		if err != nil {
			return err
		}
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				go serveSMTP(conn)
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

func serveSMTP(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "220 mx.example ESMTP\r\n")
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(strings.ToUpper(line), "QUIT") {
			fmt.Fprintf(conn, "221 bye\r\n")
			return
		}
		fmt.Fprintf(conn, "250 ok\r\n")
	}
}

// smtpClient opens one SMTP session from `from` to each target: refused
// or unanswered targets are failed attempts, which is the point.
func smtpClient(from string, targets []string) error {
	local, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(from, "0"))
	if err != nil {
		return err
	}
	d := net.Dialer{LocalAddr: local, Timeout: 2 * time.Second}
	ok := 0
	for _, t := range targets {
		conn, err := d.Dial("tcp", net.JoinHostPort(t, "25"))
		if err != nil {
			continue
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "EHLO zombie.example\r\nQUIT\r\n")
		io.Copy(io.Discard, conn)
		conn.Close()
		ok++
	}
	fmt.Printf("%d sessions\n", ok)
	return nil
}

// smtpSubmit sends n mails from `from` through the submission server
// target (host:port), one full session each: EHLO, AUTH, MAIL, RCPT,
// DATA with a short message, QUIT. It prints how many were answered.
func smtpSubmit(from, target string, n int) error {
	local, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(from, "0"))
	if err != nil {
		return err
	}
	d := net.Dialer{LocalAddr: local, Timeout: 2 * time.Second}
	ok := 0
	for i := range n {
		conn, err := d.Dial("tcp", target)
		if err != nil {
			continue
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "EHLO pc.example\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\nMAIL FROM:<user@example.net>\r\n"+
			"RCPT TO:<rcpt%d@example.org>\r\nDATA\r\nSubject: hello %d\r\n\r\nA short message.\r\n.\r\nQUIT\r\n", i, i)
		io.Copy(io.Discard, conn)
		conn.Close()
		ok++
	}
	fmt.Printf("%d sessions\n", ok)
	return nil
}

// udpSender sends small UDP datagrams from `from` to target (host:port)
// at rate per second for duration, each from a new socket (a new source
// port, so a new flow), as a flood with random source ports does, or as a
// resolver client does for its queries.
func udpSender(from, target, rate, duration string) error {
	r, err := strconv.Atoi(rate)
	if err != nil || r < 1 {
		return fmt.Errorf("bad rate %q", rate)
	}
	dur, err := time.ParseDuration(duration)
	if err != nil {
		return err
	}
	local, err := net.ResolveUDPAddr("udp", net.JoinHostPort(from, "0"))
	if err != nil {
		return err
	}
	remote, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return err
	}
	payload := make([]byte, 64)
	began := time.Now()
	sent := 0
	for time.Since(began) < dur {
		for sent < int(time.Since(began).Seconds()*float64(r)) {
			c, err := net.DialUDP("udp", local, remote)
			if err != nil {
				return err
			}
			c.Write(payload)
			c.Close()
			sent++
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("%d datagrams\n", sent)
	return nil
}

func (l *Lab) peer(role string, ns string, env ...string) *exec.Cmd {
	cmd := l.Command(ns, os.Args[0])
	cmd.Env = append(os.Environ(), append([]string{peerEnv + "=" + role}, env...)...)
	return cmd
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// StartSMTPServers makes the given internet addresses answer on port 25
// until cleanup. Other addresses of the internet namespace refuse.
func (l *Lab) StartSMTPServers(t testing.TB, addrs []netip.Addr) {
	t.Helper()
	l.startSMTPServers(t, addrs, "25")
}

func (l *Lab) startSMTPServers(t testing.TB, addrs []netip.Addr, port string) {
	t.Helper()
	cmd := l.peer("smtp-server", l.Internet, "TESTENV_ADDRS="+joinAddrs(addrs), "TESTENV_PORT="+port)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start smtp servers: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("smtp servers did not start: %q %v", line, err)
	}
}

// StartSMTPServersOn is StartSMTPServers on another port (a submission
// server on 587).
func (l *Lab) StartSMTPServersOn(t testing.TB, addrs []netip.Addr, port int) {
	t.Helper()
	l.startSMTPServers(t, addrs, strconv.Itoa(port))
}

// SMTPSubmit has subscriber `from` send n mails through the submission
// server at target:port, one full session each, and returns how many were
// answered.
func (l *Lab) SMTPSubmit(t testing.TB, from, target netip.Addr, port, n int) int {
	t.Helper()
	cmd := l.peer("smtp-submit", l.Subscriber, "TESTENV_FROM="+from.String(),
		"TESTENV_TARGET="+netip.AddrPortFrom(target, uint16(port)).String(), "TESTENV_COUNT="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smtp submit: %v", err)
	}
	var got int
	if _, err := fmt.Sscanf(string(out), "%d sessions", &got); err != nil {
		t.Fatalf("smtp submit said %q", out)
	}
	return got
}

// StartUDPSender starts subscriber `from` sending rate datagrams a second
// to target:port for duration, each from a new source port. Wait on the
// returned command; it is killed at cleanup.
func (l *Lab) StartUDPSender(t testing.TB, from, target netip.Addr, port, rate int, duration time.Duration) *exec.Cmd {
	t.Helper()
	cmd := l.peer("udp-sender", l.Subscriber, "TESTENV_FROM="+from.String(),
		"TESTENV_TARGET="+netip.AddrPortFrom(target, uint16(port)).String(),
		"TESTENV_RATE="+strconv.Itoa(rate), "TESTENV_DURATION="+duration.String())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start udp sender: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// SMTPSessions has subscriber `from` open an SMTP session to each target
// and returns how many were answered.
func (l *Lab) SMTPSessions(t testing.TB, from netip.Addr, targets []netip.Addr) int {
	t.Helper()
	cmd := l.peer("smtp-client", l.Subscriber, "TESTENV_FROM="+from.String(), "TESTENV_TARGETS="+joinAddrs(targets))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smtp client: %v", err)
	}
	var n int
	if _, err := fmt.Sscanf(string(out), "%d sessions", &n); err != nil {
		t.Fatalf("smtp client said %q", out)
	}
	return n
}
