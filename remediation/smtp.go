package remediation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"time"
)

// relay sends messages through the ISP's relay.
type relay struct {
	config SMTPConfiguration
	tls    *tls.Config
}

func newRelay(c SMTPConfiguration) (*relay, error) {
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return nil, fmt.Errorf("remediation.smtp.addr %q: %w", c.Addr, err)
	}
	name := c.ServerName
	if name == "" {
		name = host
	}
	tc := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("remediation.smtp.ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("remediation.smtp.ca_file %s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return &relay{config: c, tls: tc}, nil
}

// errPermanent marks a refusal that a retry will not change (5xx).
var errPermanent = errors.New("refused for good")

// send delivers one message: EHLO, STARTTLS (required unless
// remediation.smtp.starttls is off), AUTH PLAIN when a username is set,
// then the envelope and the data.
func (r *relay) send(ctx context.Context, m Message) error {
	ctx, cancel := context.WithTimeout(ctx, r.config.Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.config.Addr)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", r.config.Addr, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(r.config.Addr)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp %s: %w", r.config.Addr, classify(err))
	}
	defer c.Close()
	helo := r.config.Helo
	if helo == "" {
		helo, _ = os.Hostname()
	}
	if err := c.Hello(helo); err != nil {
		return fmt.Errorf("smtp EHLO: %w", classify(err))
	}
	if r.config.StartTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return fmt.Errorf("smtp %s offers no STARTTLS (remediation.smtp.starttls): %w", r.config.Addr, errPermanent)
		}
		if err := c.StartTLS(r.tls); err != nil {
			return fmt.Errorf("smtp STARTTLS: %w", err)
		}
	}
	if r.config.Username != "" {
		// PlainAuth sends the password only over TLS (or to localhost);
		// its host is the one the client was made for.
		if err := c.Auth(smtp.PlainAuth("", r.config.Username, r.config.Password, host)); err != nil {
			return fmt.Errorf("smtp AUTH as %s: %w", r.config.Username, classify(err))
		}
	}
	if err := c.Mail(m.From); err != nil {
		return fmt.Errorf("smtp MAIL FROM: %w", classify(err))
	}
	if err := c.Rcpt(m.To); err != nil {
		return fmt.Errorf("smtp RCPT TO %s: %w", m.To, classify(err))
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp DATA: %w", classify(err))
	}
	if _, err := w.Write(m.Raw); err != nil {
		return fmt.Errorf("smtp DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp DATA: %w", classify(err))
	}
	return c.Quit()
}

// classify marks 5xx answers permanent.
func classify(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 {
		return fmt.Errorf("%w (%w)", err, errPermanent)
	}
	return err
}

// backoff is the wait before attempt n (1-based) of a notice: a minute,
// doubling, at most an hour.
func backoff(n int) time.Duration {
	d := time.Minute << min(n-1, 6)
	return min(d, time.Hour)
}
