package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestExampleConfiguration loads deploy/systemd/wormsign.example.yaml as
// a unit would, with dummy credentials in $CREDENTIALS_DIRECTORY, through
// the same loader and checks as every subcommand.
func TestExampleConfiguration(t *testing.T) {
	creds := t.TempDir()
	want := map[string]string{"kafka-password": "k-dummy", "clickhouse-password": "c-dummy", "http-token": "t-dummy", "webhook-secret": "w-dummy",
		"radius-secret": "r-dummy", "lease-token": "l-dummy"}
	for name, value := range want {
		if err := os.WriteFile(filepath.Join(creds, name), []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	cfg, err := loadConfiguration(filepath.Join(testenv.RepoRoot(t), "deploy/systemd/wormsign.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{"kafka-password": cfg.Kafka.SASL.Password, "clickhouse-password": cfg.ClickHouse.Password,
		"http-token": cfg.HTTP.Token, "radius-secret": cfg.Identity.RADIUS.Secret, "lease-token": cfg.Identity.DHCP.Token}
	if len(cfg.Sink.Webhooks) == 1 {
		got["webhook-secret"] = cfg.Sink.Webhooks[0].Secret
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q from the credential file", k, got[k], v)
		}
	}
	if !cfg.Kafka.TLS.Enabled || !cfg.ClickHouse.TLS.Enabled || cfg.Kafka.SASL.Mechanism == "" {
		t.Errorf("the example does not enable TLS and SASL: %+v %+v", cfg.Kafka.TLS, cfg.ClickHouse.TLS)
	}
}
