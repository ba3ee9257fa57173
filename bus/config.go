package bus

import (
	"fmt"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/tlsconfig"
)

// Configuration of the Kafka transport. Without brokers, `wormsign run` uses
// the in-process bus and the other subcommands refuse to start.
type Configuration struct {
	Brokers           []string      `yaml:"brokers"`
	FlowsTopic        string        `yaml:"flows_topic"`
	AlertsTopic       string        `yaml:"alerts_topic"`
	Partitions        int           `yaml:"partitions"`
	ReplicationFactor int           `yaml:"replication_factor"`
	MinInsyncReplicas int           `yaml:"min_insync_replicas"` // of the topics wormsign creates; 0: MinInsync's default
	Compression       string        `yaml:"compression"`
	ConnectTimeout    time.Duration `yaml:"connect_timeout"`
	// BatchBytes bounds one produce request.
	BatchBytes int `yaml:"batch_bytes"`
	// Linger is ignored: producers write each batch they are handed at
	// once (the collector's own linger gathers its batches). The key stays
	// so that configurations that set it still load.
	Linger time.Duration `yaml:"linger"`
	// TLS encrypts every connection to the brokers and checks their
	// certificates; SASL authenticates wormsign to them.
	TLS  tlsconfig.Configuration `yaml:"tls"`
	SASL SASLConfiguration       `yaml:"sasl"`
}

// SASLConfiguration is how wormsign authenticates to the brokers.
type SASLConfiguration struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: none.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	// Password, or PasswordFile: a file holding it (read at start, one
	// trailing newline dropped), e.g. a systemd credential.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

// DefaultConfiguration returns the defaults documented in docs/configuration.md.
func DefaultConfiguration() Configuration {
	return Configuration{
		FlowsTopic:        "wormsign-flows-v2",
		AlertsTopic:       "wormsign-alerts-v1",
		Partitions:        8,
		ReplicationFactor: 1,
		Compression:       "lz4",
		ConnectTimeout:    10 * time.Second,
		BatchBytes:        1 << 20,
		Linger:            20 * time.Millisecond,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.FlowsTopic == "":
		return fmt.Errorf("kafka.flows_topic must not be empty")
	case strings.HasSuffix(c.FlowsTopic, "-v1"):
		// A v1 reader finds no flows in a v2 record and would say nothing.
		return fmt.Errorf("kafka.flows_topic: %s names the v1 format, which this version no longer writes; use %s (docs/collector.md, Upgrading to flows v2)",
			c.FlowsTopic, strings.TrimSuffix(c.FlowsTopic, "-v1")+"-v2")
	case c.AlertsTopic == "":
		return fmt.Errorf("kafka.alerts_topic must not be empty")
	case c.Partitions < 1:
		return fmt.Errorf("kafka.partitions: %d, want >= 1", c.Partitions)
	case c.ReplicationFactor < 1:
		return fmt.Errorf("kafka.replication_factor: %d, want >= 1", c.ReplicationFactor)
	case c.MinInsyncReplicas < 0 || c.MinInsyncReplicas > c.ReplicationFactor:
		return fmt.Errorf("kafka.min_insync_replicas: %d, want 1 to kafka.replication_factor (%d), or 0 for the default",
			c.MinInsyncReplicas, c.ReplicationFactor)
	case c.BatchBytes < 1024:
		return fmt.Errorf("kafka.batch_bytes: %d, want >= 1024", c.BatchBytes)
	}
	if _, err := compressionCodec(c.Compression); err != nil {
		return fmt.Errorf("kafka.compression: %w", err)
	}
	if err := c.TLS.Validate("kafka.tls"); err != nil {
		return err
	}
	switch c.SASL.Mechanism {
	case "":
		if c.SASL.Username != "" || c.SASL.Password != "" {
			return fmt.Errorf("kafka.sasl.mechanism: empty but kafka.sasl.username or password is set; want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
		}
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.SASL.Username == "" {
			return fmt.Errorf("kafka.sasl.username: empty, needed by kafka.sasl.mechanism %s", c.SASL.Mechanism)
		}
		if c.SASL.Mechanism == "PLAIN" && !c.TLS.Enabled {
			return fmt.Errorf("kafka.sasl.mechanism: PLAIN sends the password in clear text; enable kafka.tls")
		}
	default:
		return fmt.Errorf("kafka.sasl.mechanism: %q, want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASL.Mechanism)
	}
	return nil
}

// MinInsync is the min.insync.replicas of the topics wormsign creates:
// kafka.min_insync_replicas, or by default 1 with a replication factor of
// 1 and else one less than the replication factor, at most 2 (3 replicas:
// a write survives the loss of any one broker and the topic takes writes
// while one is down).
func (c Configuration) MinInsync() int {
	switch {
	case c.MinInsyncReplicas > 0:
		return c.MinInsyncReplicas
	case c.ReplicationFactor <= 1:
		return 1
	}
	return min(c.ReplicationFactor-1, 2)
}
