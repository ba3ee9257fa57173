package clickhousedb

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/tlsconfig"
)

// TestTLSAndPassword connects with TLS and a password to private servers
// of both kinds and migrates a database there; a wrong password and an
// untrusted certificate fail Open with errors that name the setting and
// not the password. 18.16 serves TLS itself (tcp_port_secure); the
// current server (chdb-core's clickhouse-local) cannot open a secure
// port, so a TLS terminator stands in front of its native port.
func TestTLSAndPassword(t *testing.T) {
	const user, password = "wormsign", "ch-pw-5b2d8e61"
	pki := testenv.NewPKI(t)
	start := map[string]func(testing.TB, *testenv.PKI, string, string) testenv.SecureClickHouse{
		"18.16": testenv.StartSecureClickHouse18, "modern": testenv.StartSecureClickHouseModern,
	}
	for _, srv := range testenv.ClickHouseServers() {
		t.Run(srv.Name, func(t *testing.T) {
			server := start[srv.Name](t, pki, user, password)
			base := func() Configuration {
				cfg := DefaultConfiguration()
				cfg.Addr = server.SecureAddr
				cfg.Database = testenv.Name(t, "wst")
				cfg.Username, cfg.Password = user, password
				cfg.DialTimeout = 5 * time.Second
				cfg.TLS = tlsconfig.Configuration{Enabled: true, CAFile: pki.CAFile, ServerName: "localhost"}
				return cfg
			}
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cfg := base()
			db, err := Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			defer db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database)
			if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
				t.Fatal(err)
			}
			var who string
			if err := db.QueryRow(ctx, "SELECT user FROM system.processes WHERE query LIKE '%whoami-7c1%' LIMIT 1").Scan(&who); err != nil {
				t.Fatal(err)
			}
			if who != user {
				t.Errorf("connected as %q, want %q", who, user)
			}
			t.Logf("%s over TLS as %s: %s", srv.Name, who, db.Version())
			failures := []struct {
				name  string
				edit  func(*Configuration)
				names string
			}{
				{"wrong password", func(c *Configuration) { c.Password = "not-" + password }, "clickhouse.password"},
				{"wrong password in clear", func(c *Configuration) {
					c.Addr, c.TLS, c.Password = server.Addr, tlsconfig.Configuration{}, "not-"+password
				}, "clickhouse.password"},
				{"untrusted certificate", func(c *Configuration) { c.TLS.CAFile = pki.OtherCAFile }, "clickhouse.tls.ca_file"},
				{"wrong server name", func(c *Configuration) { c.TLS.ServerName = "clickhouse.example.net" }, "clickhouse.tls.server_name"},
			}
			for _, f := range failures {
				t.Run(f.name, func(t *testing.T) {
					cfg := base()
					f.edit(&cfg)
					_, err := Open(ctx, cfg)
					if err == nil {
						t.Fatal("Open succeeded")
					}
					t.Logf("%v", err)
					if !strings.Contains(err.Error(), f.names) {
						t.Errorf("error does not name %s: %v", f.names, err)
					}
					if strings.Contains(err.Error(), password) {
						t.Errorf("error shows the password: %v", err)
					}
				})
			}
		})
	}
}
