package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type secretsTestConfig struct {
	HTTP struct {
		Token     string `yaml:"token"`
		TokenFile string `yaml:"token_file"`
	} `yaml:"http"`
	Kafka struct {
		TLS struct {
			KeyFile string `yaml:"key_file"`
		} `yaml:"tls"`
		SASL struct {
			Password     string `yaml:"password"`
			PasswordFile string `yaml:"password_file"`
		} `yaml:"sasl"`
	} `yaml:"kafka"`
	Webhooks []struct {
		Name       string `yaml:"name"`
		Secret     string `yaml:"secret"`
		SecretFile string `yaml:"secret_file"`
	} `yaml:"webhooks"`
}

func TestReadSecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("token", "tok-1\n")
	write("kafka-password", "pw with spaces\r\n")
	write("hook", "hook-secret")
	write("empty", "\n")
	file := write("wormsign.yaml", `
http: {token_file: "${CREDENTIALS_DIRECTORY}/token"}
kafka: {sasl: {password_file: $CREDENTIALS_DIRECTORY/kafka-password}, tls: {key_file: $CREDENTIALS_DIRECTORY/key}}
webhooks: [{name: a, secret: inline}, {name: b, secret_file: `+dir+`/hook}]
`)
	var cfg secretsTestConfig
	env := []string{"CREDENTIALS_DIRECTORY=" + dir}
	if err := Load(&cfg, file, env); err != nil {
		t.Fatal(err)
	}
	if err := ReadSecretFiles(&cfg, env); err != nil {
		t.Fatal(err)
	}
	got := []string{cfg.HTTP.Token, cfg.Kafka.SASL.Password, cfg.Webhooks[0].Secret, cfg.Webhooks[1].Secret, cfg.HTTP.TokenFile, cfg.Kafka.TLS.KeyFile}
	want := []string{"tok-1", "pw with spaces", "inline", "hook-secret", dir + "/token", dir + "/key"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("secrets (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name, yaml string
		env        []string
		wantErr    string
	}{
		{"both", "kafka: {sasl: {password: x-secret-x, password_file: " + dir + "/token}}", nil,
			"kafka.sasl.password and kafka.sasl.password_file are both set"},
		{"missing", "http: {token_file: " + dir + "/nope}", nil, "http.token_file: cannot read " + dir + "/nope"},
		{"empty", "webhooks: [{name: a, secret_file: " + dir + "/empty}]", nil, "webhooks[0].secret_file: " + dir + "/empty is empty"},
		{"no credentials directory", `http: {token_file: "${CREDENTIALS_DIRECTORY}/token"}`, nil, "not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg secretsTestConfig
			p := write(tc.name+".yaml", tc.yaml)
			if err := Load(&cfg, p, tc.env); err != nil {
				t.Fatal(err)
			}
			err := ReadSecretFiles(&cfg, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "x-secret-x") || strings.Contains(err.Error(), "tok-1") {
				t.Errorf("error shows a secret: %v", err)
			}
		})
	}
}

func TestEnvironmentErrorsHideSecrets(t *testing.T) {
	var cfg struct {
		Kafka struct {
			SASL struct {
				Password []int `yaml:"password"` // a type that refuses text, to provoke an error
			} `yaml:"sasl"`
		} `yaml:"kafka"`
	}
	err := Load(&cfg, "", []string{"WORMSIGN_KAFKA_SASL_PASSWORD=hunter2-secret"})
	if err == nil || strings.Contains(err.Error(), "hunter2-secret") || !strings.Contains(err.Error(), "WORMSIGN_KAFKA_SASL_PASSWORD") {
		t.Errorf("error %v: want one naming the variable without its value", err)
	}
}
