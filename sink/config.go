package sink

import (
	"fmt"
	"time"

	"github.com/wormsign/wormsign/webhook"
)

// Configuration of the sink. Zero values of the keys added after the first
// release (batch_bytes, workers, retry_max_backoff, webhook_*) mean their
// default, so that a Configuration literal in code keeps working.
type Configuration struct {
	// Group is the Kafka consumer group of the sink instances on the
	// flows topic. They read the alerts topic in Group + "-alerts", and
	// each webhook target in a group of its own, Group + "-webhook-" +
	// its name.
	Group string `yaml:"group"`
	// BatchMessages (bus messages, each many flows), BatchBytes (their
	// encoded size) and FlushInterval bound one INSERT, whichever comes
	// first.
	BatchMessages int           `yaml:"batch_messages"`
	BatchBytes    int           `yaml:"batch_bytes"`
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Workers write flow batches concurrently; offsets are still
	// committed in order. Alerts are written by one worker to keep their
	// order.
	Workers int `yaml:"workers"`
	// RetryMaxBackoff caps the wait between attempts at a failed INSERT.
	RetryMaxBackoff time.Duration `yaml:"retry_max_backoff"`
	// DrainTimeout bounds how long Stop keeps retrying the batches in
	// hand; with Kafka what is left is re-delivered on the next start.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Stdout prints every alert as one JSON line on standard output.
	Stdout bool `yaml:"stdout"`
	// Retention of the ClickHouse tables.
	Retention RetentionConfiguration `yaml:"retention"`
	// Webhooks receive every alert, each on its own (and containment's
	// changes, see containment.Dependencies.Webhooks).
	Webhooks []webhook.Configuration `yaml:"webhooks"`
	// WebhookMinBackoff and WebhookMaxBackoff bound the exponential wait
	// between delivery attempts; a target is retried until it accepts.
	WebhookMinBackoff time.Duration `yaml:"webhook_min_backoff"`
	WebhookMaxBackoff time.Duration `yaml:"webhook_max_backoff"`
	// WebhookBacklog bounds the alerts held in memory per target without
	// Kafka (`wormsign run` on its embedded default), so that a target
	// that is down does not stall detection; past it the oldest are
	// dropped and counted. With Kafka the broker holds them.
	WebhookBacklog int `yaml:"webhook_backlog"`
}

// RetentionConfiguration says how many days each table keeps; 0 keeps
// forever. The sink drops older daily partitions every Interval.
type RetentionConfiguration struct {
	FlowsDays  int           `yaml:"flows_days"`
	RollupDays int           `yaml:"rollup_days"`
	AlertsDays int           `yaml:"alerts_days"`
	LedgerDays int           `yaml:"ledger_days"`
	Interval   time.Duration `yaml:"interval"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{
		Group: "wormsign-sink", BatchMessages: 20000, FlushInterval: time.Second,
		BatchBytes: 16 << 20, Workers: 2, RetryMaxBackoff: 10 * time.Second, DrainTimeout: 30 * time.Second,
		Retention:         RetentionConfiguration{FlowsDays: 30, RollupDays: 400, AlertsDays: 400, LedgerDays: 7, Interval: time.Hour},
		WebhookMinBackoff: time.Second, WebhookMaxBackoff: 5 * time.Minute, WebhookBacklog: 100000,
	}
}

// withDefaults fills the zero values of the keys that have a default.
func (c Configuration) withDefaults() Configuration {
	d := DefaultConfiguration()
	if c.BatchBytes == 0 {
		c.BatchBytes = d.BatchBytes
	}
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.RetryMaxBackoff == 0 {
		c.RetryMaxBackoff = d.RetryMaxBackoff
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = d.DrainTimeout
	}
	if c.Retention.Interval == 0 {
		c.Retention.Interval = d.Retention.Interval
	}
	if c.WebhookMinBackoff == 0 {
		c.WebhookMinBackoff = d.WebhookMinBackoff
	}
	if c.WebhookMaxBackoff == 0 {
		c.WebhookMaxBackoff = d.WebhookMaxBackoff
	}
	if c.WebhookBacklog == 0 {
		c.WebhookBacklog = d.WebhookBacklog
	}
	return c
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.Group == "":
		return fmt.Errorf("sink.group must not be empty")
	case c.BatchMessages < 1:
		return fmt.Errorf("sink.batch_messages: %d, want >= 1", c.BatchMessages)
	case c.BatchBytes < 0:
		return fmt.Errorf("sink.batch_bytes: %d, want >= 0", c.BatchBytes)
	case c.FlushInterval <= 0:
		return fmt.Errorf("sink.flush_interval: %s, want > 0", c.FlushInterval)
	case c.Workers < 0:
		return fmt.Errorf("sink.workers: %d, want >= 1", c.Workers)
	case c.RetryMaxBackoff < 0 || c.DrainTimeout < 0 || c.WebhookMinBackoff < 0 || c.WebhookMaxBackoff < 0:
		return fmt.Errorf("sink: negative retry_max_backoff, drain_timeout or webhook backoff")
	case c.WebhookBacklog < 0:
		return fmt.Errorf("sink.webhook_backlog: %d, want >= 1", c.WebhookBacklog)
	case c.WebhookMaxBackoff != 0 && c.WebhookMinBackoff > c.WebhookMaxBackoff:
		return fmt.Errorf("sink.webhook_min_backoff %s exceeds sink.webhook_max_backoff %s", c.WebhookMinBackoff, c.WebhookMaxBackoff)
	case c.Retention.FlowsDays < 0 || c.Retention.RollupDays < 0 || c.Retention.AlertsDays < 0 || c.Retention.LedgerDays < 0:
		return fmt.Errorf("sink.retention: days must be >= 0 (0 keeps forever)")
	case c.Retention.Interval < 0:
		return fmt.Errorf("sink.retention.interval: %s, want > 0", c.Retention.Interval)
	}
	return webhook.ValidateTargets("sink.webhooks", c.Webhooks)
}
