package clickhousedb

import (
	"fmt"
	"regexp"
	"time"

	"github.com/wormsign/wormsign/internal/tlsconfig"
)

// Configuration says where ClickHouse is: the `clickhouse:` section of the
// configuration file (WORMSIGN_CLICKHOUSE_* in the environment). An empty
// Addr means no ClickHouse: `wormsign run` then prints alerts as JSON lines
// on stdout.
type Configuration struct {
	Addr     string `yaml:"addr"`
	Database string `yaml:"database"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile holds the password (read at start, one trailing newline
	// dropped), e.g. a systemd credential; instead of Password.
	PasswordFile string        `yaml:"password_file"`
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	// ReadTimeout bounds the wait for the server's answer to one INSERT
	// or query; a server that hangs is then retried like one that is down.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// Cluster is the name of a cluster in the servers' remote_servers
	// (system.clusters). With it, migrations run ON CLUSTER, each table
	// is a Replicated*MergeTree <table>_local on every shard with a
	// Distributed <table> beside it, and the sink writes each shard's
	// local tables (docs/clickhouse.md, "Cluster"). Addr is then any
	// server of the cluster. Empty: one server, plain MergeTree tables.
	Cluster string `yaml:"cluster"`
	// TLS: the server's secure native port (tcp_port_secure, 9440 by
	// convention) and how to check its certificate.
	TLS tlsconfig.Configuration `yaml:"tls"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{Database: "wormsign", Username: "default", DialTimeout: 10 * time.Second, ReadTimeout: time.Minute}
}

// identifier is what may be pasted into a statement as a database name.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate names the first bad key.
func (c Configuration) Validate() error {
	if !identifier.MatchString(c.Database) {
		return fmt.Errorf("clickhouse.database: %q is not a plain identifier", c.Database)
	}
	if c.Cluster != "" && !identifier.MatchString(c.Cluster) {
		// It is pasted into ON CLUSTER and into Distributed(...).
		return fmt.Errorf("clickhouse.cluster: %q is not a plain identifier", c.Cluster)
	}
	if c.DialTimeout <= 0 {
		return fmt.Errorf("clickhouse.dial_timeout: %s, want > 0", c.DialTimeout)
	}
	if c.ReadTimeout < 0 {
		return fmt.Errorf("clickhouse.read_timeout: %s, want >= 0 (0: the driver's default)", c.ReadTimeout)
	}
	return c.TLS.Validate("clickhouse.tls")
}
