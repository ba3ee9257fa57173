package detector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/internal/config"
)

// TestConfigurationLoads checks the keys as an operator writes them, in
// YAML and in the environment, through the project's loader.
func TestConfigurationLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wormsign.yaml")
	yaml := `
detector:
  allow_list: [192.0.2.25, 198.51.100.0/24]
  subscriber_map: /etc/wormsign/subscribers.csv
  smtp_fanout:
    threshold: 30
    sequential:
      false_alarm_probability: 0.0001
  dst_entropy:
    min_flows: 500
  groups:
    - name: business
      networks: [203.0.113.0/25]
      disable: [dst_entropy]
      smtp_fanout:
        threshold: 200
    - name: sampled-dsl
      networks: [100.64.0.0/10]
      smtp_fanout: {threshold: 5, slow_threshold: 20}
`
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Detector Configuration `yaml:"detector"`
	}
	cfg.Detector = DefaultConfiguration()
	err := config.Load(&cfg, path, []string{
		"WORMSIGN_DETECTOR_DST_ENTROPY_WORM_MIN_DSTS=80",
		"WORMSIGN_DETECTOR_REBUILD_LOOKBACK=90m",
	})
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Detector
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got := []any{
		c.AllowList[0].String(), c.AllowList[1].String(), c.SubscriberMap,
		c.SMTPFanout.Threshold, c.SMTPFanout.Sequential.FalseAlarmProbability, c.SMTPFanout.Sequential.SuccessBenign,
		c.DstEntropy.MinFlows, c.DstEntropy.WormMinDsts, c.RebuildLookback,
	}
	want := []any{"192.0.2.25/32", "198.51.100.0/24", "/etc/wormsign/subscribers.csv",
		30, 0.0001, 0.8, 500, 80, 90 * time.Minute}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("loaded (-want +got):\n%s", diff)
	}
	business, dsl := mustRules(c, c.Groups[0]), mustRules(c, c.Groups[1])
	gotRules := []any{business.smtp.Threshold, business.smtp.SlowThreshold, business.on[kindEntropy], business.on[kindSMTP],
		dsl.smtp.Threshold, dsl.smtp.SlowThreshold, dsl.smtp.Window, dsl.entropy.MinFlows}
	wantRules := []any{200, 100, false, true, 5, 20, 5 * time.Minute, 500}
	if diff := cmp.Diff(wantRules, gotRules); diff != "" {
		t.Errorf("group rules (-want +got):\n%s", diff)
	}
}

// TestGroupOverridePresence checks that a key a group names replaces the
// global value even when it is zero, and that a key it does not name is
// inherited, also from a global value set in the environment.
func TestGroupOverridePresence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wormsign.yaml")
	yaml := `
detector:
  groups:
    - name: quiet-updates
      networks: [203.0.113.0/25]
      smtp_fanout: {update_interval: 0s, sample_size: 0}
      dst_entropy: {update_interval: 0s}
`
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Detector Configuration `yaml:"detector"`
	}
	cfg.Detector = DefaultConfiguration()
	if err := config.Load(&cfg, path, []string{"WORMSIGN_DETECTOR_SMTP_FANOUT_THRESHOLD=40"}); err != nil {
		t.Fatal(err)
	}
	c := cfg.Detector
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	g := mustRules(c, c.Groups[0])
	got := []any{g.smtp.UpdateInterval, g.smtp.SampleSize, g.entropy.UpdateInterval, g.smtp.Threshold, g.smtp.Cooldown}
	want := []any{time.Duration(0), 0, time.Duration(0), 40, 10 * time.Minute}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("group rules (-want +got):\n%s", diff)
	}

	bad := `
detector:
  groups:
    - name: typo
      networks: [203.0.113.0/25]
      smtp_fanout: {treshold: 10}
`
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Detector = DefaultConfiguration()
	if err := config.Load(&cfg, path, nil); err == nil || !strings.Contains(err.Error(), "treshold") {
		t.Errorf("unknown key in a group override: error %v, want one naming it", err)
	}
}
