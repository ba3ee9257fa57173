package httpserver

import (
	"bufio"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func from(addr string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = addr
	return r
}

// Per address (IPv6 by /64): free failures, then doubling waits; a success
// clears the address; the server-wide budget holds back addresses that
// failed, never one that did not.
func TestAuthLimiter(t *testing.T) {
	l := NewAuthLimiter(prometheus.NewRegistry())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Now = func() time.Time { return now }
	a, a2, b := "[2001:db8:1:2::1]:4000", "[2001:db8:1:2::99]:5000", "192.0.2.7:1234"
	for i := 0; i < 5; i++ {
		if w := l.Wait(from(a)); w != 0 {
			t.Fatalf("free failure %d: wait %s", i, w)
		}
		l.Failed(from(a), "bearer")
	}
	if w := l.Wait(from(a2)); w != 0 {
		t.Fatalf("after the free failures: wait %s", w)
	}
	l.Failed(from(a2), "bearer") // the same /64
	if w := l.Wait(from(a)); w != time.Second {
		t.Errorf("after 6 failures of the /64: wait %s, want 1s", w)
	}
	if w := l.Wait(from(b)); w != 0 {
		t.Errorf("another address waits %s", w)
	}
	now = now.Add(time.Second)
	l.Failed(from(a), "bearer")
	if w := l.Wait(from(a)); w != 2*time.Second {
		t.Errorf("after 7 failures: wait %s, want 2s", w)
	}
	l.Succeeded(from(a))
	if w := l.Wait(from(a)); w != 0 {
		t.Errorf("after a success: wait %s", w)
	}
	// Forgotten after Forget.
	l.Failed(from(b), "login")
	for i := 0; i < 10; i++ {
		l.Failed(from(b), "login")
	}
	now = now.Add(l.Forget + time.Second)
	if w := l.Wait(from(b)); w != 0 {
		t.Errorf("after Forget: wait %s", w)
	}
	// The global budget: 100 failures from 100 addresses (one each, all
	// free), then every address that failed waits, a new one does not.
	for i := 0; i < 101; i++ {
		l.Failed(from(net.JoinHostPort(net.IPv4(198, 51, 100, byte(i)).String(), "1")), "bearer")
	}
	if w := l.Wait(from("198.51.100.3:9")); w <= 0 || w > time.Second+time.Millisecond {
		t.Errorf("global budget spent: an address that failed waits %s, want up to 1s", w)
	}
	if w := l.Wait(from("203.0.113.1:9")); w != 0 {
		t.Errorf("global budget spent: a new address waits %s, want 0", w)
	}
	now = now.Add(2 * time.Second)
	if w := l.Wait(from("198.51.100.3:9")); w != 0 {
		t.Errorf("budget refilled: wait %s", w)
	}
}

// A client that sends its headers too slowly is cut off; bodies past
// max_body_bytes are refused; negative limits do not validate.
func TestServerLimits(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler), Configuration{Listen: "127.0.0.1:0", ReadHeaderTimeout: 200 * time.Millisecond, MaxBodyBytes: 10},
		prometheus.NewRegistry())
	s.Handle("/echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 100)
		n, err := r.Body.Read(b)
		for err == nil {
			var m int
			m, err = r.Body.Read(b[n:])
			n += m
		}
		if BodyTooLarge(err) {
			WriteError(w, http.StatusRequestEntityTooLarge, TooLargeMessage(10))
		}
	}))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.server.WriteTimeout != DefaultConfiguration().WriteTimeout || s.server.IdleTimeout == 0 || s.server.ReadTimeout == 0 {
		t.Errorf("zero timeouts not defaulted: %+v", s.server)
	}
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n"))
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	if took := time.Since(start); took > 2*time.Second || strings.Contains(line, "200") {
		t.Errorf("slow headers: %q after %s, want the connection closed after ~200ms", line, took)
	}
	resp, err := http.Post("http://"+s.Addr()+"/echo", "text/plain", strings.NewReader(strings.Repeat("x", 50)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d, want 413", resp.StatusCode)
	}
	if err := (Configuration{ReadTimeout: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "http.read_timeout") {
		t.Errorf("negative read_timeout: %v", err)
	}
}

// The server-wide budget holds every address that failed, also those the
// per-address table had no room for (past MaxAddresses), while an address
// that never failed is still checked.
func TestAuthLimiterBudgetPastMaxAddresses(t *testing.T) {
	l := NewAuthLimiter(prometheus.NewRegistry())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Now = func() time.Time { return now }
	l.MaxAddresses, l.GlobalBurst, l.tokens = 2, 3, 3
	tracked, untracked := []string{"192.0.2.1:1", "192.0.2.2:1"}, "192.0.2.3:1"
	for _, a := range tracked {
		l.Failed(from(a), "bearer")
	}
	l.Failed(from(untracked), "bearer") // the table is full: not tracked
	if len(l.clients) != 2 {
		t.Fatalf("%d addresses tracked, want 2", len(l.clients))
	}
	for _, a := range append(tracked, untracked) {
		if w := l.Wait(from(a)); w <= 0 || w > time.Second+time.Millisecond {
			t.Errorf("budget spent: %s, which failed, waits %s, want up to 1s", a, w)
		}
	}
	if w := l.Wait(from("198.51.100.9:1")); w != 0 {
		t.Errorf("budget spent: an address that never failed waits %s, want 0", w)
	}
	now = now.Add(2 * time.Second)
	if w := l.Wait(from(untracked)); w != 0 {
		t.Errorf("budget refilled: wait %s", w)
	}
	// Forgotten after Forget, as a tracked address is.
	l.tokens = 0
	now = now.Add(l.Forget + time.Second)
	l.refill = now
	if w := l.Wait(from(untracked)); w != 0 {
		t.Errorf("after Forget: wait %s", w)
	}
}
