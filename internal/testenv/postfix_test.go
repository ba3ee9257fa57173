package testenv

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/smtp"
	"strings"
	"testing"
	"time"
)

// dialPostfix opens an SMTP session with p, upgraded to TLS that verifies
// p's certificate.
func dialPostfix(t *testing.T, p *Postfix) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClient(conn, p.ServerName())
	if err != nil {
		t.Fatalf("smtp greeting: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("wormsign.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	if err := c.StartTLS(&tls.Config{RootCAs: p.RootCAs(), ServerName: p.ServerName()}); err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	return c
}

// sendMail sends one message to rcpt through p as its SASL user.
func sendMail(t *testing.T, p *Postfix, rcpt, subject, body string) {
	t.Helper()
	c := dialPostfix(t, p)
	if err := c.Auth(smtp.PlainAuth("", p.User(), p.Password(), p.ServerName())); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := c.Mail("notices@isp.example"); err != nil {
		t.Fatalf("MAIL FROM: %v", err)
	}
	if err := c.Rcpt(rcpt); err != nil {
		t.Fatalf("RCPT TO: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	fmt.Fprintf(w, "From: notices@isp.example\r\nTo: %s\r\nSubject: %s\r\n\r\n%s\r\n", rcpt, subject, body)
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

func TestPostfix(t *testing.T) {
	p := StartPostfix(t, PostfixConfig{})

	t.Run("authenticated delivery", func(t *testing.T) {
		sendMail(t, p, "someone@customers.example", "Your connection is infected", "A host on your line scans the Internet.")
		msgs := p.WaitMessages(t, 1, 20*time.Second)
		if len(msgs) != 1 {
			t.Fatalf("%d messages delivered, want 1", len(msgs))
		}
		m := msgs[0]
		if got := m.Header.Get("Subject"); got != "Your connection is infected" {
			t.Errorf("Subject %q", got)
		}
		if got := strings.TrimSpace(m.Body); got != "A host on your line scans the Internet." {
			t.Errorf("body %q", got)
		}
	})

	t.Run("unauthenticated refused", func(t *testing.T) {
		c := dialPostfix(t, p)
		if err := c.Mail("notices@isp.example"); err != nil {
			t.Fatalf("MAIL FROM: %v", err)
		}
		if err := c.Rcpt("someone@customers.example"); err == nil {
			t.Fatal("RCPT TO accepted without AUTH")
		} else if !strings.HasPrefix(err.Error(), "5") {
			t.Errorf("RCPT TO without AUTH: %v, want a 5xx refusal", err)
		}
	})

	t.Run("wrong password refused", func(t *testing.T) {
		c := dialPostfix(t, p)
		if err := c.Auth(smtp.PlainAuth("", p.User(), "wrong", p.ServerName())); err == nil {
			t.Fatal("AUTH accepted a wrong password")
		} else if !strings.HasPrefix(err.Error(), "535") {
			t.Errorf("AUTH with a wrong password: %v, want 535", err)
		}
	})

	t.Run("other domains refused", func(t *testing.T) {
		c := dialPostfix(t, p)
		if err := c.Auth(smtp.PlainAuth("", p.User(), p.Password(), p.ServerName())); err != nil {
			t.Fatalf("AUTH PLAIN: %v", err)
		}
		if err := c.Mail("notices@isp.example"); err != nil {
			t.Fatalf("MAIL FROM: %v", err)
		}
		if err := c.Rcpt("someone@elsewhere.example"); err == nil {
			t.Fatal("RCPT TO another domain accepted: the test relay must not relay")
		}
	})
}

// Two instances side by side share nothing: each delivers only its own
// domain's mail, into its own mailbox.
func TestPostfixInstancesApart(t *testing.T) {
	a := StartPostfix(t, PostfixConfig{})
	b := StartPostfix(t, PostfixConfig{Domain: "other-isp.example"})
	sendMail(t, a, "one@customers.example", "to a", "first")
	sendMail(t, b, "two@other-isp.example", "to b", "second")
	for _, c := range []struct {
		p       *Postfix
		subject string
	}{{a, "to a"}, {b, "to b"}} {
		c.p.WaitMessages(t, 1, 20*time.Second)
		time.Sleep(500 * time.Millisecond) // a stray second message would land by now
		if msgs := c.p.Messages(t); len(msgs) != 1 || msgs[0].Header.Get("Subject") != c.subject {
			t.Errorf("%s: %d messages, want one with Subject %q", c.p.Addr(), len(msgs), c.subject)
		}
	}
}
