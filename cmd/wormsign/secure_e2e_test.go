package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/webhook"
)

// TestSecureRunKeepsSecrets runs `wormsign run` against a private Kafka
// through its SASL_SSL listener (SCRAM-SHA-256) and a private ClickHouse
// 18.16 through its secure native port with a password, every secret
// (Kafka and ClickHouse passwords, the HTTP token and a viewer's token of
// http.tokens set from the environment, a webhook secret) from
// files under $CREDENTIALS_DIRECTORY as systemd's LoadCredential= gives
// them. A spam zombie's flows go collector → Kafka → detector → Kafka →
// sink → ClickHouse and the webhook; the console's API reads the incident
// back from ClickHouse. Then every log line, the /metrics page and the API
// answers are searched for the secrets: none may appear. Starts with a
// wrong password and an untrusted certificate fail naming the setting and
// without showing the secret either.
func TestSecureRunKeepsSecrets(t *testing.T) {
	secrets := map[string]string{
		"kafka-password":      "kafkaSecret-3e8b1f2c",
		"clickhouse-password": "chSecret-91d4a7e0",
		"token":               "tokenSecret-0c5e2b77",
		"viewer-token":        "viewerSecret-4f7a0c19",
		"webhook-secret":      "hookSecret-6a1f9d3b",
	}
	creds := t.TempDir()
	for name, value := range secrets {
		if err := os.WriteFile(filepath.Join(creds, name), []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pki := testenv.NewPKI(t)
	kafka := testenv.StartSecureKafka(t, pki, "wormsign", secrets["kafka-password"])
	ch := testenv.StartSecureClickHouse18(t, pki, "wormsign", secrets["clickhouse-password"])

	var mu sync.Mutex
	var delivered []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !webhook.VerifySignature([]byte(secrets["webhook-secret"]), body, r.Header.Get(webhook.SignatureHeader)) {
			t.Errorf("webhook signature %q does not verify with the secret from the file", r.Header.Get(webhook.SignatureHeader))
		}
		mu.Lock()
		delivered = append(delivered, string(body))
		mu.Unlock()
	}))
	defer hook.Close()

	port := testenv.FreeUDPPort(t)
	db := testenv.Name(t, "wss")
	yaml := fmt.Sprintf(`log_level: debug
subscriber_networks: [203.0.113.0/24]
http:
  listen: 127.0.0.1:0
  token_file: ${CREDENTIALS_DIRECTORY}/token
kafka:
  brokers: [%[1]s]
  flows_topic: %[2]s
  alerts_topic: %[3]s
  partitions: 2
  tls: {enabled: true, ca_file: %[4]s, server_name: localhost, cert_file: %[12]s, key_file: %[13]s}
  sasl: {mechanism: SCRAM-SHA-256, username: wormsign, password_file: "${CREDENTIALS_DIRECTORY}/kafka-password"}
clickhouse:
  addr: %[5]s
  database: %[6]s
  username: wormsign
  password_file: ${CREDENTIALS_DIRECTORY}/clickhouse-password
  tls: {enabled: true, ca_file: %[4]s}
collector:
  netflow_listen: ["127.0.0.1:%[7]d"]
  sflow_listen: []
detector: {group: %[8]s}
sink:
  group: %[9]s
  webhooks: [{name: hook, url: "%[10]s", secret_file: "${CREDENTIALS_DIRECTORY}/webhook-secret", timeout: 5s}]
console: {group: %[11]s}
`, kafka.Secure, testenv.Name(t, "flows"), testenv.Name(t, "alerts"), pki.CAFile, ch.SecureAddr, db, port,
		testenv.Name(t, "det"), testenv.Name(t, "sink"), hook.URL, testenv.Name(t, "con"), pki.ClientCert, pki.ClientKey)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "wormsign.yaml")
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	// A viewer of http.tokens, set from the environment, its token from a
	// file beside the others.
	env := []string{"CREDENTIALS_DIRECTORY=" + creds, "WORMSIGN_HTTP_TOKENS=noc-viewer=viewer;token_file=${CREDENTIALS_DIRECTORY}/viewer-token"}

	// Every byte the processes write, and every answer they give.
	var captured strings.Builder
	logPath := filepath.Join(dir, "run.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			raw, _ := os.ReadFile(logPath)
			t.Logf("wormsign run log:\n%s", raw)
		}
	}()
	addrRe := regexp.MustCompile(`msg="http server listening" addr=(\S+)`)
	var base string
	deadline := time.Now().Add(90 * time.Second)
	for base == "" || !strings.Contains(readFile(logPath), "wormsign started") {
		if m := addrRe.FindStringSubmatch(readFile(logPath)); m != nil {
			base = "http://" + m[1]
		}
		select {
		case err := <-exited:
			t.Fatalf("wormsign run exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("wormsign run did not start within 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A zombie: 40 TCP/25 destinations in NetFlow v9.
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	now := uint32(time.Now().Unix())
	var records [][]byte
	for i := range 40 {
		records = append(records, nfbuild.Record256("203.0.113.5", fmt.Sprintf("198.18.0.%d", i+1), 25, 99000+uint32(i), 99500+uint32(i)))
	}
	for seq, sets := range [][][]byte{
		{nfbuild.Set(0, nfbuild.Template256), nfbuild.Set(256, records[:20]...)},
		{nfbuild.Set(256, records[20:]...)},
	} {
		msg := nfbuild.Message{Version: 9, Sequence: uint32(seq), UnixSecs: now, UptimeMs: 100000, Sets: sets}
		if _, err := conn.Write(msg.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()

	get := func(path string, auth bool) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+secrets["token"])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		captured.WriteString(fmt.Sprintf("GET %s %d\n%s\n%s\n", path, resp.StatusCode, resp.Header, body))
		return resp.StatusCode, string(body)
	}
	// The incident through the console's API (ClickHouse over TLS) and the
	// webhook.
	deadline = time.Now().Add(90 * time.Second)
	for {
		code, body := get("/api/v1/incidents", true)
		mu.Lock()
		n := len(delivered)
		mu.Unlock()
		if code == 200 && strings.Contains(body, "203.0.113.5") && n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no incident of 203.0.113.5 in the API (%d %s) or no webhook (%d) within 90s", code, body, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code, _ := get("/api/v1/incidents", false); code != 401 {
		t.Errorf("API without the token: %d, want 401", code)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{{"GET", "/api/v1/incidents", 200}, {"GET", "/api/v1/session", 200}, {"POST", "/api/v1/incidents/x/ack", 403}} {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(`{"note":"x"}`))
		req.Header.Set("Authorization", "Bearer "+secrets["viewer-token"])
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		captured.WriteString(fmt.Sprintf("%s %s %d\n%s\n", tc.method, tc.path, resp.StatusCode, body))
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s as the viewer: %d %s, want %d", tc.method, tc.path, resp.StatusCode, body, tc.want)
		}
	}
	get("/metrics", false)
	get("/readyz", false)
	get("/", true)
	get("/api/v1/subscribers/203.0.113.5", true)

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("wormsign run exited with %v after SIGTERM", err)
		}
	case <-time.After(60 * time.Second):
		t.Error("wormsign run did not stop within 60s")
	}
	captured.WriteString(readFile(logPath))
	mu.Lock()
	captured.WriteString(strings.Join(delivered, "\n"))
	mu.Unlock()

	// Starts that fail: the error names the setting and hides the secret.
	for _, tc := range []struct {
		name, command, names string
		env                  []string
	}{
		{"wrong kafka password", "collector", "kafka.sasl.password", []string{"WORMSIGN_KAFKA_SASL_PASSWORD_FILE=", "WORMSIGN_KAFKA_SASL_PASSWORD=wrongKafka-55e1"}},
		{"untrusted kafka certificate", "detector", "kafka.tls.ca_file", []string{"WORMSIGN_KAFKA_TLS_CA_FILE=" + pki.OtherCAFile}},
		{"wrong clickhouse password", "migrate", "clickhouse.password", []string{"WORMSIGN_CLICKHOUSE_PASSWORD_FILE=", "WORMSIGN_CLICKHOUSE_PASSWORD=wrongCH-81c3"}},
		{"untrusted clickhouse certificate", "migrate", "clickhouse.tls.ca_file", []string{"WORMSIGN_CLICKHOUSE_TLS_CA_FILE=" + pki.OtherCAFile}},
		{"password and file", "migrate", "clickhouse.password and clickhouse.password_file are both set", []string{"WORMSIGN_CLICKHOUSE_PASSWORD=wrongCH-81c3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, tc.command, "--config", cfgFile)
			cmd.Env = append(append(os.Environ(), env...), tc.env...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("wormsign %s started:\n%s", tc.command, out)
			}
			if !strings.Contains(string(out), tc.names) {
				t.Errorf("wormsign %s: output does not name %s:\n%s", tc.command, tc.names, out)
			}
			for _, e := range tc.env {
				if _, v, _ := strings.Cut(e, "="); strings.HasPrefix(v, "wrong") && strings.Contains(string(out), v) {
					t.Errorf("the wrong password %s is shown:\n%s", v, out)
				}
			}
			t.Logf("%s", lastLine(string(out)))
			captured.Write(out)
		})
	}

	all := captured.String()
	if !strings.Contains(all, "wormsign_webhook_delivered_total") {
		t.Error("the /metrics page was not captured")
	}
	for name, value := range secrets {
		if n := strings.Count(all, value); n > 0 {
			i := strings.Index(all, value)
			t.Errorf("secret %s appears %d times in logs, errors or answers, e.g. %q", name, n, all[max(0, i-200):i+len(value)])
		}
	}
	t.Logf("searched %d bytes of logs, errors, /metrics and API answers for %d secrets", len(all), len(secrets))
}

func readFile(path string) string {
	raw, _ := os.ReadFile(path)
	return string(raw)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
