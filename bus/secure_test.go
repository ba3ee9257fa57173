package bus

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/tlsconfig"
)

// TestKafkaSASLSSL runs the bus through a private broker's SASL_SSL
// listener (which also wants a client certificate) with each mechanism: topics created, messages published and
// read back by a consumer, a consumer group and Follow; then a wrong
// password, an untrusted certificate and a missing client certificate fail NewKafka with errors that
// name the setting and not the password.
func TestKafkaSASLSSL(t *testing.T) {
	const password = "kafka-pw-7f3c1e9a"
	pki := testenv.NewPKI(t)
	broker := testenv.StartSecureKafka(t, pki, "wormsign", password)
	secure := func(mechanism string) Configuration {
		cfg := DefaultConfiguration()
		cfg.Brokers = []string{broker.Secure}
		cfg.FlowsTopic = testenv.Name(t, "flows")
		cfg.AlertsTopic = testenv.Name(t, "alerts")
		cfg.Partitions = 2
		cfg.ConnectTimeout = 10 * time.Second
		cfg.TLS = tlsconfig.Configuration{Enabled: true, CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
		cfg.SASL = SASLConfiguration{Mechanism: mechanism, Username: "wormsign", Password: password}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, mechanism := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mechanism, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := secure(mechanism)
			k, err := NewKafka(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			p, err := k.Producer(cfg.FlowsTopic)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			const n = 20
			var msgs []Message
			for i := range n {
				msgs = append(msgs, Message{Key: fmt.Appendf(nil, "k%d", i%4), Value: fmt.Appendf(nil, "%d", i)})
			}
			if err := p.Publish(ctx, msgs...); err != nil {
				t.Fatal(err)
			}
			// A plain consumer in a group, committing.
			c, _ := k.Consumer(cfg.FlowsTopic, testenv.Name(t, "g"))
			for i := range n {
				m, err := c.Fetch(ctx)
				if err != nil {
					t.Fatalf("fetch %d: %v", i, err)
				}
				if err := c.Commit(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()
			// A partition-aware group: every message once.
			g, err := k.Partitioned(cfg.FlowsTopic, testenv.Name(t, "pg"))
			if err != nil {
				t.Fatal(err)
			}
			gctx, gcancel := context.WithCancel(ctx)
			var mu sync.Mutex
			got := 0
			done := make(chan error, 1)
			go func() {
				done <- g.Consume(gctx, func(ctx context.Context, cl Claim) {
					for {
						m, err := cl.Fetch(ctx)
						if err != nil {
							return
						}
						cl.Commit(ctx, m)
						mu.Lock()
						if got++; got == n {
							gcancel()
						}
						mu.Unlock()
					}
				})
			}()
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatal("group did not read every message")
			}
			g.Close()
			if got != n {
				t.Errorf("group read %d messages, want %d", got, n)
			}
			// Follow dials the partition leaders itself.
			fctx, fcancel := context.WithCancel(ctx)
			followed := 0
			k.Follow(fctx, cfg.FlowsTopic, func(Message) error { followed++; return nil }, fcancel)
			if followed != n {
				t.Errorf("Follow read %d messages, want %d", followed, n)
			}
			if err := k.DeleteTopics(ctx, cfg.FlowsTopic, cfg.AlertsTopic); err != nil {
				t.Error(err)
			}
		})
	}
	failures := []struct {
		name  string
		edit  func(*Configuration)
		names string
	}{
		{"wrong password SCRAM", func(c *Configuration) { c.SASL.Password = "not-" + password }, "kafka.sasl.password"},
		{"wrong password PLAIN", func(c *Configuration) {
			c.SASL.Mechanism, c.SASL.Password = "PLAIN", "not-"+password
		}, "kafka.sasl.password"},
		{"untrusted certificate", func(c *Configuration) { c.TLS.CAFile = pki.OtherCAFile }, "kafka.tls.ca_file"},
		{"wrong server name", func(c *Configuration) { c.TLS.ServerName = "kafka.example.net" }, "kafka.tls.server_name"},
		{"TLS off", func(c *Configuration) { c.TLS = tlsconfig.Configuration{} }, "kafka.tls"},
		{"no client certificate", func(c *Configuration) { c.TLS.CertFile, c.TLS.KeyFile = "", "" }, "kafka.tls.cert_file"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := secure("SCRAM-SHA-512")
			cfg.ConnectTimeout = 5 * time.Second
			f.edit(&cfg)
			start := time.Now()
			_, err := NewKafka(ctx, cfg)
			if err == nil {
				t.Fatal("NewKafka succeeded")
			}
			t.Logf("%s: %v (%s)", f.name, err, time.Since(start).Round(time.Millisecond))
			if !strings.Contains(err.Error(), f.names) {
				t.Errorf("error does not name %s: %v", f.names, err)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
}

// TestKafkaServicesSASLSSL checks the SASL_SSL listener deploy/services.sh
// adds to the shared broker (9094; WORMSIGN_TEST_KAFKA_SASL_BROKERS and
// SERVICES_DIR point elsewhere): SCRAM-SHA-512 as user wormsign with the
// password and CA that services.sh made. A broker started by an older
// services.sh has no such listener: the test is skipped then, as the
// private broker of TestKafkaSASLSSL covers the code.
func TestKafkaServicesSASLSSL(t *testing.T) {
	dir := os.Getenv("SERVICES_DIR")
	if dir == "" {
		dir = filepath.Join(testenv.RepoRoot(t), ".services")
	}
	broker := os.Getenv("WORMSIGN_TEST_KAFKA_SASL_BROKERS")
	if broker == "" {
		broker = "127.0.0.1:9094"
	}
	password, err := os.ReadFile(filepath.Join(dir, "kafka", "tls", "sasl-password"))
	if err != nil {
		t.Skipf("no SASL password from deploy/services.sh: %v", err)
	}
	if c, err := net.DialTimeout("tcp", broker, time.Second); err != nil {
		t.Skipf("no SASL_SSL listener on %s (a broker started by an older deploy/services.sh): %v", broker, err)
	} else {
		c.Close()
	}
	cfg := DefaultConfiguration()
	cfg.Brokers = []string{broker}
	cfg.FlowsTopic, cfg.AlertsTopic = testenv.Name(t, "flows"), testenv.Name(t, "alerts")
	cfg.TLS = tlsconfig.Configuration{Enabled: true, CAFile: filepath.Join(dir, "kafka", "tls", "ca.pem")}
	cfg.SASL = SASLConfiguration{Mechanism: "SCRAM-SHA-512", Username: "wormsign", Password: strings.TrimSpace(string(password))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := NewKafka(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := k.Producer(cfg.FlowsTopic)
	defer p.Close()
	if err := p.Publish(ctx, Message{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteTopics(ctx, cfg.FlowsTopic, cfg.AlertsTopic); err != nil {
		t.Error(err)
	}
}
