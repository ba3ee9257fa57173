package collector

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/network"
)

// The collector section's keys as docs/collector.md documents them, in YAML and
// in the environment: the decoder's keys sit in the section itself.
func TestConfigurationKeys(t *testing.T) {
	type file struct {
		Collector Configuration `yaml:"collector"`
	}
	yaml := `
collector:
  netflow_listen: [":2056"]
  sflow_listen: [":6344"]
  sockets_per_listener: 2
  exporters: [192.0.2.0/24]
  receive_buffer: 1048576
  queue_size: 1024
  batch_flows: 512
  linger: 20ms
  publishers: 4
  correct_clock_skew: false
  max_templates_per_exporter: 64
  decoder_budget_bytes: 33554432
  max_state_per_address: 65536
  max_exporters: 100
  template_ttl: 30m
  template_file: /var/lib/wormsign/templates.json
  template_save_interval: 30s
  default_sampling_rate: ["192.0.2.0/24=1000"]
  override_sampling_rate: ["192.0.2.1=512"]
`
	path := filepath.Join(t.TempDir(), "collector.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"WORMSIGN_COLLECTOR_NETFLOW_LISTEN=:2056",
		"WORMSIGN_COLLECTOR_SFLOW_LISTEN=:6344",
		"WORMSIGN_COLLECTOR_SOCKETS_PER_LISTENER=2",
		"WORMSIGN_COLLECTOR_EXPORTERS=192.0.2.0/24",
		"WORMSIGN_COLLECTOR_RECEIVE_BUFFER=1048576",
		"WORMSIGN_COLLECTOR_QUEUE_SIZE=1024",
		"WORMSIGN_COLLECTOR_BATCH_FLOWS=512",
		"WORMSIGN_COLLECTOR_LINGER=20ms",
		"WORMSIGN_COLLECTOR_PUBLISHERS=4",
		"WORMSIGN_COLLECTOR_CORRECT_CLOCK_SKEW=false",
		"WORMSIGN_COLLECTOR_MAX_TEMPLATES_PER_EXPORTER=64",
		"WORMSIGN_COLLECTOR_DECODER_BUDGET_BYTES=33554432",
		"WORMSIGN_COLLECTOR_MAX_STATE_PER_ADDRESS=65536",
		"WORMSIGN_COLLECTOR_MAX_EXPORTERS=100",
		"WORMSIGN_COLLECTOR_TEMPLATE_TTL=30m",
		"WORMSIGN_COLLECTOR_TEMPLATE_FILE=/var/lib/wormsign/templates.json",
		"WORMSIGN_COLLECTOR_TEMPLATE_SAVE_INTERVAL=30s",
		"WORMSIGN_COLLECTOR_DEFAULT_SAMPLING_RATE=192.0.2.0/24=1000",
		"WORMSIGN_COLLECTOR_OVERRIDE_SAMPLING_RATE=192.0.2.1=512",
	}
	rate := func(s string) decode.SamplingRate {
		var r decode.SamplingRate
		if err := r.UnmarshalText([]byte(s)); err != nil {
			t.Fatal(err)
		}
		return r
	}
	want := file{Collector: Configuration{
		NetFlowListen: []string{":2056"}, SFlowListen: []string{":6344"}, SocketsPerListener: 2,
		Exporters: []network.Prefix{network.MustParsePrefix("192.0.2.0/24")}, ReceiveBuffer: 1 << 20,
		QueueSize: 1024, BatchFlows: 512, Linger: 20 * time.Millisecond, Publishers: 4,
		Decode: decode.Configuration{
			CorrectClockSkew: false, MaxTemplatesPerExporter: 64, MaxExporters: 100,
			DecoderBudgetBytes: 32 << 20, MaxStatePerAddress: 64 << 10, TemplateTTL: 30 * time.Minute,
			DefaultSamplingRate:  []decode.SamplingRate{rate("192.0.2.0/24=1000")},
			OverrideSamplingRate: []decode.SamplingRate{rate("192.0.2.1=512")},
		},
		TemplateFile: "/var/lib/wormsign/templates.json", TemplateSaveInterval: 30 * time.Second,
	}}
	cmpNet := cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })
	for _, tc := range []struct {
		name string
		path string
		env  []string
	}{{"yaml", path, nil}, {"environment", "", env}} {
		t.Run(tc.name, func(t *testing.T) {
			got := file{Collector: DefaultConfiguration()}
			if err := config.Load(&got, tc.path, tc.env); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, cmpNet); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if err := got.Collector.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}
