package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type inner struct {
	Threshold int           `yaml:"threshold"`
	Window    time.Duration `yaml:"window"`
}

// shared is inlined: its keys are sample's own.
type shared struct {
	Level int `yaml:"level"`
}

type sample struct {
	Brokers  []string       `yaml:"brokers"`
	Networks []netip.Prefix `yaml:"networks"`
	Rule     inner          `yaml:"smtp_fanout"`
	Enabled  bool           `yaml:"enabled"`
	Shared   shared         `yaml:",inline"`
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	cases := []struct {
		name    string
		file    string
		env     []string
		want    sample
		wantErr string
	}{
		{name: "defaults only", want: sample{Rule: inner{Threshold: 25, Window: 5 * time.Minute}}},
		{name: "empty file", file: "", want: sample{Rule: inner{Threshold: 25, Window: 5 * time.Minute}}},
		{
			name: "file then env",
			file: "brokers: [a:9092]\nnetworks: [203.0.113.0/24]\nsmtp_fanout:\n  threshold: 30\n",
			env:  []string{"WORMSIGN_SMTP_FANOUT_WINDOW=10m", "WORMSIGN_BROKERS=b:1, c:2", "HOME=/root"},
			want: sample{
				Brokers:  []string{"b:1", "c:2"},
				Networks: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
				Rule:     inner{Threshold: 30, Window: 10 * time.Minute},
			},
		},
		{name: "env prefix list", env: []string{"WORMSIGN_NETWORKS=198.18.0.0/15", "WORMSIGN_ENABLED=true"},
			want: sample{Networks: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, Enabled: true,
				Rule: inner{Threshold: 25, Window: 5 * time.Minute}}},
		{name: "unknown file key", file: "smtp_fanout:\n  treshold: 3\n", wantErr: "field treshold not found"},
		{name: "unknown env key", env: []string{"WORMSIGN_SMTP_FANOUT_TRESHOLD=3"}, wantErr: "WORMSIGN_SMTP_FANOUT_TRESHOLD"},
		{name: "bad cidr in env", env: []string{"WORMSIGN_NETWORKS=203.0.113.0/33"}, wantErr: `invalid value "203.0.113.0/33" for WORMSIGN_NETWORKS`},
		{name: "bad cidr in file", file: "networks: [300.1.1.0/24]\n", wantErr: "300.1.1.0/24"},
		{name: "bad duration", env: []string{"WORMSIGN_SMTP_FANOUT_WINDOW=5 minutes"}, wantErr: "WORMSIGN_SMTP_FANOUT_WINDOW"},
		{name: "inline key in file", file: "level: 2\n",
			want: sample{Rule: inner{Threshold: 25, Window: 5 * time.Minute}, Shared: shared{Level: 2}}},
		{name: "inline key in env", env: []string{"WORMSIGN_LEVEL=3"},
			want: sample{Rule: inner{Threshold: 25, Window: 5 * time.Minute}, Shared: shared{Level: 3}}},
		{name: "inline struct has no key of its own", env: []string{"WORMSIGN_SHARED_LEVEL=3"}, wantErr: "WORMSIGN_SHARED_LEVEL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := sample{Rule: inner{Threshold: 25, Window: 5 * time.Minute}}
			path := ""
			if tc.file != "" || tc.name == "empty file" {
				path = writeFile(t, tc.file)
			}
			err := Load(&got, path, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Load() error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load() error = %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("Load() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEnvironmentNameClash checks that two keys spelled differently in the
// file but mapping to one variable are refused, not silently merged.
func TestEnvironmentNameClash(t *testing.T) {
	var clash struct {
		SMTP struct {
			FanoutThreshold int `yaml:"fanout_threshold"`
		} `yaml:"smtp"`
		SMTPFanout struct {
			Threshold int `yaml:"threshold"`
		} `yaml:"smtp_fanout"`
	}
	err := Load(&clash, "", nil)
	if err == nil || !strings.Contains(err.Error(), "smtp.fanout_threshold and smtp_fanout.threshold both map to WORMSIGN_SMTP_FANOUT_THRESHOLD") {
		t.Errorf("Load() error = %v, want the clash named", err)
	}
}

// TestInlineSection checks that an inlined struct's keys keep the parent's
// names in the file and the environment.
func TestInlineSection(t *testing.T) {
	var cfg struct {
		Section struct {
			Listen string `yaml:"listen"`
			Inner  inner  `yaml:",inline"`
		} `yaml:"section"`
	}
	path := writeFile(t, "section:\n  listen: ':1'\n  threshold: 7\n")
	if err := Load(&cfg, path, []string{"WORMSIGN_SECTION_WINDOW=2m"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Section.Listen != ":1" || cfg.Section.Inner.Threshold != 7 || cfg.Section.Inner.Window != 2*time.Minute {
		t.Errorf("loaded %+v", cfg.Section)
	}
}
