package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartupErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		file    string
		args    []string
		wantErr string
	}{
		{name: "unknown env key", env: map[string]string{"WORMSIGN_DETECTOR_SMTP_FANOUT_TRESHOLD": "3"},
			args: []string{"run"}, wantErr: "WORMSIGN_DETECTOR_SMTP_FANOUT_TRESHOLD"},
		{name: "unknown file key", file: "detector:\n  smtp_fanout:\n    treshold: 3\n",
			args: []string{"run"}, wantErr: "field treshold not found"},
		{name: "bad cidr", env: map[string]string{"WORMSIGN_SUBSCRIBER_NETWORKS": "203.0.113.0/24,10.0.0.0/40"},
			args: []string{"run"}, wantErr: `invalid value "203.0.113.0/24,10.0.0.0/40" for WORMSIGN_SUBSCRIBER_NETWORKS`},
		{name: "bad threshold", env: map[string]string{"WORMSIGN_DETECTOR_SMTP_FANOUT_THRESHOLD": "0"},
			args: []string{"run"}, wantErr: "detector.smtp_fanout.threshold: 0"},
		{name: "unreachable broker", env: map[string]string{"WORMSIGN_KAFKA_BROKERS": "127.0.0.1:1",
			"WORMSIGN_KAFKA_CONNECT_TIMEOUT": "2s", "WORMSIGN_HTTP_LISTEN": "127.0.0.1:0"},
			args: []string{"collector"}, wantErr: "cannot reach Kafka brokers 127.0.0.1:1 (kafka.brokers)"},
		{name: "stage without kafka", env: map[string]string{"WORMSIGN_HTTP_LISTEN": "127.0.0.1:0"},
			args: []string{"detector"}, wantErr: "kafka.brokers is empty"},
		{name: "duplicate credential name", env: map[string]string{"WORMSIGN_HTTP_TOKENS": "ann=viewer;token=tok-a,ann=admin;token=tok-b"},
			args: []string{"run"}, wantErr: `http.tokens[1].name: "ann" is also http.tokens[0]'s`},
		{name: "credential without role", env: map[string]string{"WORMSIGN_HTTP_TOKENS": "ann;token=tok-a"},
			args: []string{"run"}, wantErr: "invalid value for WORMSIGN_HTTP_TOKENS (not shown: it may hold a secret)"},
		{name: "unknown command", args: []string{"frobnicate"}, wantErr: `unknown command "frobnicate"`},
		{name: "replay without files", args: []string{"replay"}, wantErr: "at least one capture file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := tc.args
			if tc.file != "" {
				p := filepath.Join(t.TempDir(), "wormsign.yaml")
				if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{args[0], "--config", p}, args[1:]...)
			}
			err := run(context.Background(), args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("run(%v) error = %v, want one containing %q", args, err, tc.wantErr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "wormsign ") {
		t.Errorf("version printed %q", out.String())
	}
}
