package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/console"
	"github.com/wormsign/wormsign/containment"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/remediation"
	"github.com/wormsign/wormsign/sink"
)

// Configuration is the whole YAML file; each component owns its section.
type Configuration struct {
	LogLevel string `yaml:"log_level"`
	// SubscriberNetworks are the ISP's subscriber prefixes; empty means
	// every source address is a subscriber.
	SubscriberNetworks []network.Prefix `yaml:"subscriber_networks"`
	// SubscriberPrefixV6 is the length of an IPv6 subscriber's prefix: its
	// privacy addresses are one subscriber (network.Subscribers).
	SubscriberPrefixV6 int                        `yaml:"subscriber_prefix_v6"`
	HTTP               httpserver.Configuration   `yaml:"http"`
	Kafka              bus.Configuration          `yaml:"kafka"`
	ClickHouse         clickhousedb.Configuration `yaml:"clickhouse"`
	Collector          collector.Configuration    `yaml:"collector"`
	Detector           detector.Configuration     `yaml:"detector"`
	Sink               sink.Configuration         `yaml:"sink"`
	Console            console.Configuration      `yaml:"console"`
	Containment        containment.Configuration  `yaml:"containment"`
	Identity           identity.Configuration     `yaml:"identity"`
	Remediation        remediation.Configuration  `yaml:"remediation"`
}

// DefaultConfiguration is the embedded default `wormsign run` starts with.
func DefaultConfiguration() Configuration {
	return Configuration{
		LogLevel:           "info",
		SubscriberPrefixV6: network.DefaultPrefixV6,
		HTTP:               httpserver.DefaultConfiguration(),
		Kafka:              bus.DefaultConfiguration(),
		ClickHouse:         clickhousedb.DefaultConfiguration(),
		Collector:          collector.DefaultConfiguration(),
		Detector:           detector.DefaultConfiguration(),
		Sink:               sink.DefaultConfiguration(),
		Containment:        containment.DefaultConfiguration(),
		Console:            console.DefaultConfiguration(),
		Identity:           identity.DefaultConfiguration(),
		Remediation:        remediation.DefaultConfiguration(),
	}
}

func loadConfiguration(path string) (Configuration, error) {
	cfg := DefaultConfiguration()
	if err := config.Load(&cfg, path, os.Environ()); err != nil {
		return cfg, err
	}
	// Passwords, the token and webhook secrets from their *_file keys.
	if err := config.ReadSecretFiles(&cfg, os.Environ()); err != nil {
		return cfg, err
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return cfg, err
	}
	if cfg.SubscriberPrefixV6 < 32 || cfg.SubscriberPrefixV6 > 128 {
		return cfg, fmt.Errorf("subscriber_prefix_v6: %d, want 32..128", cfg.SubscriberPrefixV6)
	}
	for _, v := range []interface{ Validate() error }{cfg.HTTP, cfg.Kafka, cfg.ClickHouse, cfg.Collector, cfg.Detector, cfg.Sink, cfg.Console, cfg.Containment, cfg.Identity, cfg.Remediation} {
		if err := v.Validate(); err != nil {
			return cfg, err
		}
	}
	if err := cfg.wallGarden(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// wallGarden gives containment's exports the walled garden's shape from
// the remediation section (the notice server's address and the
// remediation sites), and checks that the ladder's containment steps have
// a block list to go on.
func (cfg *Configuration) wallGarden() error {
	r := cfg.Remediation
	cfg.Containment.Walled = containment.WalledConfiguration{Redirect: r.Redirect()}
	for _, p := range r.Allow {
		cfg.Containment.Walled.Allow = append(cfg.Containment.Walled.Allow, p.Prefix)
	}
	if r.Enabled && !cfg.Containment.Enabled && r.Contains() {
		return fmt.Errorf("remediation.ladder has walled or block steps: they need containment.enabled")
	}
	return cfg.Containment.Walled.Validate()
}

// subscribers is the subscriber rule every stage shares.
func (cfg Configuration) subscribers() network.Subscribers {
	return network.NewSubscribers(cfg.SubscriberNetworks).WithPrefixV6(cfg.SubscriberPrefixV6)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log_level: %q, want one of debug, info, warn, error", s)
	}
	return l, nil
}

func newLogger(level string) *slog.Logger {
	l, _ := parseLevel(strings.TrimSpace(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
