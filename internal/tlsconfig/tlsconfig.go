// Package tlsconfig is the TLS section wormsign's clients share (kafka.tls,
// clickhouse.tls): a CA file to trust, an optional client certificate and
// the name to check on the server's certificate. There is no way to skip
// verification: a server whose certificate cannot be checked is refused.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Configuration is the `tls:` section of a client.
type Configuration struct {
	Enabled bool `yaml:"enabled"`
	// CAFile holds the PEM certificates of the authorities that may sign
	// the server's certificate; empty: the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile: the client's own certificate and key (PEM),
	// for servers that require one. Both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is checked against the server's certificate; empty: the
	// host of the address dialled.
	ServerName string `yaml:"server_name"`
}

// Validate names the first bad key under prefix (e.g. "kafka.tls").
func (c Configuration) Validate(prefix string) error {
	if !c.Enabled {
		if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.ServerName != "" {
			return fmt.Errorf("%s.enabled is false but %s is configured: set %s.enabled: true", prefix, prefix, prefix)
		}
		return nil
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("%s.cert_file and %s.key_file: give both or neither", prefix, prefix)
	}
	return nil
}

// Build returns the client's tls.Config, nil when TLS is off. Errors name
// the key under prefix.
func (c Configuration) Build(prefix string) (*tls.Config, error) {
	if err := c.Validate(prefix); err != nil || !c.Enabled {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", prefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file: no PEM certificate in %s", prefix, c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file/%s.key_file: %w", prefix, prefix, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Explain names the key an error from a TLS handshake is about: an
// unknown authority is kafka.tls.ca_file's, a name that does not match is
// server_name's. It returns "" for other errors. Some clients flatten the
// errors they pass on, so the text is read as well.
func Explain(prefix string, err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var verify *tls.CertificateVerificationError
	var alert tls.AlertError
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case errors.As(err, &unknown), strings.Contains(msg, "certificate signed by unknown authority"):
		return prefix + ".ca_file: the server's certificate is not signed by a trusted authority"
	case errors.As(err, &host), strings.Contains(msg, "certificate is valid for"):
		return prefix + ".server_name: the server's certificate is not valid for this name"
	case errors.As(err, &verify), strings.Contains(msg, "tls: failed to verify certificate"):
		return prefix + ".ca_file: the server's certificate cannot be verified"
	case errors.As(err, &alert), strings.Contains(msg, "remote error: tls:"):
		return prefix + ".cert_file: the server refused the TLS handshake (client certificate?)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return prefix + ".enabled: the server does not speak TLS on this port"
	}
	return ""
}
