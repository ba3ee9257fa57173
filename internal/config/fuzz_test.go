package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/network"
)

// fuzzConfig has every kind of value the loader fills: the collector's
// real section (inline decoder keys, prefixes, sampling rates as text,
// durations, int64 byte counts), nested structs, lists of structs, floats.
type fuzzConfig struct {
	LogLevel  string                  `yaml:"log_level"`
	Networks  []network.Prefix        `yaml:"subscriber_networks"`
	Collector collector.Configuration `yaml:"collector"`
	Detector  struct {
		Threshold int           `yaml:"threshold"`
		Window    time.Duration `yaml:"window"`
		Alpha     float64       `yaml:"baseline_alpha"`
		Enabled   bool          `yaml:"enabled"`
		Groups    []struct {
			Name     string           `yaml:"name"`
			Networks []network.Prefix `yaml:"networks"`
		} `yaml:"groups"`
	} `yaml:"detector"`
	Shared shared `yaml:",inline"`
}

// FuzzLoad feeds the loader arbitrary YAML and one environment override:
// errors are fine, a panic is not.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("collector:\n  netflow_listen: [\":2055\"]\n  decoder_budget_bytes: 268435456\n  default_sampling_rate: [\"192.0.2.0/24=1000\"]\n"), "WORMSIGN_COLLECTOR_MAX_STATE_PER_ADDRESS=65536")
	f.Add([]byte("detector:\n  groups: [{name: a, networks: [10.0.0.0/8]}]\n  window: 5m\n  baseline_alpha: 0.05\n"), "WORMSIGN_DETECTOR_WINDOW=x")
	f.Add([]byte("subscriber_networks: [203.0.113.0/24, 2001:db8::/32]\nlevel: 3\n"), "WORMSIGN_SUBSCRIBER_NETWORKS=10.0.0.0/8,bad")
	f.Add([]byte("a: &a [*a]\n"), "")
	f.Add([]byte("collector: {exporters: [\"::1\"], template_ttl: -1s, linger: 1e9}\n"), "WORMSIGN_COLLECTOR_LINGER=1h")
	f.Fuzz(func(t *testing.T, yaml []byte, env string) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, yaml, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := fuzzConfig{Collector: collector.DefaultConfiguration()}
		if err := Load(&cfg, path, strings.Split(env, "\n")); err != nil {
			return
		}
		_ = cfg.Collector.Validate()
	})
}
