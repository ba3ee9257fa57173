package sink

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// Fault tests stop and restart their services. The shared ones on 9092
// and 9000 serve every other test, so these start private instances on
// free loopback ports, from the same configuration files as
// deploy/services.sh, and kill them at cleanup.

// privateService is one process we start, kill and start again on the
// same state directory.
type privateService struct {
	t     *testing.T
	name  string
	args  []string
	dir   string
	log   string
	ready func() bool
	cmd   *exec.Cmd
	// starts counts the starts, for readiness checks that read a log
	// kept across restarts.
	starts int
}

func (s *privateService) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.args[0], s.args[1:]...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = s.dir, logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.t.Fatalf("cannot start private %s: %v", s.name, err)
	}
	logf.Close()
	s.cmd = cmd
	deadline := time.Now().Add(120 * time.Second)
	for !s.ready() {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(s.log)
			s.kill()
			s.t.Fatalf("private %s did not start within 120s:\n%s", s.name, tail(out, 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// signal sends sig, e.g. SIGSTOP to freeze the service as a stalled
// disk or a long GC pause would, and SIGCONT to let it go on.
func (s *privateService) signal(sig os.Signal) {
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// kill stops the process hard, as a crash or an OOM kill would.
func (s *privateService) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGCONT) // a frozen process dies too, but let it
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// startPrivateClickHouse runs clickhouse-server with deploy/clickhouse's
// configuration on a free port and returns it with its native address.
func startPrivateClickHouse(t *testing.T) (*privateService, string) {
	t.Helper()
	server := "/usr/sbin/clickhouse-server"
	if _, err := os.Stat(server); err != nil {
		testenv.Unavailable(t, "%s is not installed (deploy/services.sh installs it)", server)
	}
	root := testenv.RepoRoot(t)
	dir := t.TempDir()
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port, httpPort := testenv.FreePort(t), testenv.FreePort(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse/config.xml"))
	if err != nil {
		t.Fatal(err)
	}
	config := []byte(strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).Replace(string(raw)))
	users, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse/users.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), config, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), users, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &privateService{t: t, name: "clickhouse", dir: dir, log: filepath.Join(dir, "log", "stdout.log"),
		args:  []string{server, "--config-file=" + filepath.Join(dir, "config.xml")},
		ready: func() bool { return testenv.PortOpen(port) }}
	s.start()
	t.Cleanup(s.kill)
	return s, "127.0.0.1:" + strconv.Itoa(port)
}

// startPrivateClickHouseModern runs the current ClickHouse that
// deploy/services.sh installed (chdb-core's clickhouse-local, serving
// through deploy/clickhouse-modern/serve.py) with that directory's
// configuration on free ports, and returns it with its native address. A
// restart serves the same data directory again.
func startPrivateClickHouseModern(t *testing.T) (*privateService, string) {
	t.Helper()
	root := testenv.RepoRoot(t)
	python := filepath.Join(root, ".services", "clickhouse-modern", "venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		if out, err := exec.Command(filepath.Join(root, "deploy", "services.sh"), "up").CombinedOutput(); err != nil {
			t.Logf("deploy/services.sh up: %v\n%s", err, out)
		}
		if _, err := os.Stat(python); err != nil {
			testenv.Unavailable(t, "chdb-core missing in %s (deploy/services.sh up installs it)", python)
		}
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o755); err != nil {
		t.Fatal(err)
	}
	port, httpPort := testenv.FreePort(t), testenv.FreePort(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse-modern/config.xml"))
	if err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).Replace(string(raw))
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"users.xml", "serve.py"} {
		b, err := os.ReadFile(filepath.Join(root, "deploy/clickhouse-modern", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &privateService{t: t, name: "clickhouse (chdb-core)", dir: dir, log: filepath.Join(dir, "log", "stdout.log"),
		args:  []string{python, "serve.py", filepath.Join(dir, "data")},
		ready: func() bool { return testenv.PortOpen(port) }}
	s.start()
	t.Cleanup(s.kill)
	return s, "127.0.0.1:" + strconv.Itoa(port)
}

// forEachPrivateClickHouse runs test once per server of
// testenv.ClickHouseServers, each started privately for the test to kill
// or freeze, as subtests named like testenv.ForEachClickHouse's.
func forEachPrivateClickHouse(t *testing.T, test func(t *testing.T, server *privateService, addr string)) {
	t.Helper()
	start := map[string]func(*testing.T) (*privateService, string){
		"18.16": startPrivateClickHouse, "modern": startPrivateClickHouseModern,
	}
	for _, srv := range testenv.ClickHouseServers() {
		t.Run(srv.Name, func(t *testing.T) {
			server, addr := start[srv.Name](t)
			test(t, server, addr)
		})
	}
}

// startPrivateKafka runs a single-node KRaft broker from the jars that
// deploy/services.sh fetched, with deploy/kafka's configuration on free
// ports, and returns it with its bootstrap address.
func startPrivateKafka(t *testing.T) (*privateService, string) {
	t.Helper()
	root := testenv.RepoRoot(t)
	libs := filepath.Join(root, ".services", "kafka", "libs")
	if _, err := os.Stat(filepath.Join(libs, ".complete")); err != nil {
		// deploy/services.sh fetches them (idempotent; it also starts the
		// shared services if they are not running).
		if out, err := exec.Command(filepath.Join(root, "deploy", "services.sh"), "up").CombinedOutput(); err != nil {
			t.Logf("deploy/services.sh up: %v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(libs, ".complete")); err != nil {
			testenv.Unavailable(t, "Kafka jars missing in %s (deploy/services.sh up fetches them)", libs)
		}
	}
	java, err := exec.LookPath("java")
	if err != nil {
		testenv.Unavailable(t, "java is not installed")
	}
	dir := t.TempDir()
	port, controller := testenv.FreePort(t), testenv.FreePort(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy/kafka/server.properties"))
	if err != nil {
		t.Fatal(err)
	}
	props := strings.NewReplacer("@DATA@", filepath.Join(dir, "data"), "@PORT@", strconv.Itoa(port),
		"@CONTROLLER_PORT@", strconv.Itoa(controller)).Replace(string(raw))
	propsFile := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(propsFile, []byte(props), 0o644); err != nil {
		t.Fatal(err)
	}
	log4j, err := os.ReadFile(filepath.Join(root, "deploy/kafka/log4j.properties"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "log4j.properties"), log4j, 0o644)
	cp := libs + "/*"
	jvm := []string{"-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Dlog4j.configuration=file:" + filepath.Join(dir, "log4j.properties")}
	id, err := exec.Command(java, append(jvm, "-cp", cp, "kafka.tools.StorageTool", "random-uuid")...).Output()
	if err != nil {
		t.Fatalf("kafka random-uuid: %v", err)
	}
	format := exec.Command(java, append(jvm, "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
		"-t", strings.TrimSpace(string(id)), "-c", propsFile)...)
	if out, err := format.CombinedOutput(); err != nil {
		t.Fatalf("kafka storage format: %v\n%s", err, out)
	}
	logFile := filepath.Join(dir, "kafka.log")
	s := &privateService{t: t, name: "kafka", dir: dir, log: logFile,
		args: append([]string{java}, append(jvm, "-cp", cp, "kafka.Kafka", propsFile)...)}
	s.ready = func() bool {
		// The port opens before the broker has registered with its
		// controller; "started" in the log is the broker's own word. On a
		// restart the log holds the previous run's line too, so count.
		out, _ := os.ReadFile(logFile)
		return testenv.PortOpen(port) && bytes.Count(out, []byte("Kafka Server started")) >= s.starts
	}
	s.starts = 1
	s.start()
	t.Cleanup(s.kill)
	return s, "127.0.0.1:" + strconv.Itoa(port)
}

// restart starts the killed service again on its state.
func (s *privateService) restart() {
	s.starts++
	s.start()
}

// waitContext is a context bounded for a fault test.
func waitContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
