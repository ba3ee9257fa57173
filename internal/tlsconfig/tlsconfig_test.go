package tlsconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wormsign/wormsign/internal/testenv"
)

func TestBuild(t *testing.T) {
	pki := testenv.NewPKI(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	cfg, err := Configuration{Enabled: true, CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "kafka.example.net"}.Build("kafka.tls")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.ServerName != "kafka.example.net" || cfg.InsecureSkipVerify {
		t.Errorf("config %+v", cfg)
	}
	if cfg, err := (Configuration{}).Build("kafka.tls"); cfg != nil || err != nil {
		t.Errorf("disabled: %v %v, want nil nil", cfg, err)
	}
	for _, tc := range []struct {
		c    Configuration
		want string
	}{
		{Configuration{CAFile: pki.CAFile}, "kafka.tls.enabled is false but"},
		{Configuration{Enabled: true, CertFile: pki.ClientCert}, "kafka.tls.cert_file and kafka.tls.key_file: give both"},
		{Configuration{Enabled: true, CAFile: "/nonexistent/ca.pem"}, "kafka.tls.ca_file: open /nonexistent/ca.pem"},
		{Configuration{Enabled: true, CAFile: notPEM}, "kafka.tls.ca_file: no PEM certificate in"},
		{Configuration{Enabled: true, CertFile: pki.ClientCert, KeyFile: pki.ServerKey}, "kafka.tls.cert_file/kafka.tls.key_file"},
	} {
		if _, err := tc.c.Build("kafka.tls"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.c, err, tc.want)
		}
	}
}
