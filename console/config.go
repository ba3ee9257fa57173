package console

import (
	"fmt"
	"time"
)

// Configuration of the console and its API: the `console:` section of the
// configuration file (WORMSIGN_CONSOLE_* in the environment). The
// credentials that guard them are http.token and http.tokens.
type Configuration struct {
	// Group names the consumer groups the console reads the alerts (and,
	// without ClickHouse, flows) topics with. On Kafka each instance adds
	// its host name and a random suffix and starts at the end of the
	// topics: every instance sees every alert, none commits.
	Group string `yaml:"group"`
	// MaxIncidents bounds the in-memory store (no ClickHouse): beyond it
	// the incidents whose last event is oldest are forgotten, resolved
	// ones first.
	MaxIncidents int `yaml:"max_incidents"`
	// MaxSubscribers bounds the per-subscriber minute counters kept in
	// memory (no ClickHouse); the subscribers seen longest ago go first.
	MaxSubscribers int `yaml:"max_subscribers"`
	// MaxMinuteDestinations bounds the exact destination set of one
	// subscriber minute in memory; beyond it distinct counts are a lower
	// bound.
	MaxMinuteDestinations int `yaml:"max_minute_destinations"`
	// History is how long the in-memory minute counters are kept.
	History time.Duration `yaml:"history"`
	// StreamBacklog is how many alert events the stream keeps for
	// clients that reconnect with Last-Event-ID.
	StreamBacklog int `yaml:"stream_backlog"`
	// Heartbeat is the interval of the stream's keep-alive comments.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// Lookback is the default `since` of the incident list.
	Lookback time.Duration `yaml:"lookback"`
	// SessionLifetime is how long a console login lasts; logging out, or
	// a change of the token it logged in with, ends it sooner.
	SessionLifetime time.Duration `yaml:"session_lifetime"`
	// XARF names the reporter of the XARF v4 reports (console.xarf.*).
	XARF XARFConfiguration `yaml:"xarf"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{
		Group:                 "wormsign-console",
		MaxIncidents:          10000,
		MaxSubscribers:        20000,
		MaxMinuteDestinations: 256,
		History:               24 * time.Hour,
		StreamBacklog:         1000,
		Heartbeat:             15 * time.Second,
		Lookback:              7 * 24 * time.Hour,
		SessionLifetime:       12 * time.Hour,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.Group == "":
		return fmt.Errorf("console.group must not be empty")
	case c.MaxIncidents < 1:
		return fmt.Errorf("console.max_incidents: %d, want >= 1", c.MaxIncidents)
	case c.MaxSubscribers < 1:
		return fmt.Errorf("console.max_subscribers: %d, want >= 1", c.MaxSubscribers)
	case c.MaxMinuteDestinations < 1:
		return fmt.Errorf("console.max_minute_destinations: %d, want >= 1", c.MaxMinuteDestinations)
	case c.History < time.Hour:
		return fmt.Errorf("console.history: %s, want >= 1h", c.History)
	case c.StreamBacklog < 1:
		return fmt.Errorf("console.stream_backlog: %d, want >= 1", c.StreamBacklog)
	case c.Heartbeat <= 0:
		return fmt.Errorf("console.heartbeat: %s, want > 0", c.Heartbeat)
	case c.Lookback <= 0:
		return fmt.Errorf("console.lookback: %s, want > 0", c.Lookback)
	case c.SessionLifetime < time.Minute || c.SessionLifetime > 31*24*time.Hour:
		return fmt.Errorf("console.session_lifetime: %s, want 1m to 744h", c.SessionLifetime)
	}
	return nil
}
