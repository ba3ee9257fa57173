package sink

import (
	"fmt"
	"regexp"
	"time"
)

// ClickHouseConfiguration says where the sink writes. An empty Addr means
// no ClickHouse: `wormsign run` then prints alerts as JSON lines on stdout.
type ClickHouseConfiguration struct {
	Addr        string        `yaml:"addr"`
	Database    string        `yaml:"database"`
	Username    string        `yaml:"username"`
	Password    string        `yaml:"password"`
	DialTimeout time.Duration `yaml:"dial_timeout"`
}

// DefaultClickHouseConfiguration returns the documented defaults.
func DefaultClickHouseConfiguration() ClickHouseConfiguration {
	return ClickHouseConfiguration{Database: "wormsign", Username: "default", DialTimeout: 10 * time.Second}
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate names the first bad key.
func (c ClickHouseConfiguration) Validate() error {
	if !identifier.MatchString(c.Database) {
		return fmt.Errorf("clickhouse.database: %q is not a plain identifier", c.Database)
	}
	if c.DialTimeout <= 0 {
		return fmt.Errorf("clickhouse.dial_timeout: %s, want > 0", c.DialTimeout)
	}
	return nil
}

// Configuration of the sink.
type Configuration struct {
	// Group is the Kafka consumer group of the sink instances.
	Group string `yaml:"group"`
	// BatchMessages (bus messages, each many flows) and FlushInterval bound one INSERT.
	BatchMessages int           `yaml:"batch_messages"`
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Stdout prints every alert as one JSON line on standard output.
	Stdout bool `yaml:"stdout"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{Group: "wormsign-sink", BatchMessages: 1000, FlushInterval: time.Second}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.Group == "":
		return fmt.Errorf("sink.group must not be empty")
	case c.BatchMessages < 1:
		return fmt.Errorf("sink.batch_messages: %d, want >= 1", c.BatchMessages)
	case c.FlushInterval <= 0:
		return fmt.Errorf("sink.flush_interval: %s, want > 0", c.FlushInterval)
	}
	return nil
}
