package sink

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/webhook"
)

// The keys as docs/clickhouse.md documents them, in YAML and in the environment.
func TestConfigurationKeys(t *testing.T) {
	yaml := `
webhooks:
  - name: noc
    url: https://noc.example.net/wormsign
    secret: s3cret
    timeout: 5s
  - name: chat
    url: http://127.0.0.1:8099/hook
    secret: other
retention:
  flows_days: 14
workers: 4
`
	path := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		path string
		env  []string
		want func(*Configuration)
	}{
		{name: "yaml", path: path, want: func(c *Configuration) {
			c.Webhooks = []webhook.Configuration{
				{Name: "noc", URL: "https://noc.example.net/wormsign", Secret: "s3cret", Timeout: 5 * time.Second},
				{Name: "chat", URL: "http://127.0.0.1:8099/hook", Secret: "other"},
			}
			c.Retention.FlowsDays, c.Workers = 14, 4
		}},
		{name: "environment", env: []string{
			"WORMSIGN_WEBHOOKS=noc=https://noc.example.net/wormsign;secret=s3cret;timeout=5s,chat=http://127.0.0.1:8099/hook;secret=other",
			"WORMSIGN_RETENTION_FLOWS_DAYS=14", "WORMSIGN_WEBHOOK_MAX_BACKOFF=1m",
		}, want: func(c *Configuration) {
			c.Webhooks = []webhook.Configuration{
				{Name: "noc", URL: "https://noc.example.net/wormsign", Secret: "s3cret", Timeout: 5 * time.Second},
				{Name: "chat", URL: "http://127.0.0.1:8099/hook", Secret: "other"},
			}
			c.Retention.FlowsDays, c.WebhookMaxBackoff = 14, time.Minute
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := DefaultConfiguration()
			if err := config.Load(&got, tc.path, tc.env); err != nil {
				t.Fatal(err)
			}
			want := DefaultConfiguration()
			tc.want(&want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if err := got.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// A password in a refused webhook URL is not repeated in the error.
func TestWebhookURLErrorHidesPassword(t *testing.T) {
	for _, u := range []string{"ftp://ann:pw-4417@example.net/x", "http://ann:pw-4417@[::1/x"} {
		c := DefaultConfiguration()
		c.Webhooks = []webhook.Configuration{{Name: "a", URL: u, Secret: "s"}}
		err := c.Validate()
		if err == nil || strings.Contains(err.Error(), "pw-4417") {
			t.Errorf("%s: error %v, want one without the password", u, err)
		}
	}
}
