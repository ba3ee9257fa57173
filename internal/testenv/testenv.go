// Package testenv finds the real services and tools that wormsign's tests
// run against: Kafka and the two ClickHouse servers started by
// deploy/services.sh (or the ones WORMSIGN_KAFKA_BROKERS,
// WORMSIGN_CLICKHOUSE_ADDR and WORMSIGN_TEST_CLICKHOUSE_MODERN_ADDR point
// at), root for network namespaces, exporters such as softflowd. A missing service
// skips the test when run by hand and fails it when CI=true: CI must never
// pass by skipping.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// CI reports whether the tests run in CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips the test, or fails it in CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("required for CI: %s (run `make test`, which starts the services)", msg)
	}
	t.Skip(msg)
}

func reachable(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// KafkaBrokers returns the brokers of the test Kafka.
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	brokers := strings.Split(envOr("WORMSIGN_KAFKA_BROKERS", "127.0.0.1:9092"), ",")
	if !reachable(brokers[0]) {
		Unavailable(t, "Kafka at %s does not answer", brokers[0])
	}
	return brokers
}

// ClickHouseAddr returns the native-protocol address of the test
// ClickHouse 18.16 (Debian's package), the oldest release wormsign
// supports. Tests that run on every server use ForEachClickHouse.
func ClickHouseAddr(t testing.TB) string {
	t.Helper()
	return ClickHouseServers()[0].Addr(t)
}

// ClickHouseServer is one ClickHouse the tests run against.
type ClickHouseServer struct {
	// Name is the subtest's name: "18.16" for Debian's package, "modern"
	// for the current release (chdb-core's engine, 26.9 as installed by
	// deploy/services.sh).
	Name string
	// Env names the variable that points at an existing server instead
	// of the one deploy/services.sh starts on Default.
	Env, Default string
}

// ClickHouseServers returns the servers every ClickHouse test runs
// against: the oldest supported release and a current one.
func ClickHouseServers() []ClickHouseServer {
	return []ClickHouseServer{
		{Name: "18.16", Env: "WORMSIGN_CLICKHOUSE_ADDR", Default: "127.0.0.1:9000"},
		{Name: "modern", Env: "WORMSIGN_TEST_CLICKHOUSE_MODERN_ADDR", Default: "127.0.0.1:9100"},
	}
}

// Addr returns the server's native-protocol address; a server that does
// not answer skips the test, or fails it in CI.
func (s ClickHouseServer) Addr(t testing.TB) string {
	t.Helper()
	addr := envOr(s.Env, s.Default)
	if !reachable(addr) {
		Unavailable(t, "ClickHouse %s at %s does not answer (%s)", s.Name, addr, s.Env)
	}
	return addr
}

// ForEachClickHouse runs test once per server of ClickHouseServers, as a
// subtest named after the server, with the server's address.
func ForEachClickHouse(t *testing.T, test func(t *testing.T, addr string)) {
	t.Helper()
	for _, s := range ClickHouseServers() {
		t.Run(s.Name, func(t *testing.T) { test(t, s.Addr(t)) })
	}
}

// Root requires root (network namespaces, raw capture).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
}

// Tool returns the path of an executable, e.g. softflowd.
func Tool(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/sbin/", "/usr/bin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p
		}
	}
	Unavailable(t, "%s is not installed (deploy/test-tools.sh installs it)", name)
	return ""
}

// Shared returns ../shared/<rel> as seen from the repository root. Tests
// that need it skip where ../shared is absent when run by hand, and fail
// where it is absent in CI (CI=true) or present without the file.
func Shared(t testing.TB, rel string) string {
	t.Helper()
	root := RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		// Built with -trimpath, this file's path is not on disk: look
		// for go.mod above the package directory the test runs in.
		root = ""
		for dir, _ := os.Getwd(); dir != ""; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				root = dir
				break
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
		if root == "" {
			t.Fatalf("cannot find the repository root (go.mod) to look for ../shared/%s from", rel)
		}
	}
	shared := filepath.Join(root, "..", "shared")
	if fi, err := os.Stat(shared); err != nil || !fi.IsDir() {
		Unavailable(t, "shared test data: %s is absent (want ../shared next to the repository, with %s)", shared, rel)
	}
	p := filepath.Join(shared, rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("shared test data missing: %v", err)
	}
	return p
}

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Name returns a name unique to this test run, usable as a Kafka topic,
// consumer group or ClickHouse database.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, t.Name())
	if len(clean) > 40 {
		clean = clean[:40]
	}
	return fmt.Sprintf("%s_%s_%d", prefix, clean, time.Now().UnixNano()%1e9)
}

// FreeUDPPort returns a UDP port on 127.0.0.1 that nothing listens on now,
// for a collector under test and the exporters pointed at it.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
