package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Private services: tests that kill, freeze or reconfigure Kafka or
// ClickHouse start instances of their own on free loopback ports, from the
// same configuration files as deploy/services.sh and the binaries it
// installed. The shared ones on 9092 and 9000 serve every other test.

// Service is one process a test runs, and may kill, freeze and start again
// on the same state directory. It is killed at cleanup.
type Service struct {
	t    testing.TB
	name string
	args []string
	dir  string
	log  string
	// ready tells the service answers after its starts-th start (a log
	// kept across restarts holds the earlier starts' lines too).
	ready  func(starts int) bool
	cmd    *exec.Cmd
	starts int
}

func startService(t testing.TB, name, dir, log string, ready func(starts int) bool, args ...string) *Service {
	t.Helper()
	s := &Service{t: t, name: name, args: args, dir: dir, log: log, ready: ready}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// start runs the process, its output appended to the log, and waits up to
// 120 s for it to answer.
func (s *Service) start() {
	s.t.Helper()
	s.starts++
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
	for !s.ready(s.starts) {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(s.log)
			if len(out) > 3000 {
				out = out[len(out)-3000:]
			}
			s.Kill()
			s.t.Fatalf("private %s did not start within 120s:\n%s", s.name, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Restart starts the killed service again on its state.
func (s *Service) Restart() { s.start() }

// Signal sends sig, e.g. SIGSTOP to freeze the service as a stalled disk
// or a long GC pause would, and SIGCONT to let it go on.
func (s *Service) Signal(sig os.Signal) {
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// Kill stops the process hard, as a crash or an OOM kill would.
func (s *Service) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGCONT) // a frozen process dies too, but let it
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

func readRepoFile(t testing.TB, rel string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(RepoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func writeFile(t testing.TB, path string, content []byte) {
	t.Helper()
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
}

// installed returns path once deploy/services.sh has put it in place
// (running it when it has not: it is idempotent), or skips the test as
// unavailable.
func installed(t testing.TB, path, what string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if out, err := exec.Command(filepath.Join(RepoRoot(t), "deploy", "services.sh"), "up").CombinedOutput(); err != nil {
			t.Logf("deploy/services.sh up: %v\n%s", err, out)
		}
		if _, err := os.Stat(path); err != nil {
			Unavailable(t, "%s missing in %s (deploy/services.sh up installs it)", what, path)
		}
	}
	return path
}

// kafkaNode is a private single-node KRaft broker made ready to start.
type kafkaNode struct {
	args     []string
	dir, log string
	port     int
}

// prepareKafka writes a broker's configuration into a temporary directory
// (deploy/kafka's server.properties on free ports, then extra(port,
// controller) when extra is set) and formats its storage, with formatArgs
// added to Kafka's StorageTool, from the jars deploy/services.sh fetched.
func prepareKafka(t testing.TB, extra func(port, controller int) string, formatArgs ...string) kafkaNode {
	t.Helper()
	libs := filepath.Join(RepoRoot(t), ".services", "kafka", "libs")
	installed(t, filepath.Join(libs, ".complete"), "Kafka jars")
	java, err := exec.LookPath("java")
	if err != nil {
		Unavailable(t, "java is not installed")
	}
	dir := t.TempDir()
	port, controller := FreePort(t), FreePort(t)
	props := strings.NewReplacer("@DATA@", filepath.Join(dir, "data"), "@PORT@", strconv.Itoa(port),
		"@CONTROLLER_PORT@", strconv.Itoa(controller)).Replace(string(readRepoFile(t, "deploy/kafka/server.properties")))
	if extra != nil {
		props += extra(port, controller)
	}
	propsFile := filepath.Join(dir, "server.properties")
	writeFile(t, propsFile, []byte(props))
	writeFile(t, filepath.Join(dir, "log4j.properties"), readRepoFile(t, "deploy/kafka/log4j.properties"))
	cp := libs + "/*"
	jvm := []string{"-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dlog4j.configuration=file:" + filepath.Join(dir, "log4j.properties")}
	id, err := exec.Command(java, append(jvm, "-cp", cp, "kafka.tools.StorageTool", "random-uuid")...).Output()
	if err != nil {
		t.Fatalf("kafka random-uuid: %v", err)
	}
	// The tool logs to stdout before the id (log4j.properties' appender):
	// the id is the last line.
	clusterID := strings.TrimSpace(string(id))
	clusterID = clusterID[strings.LastIndexByte(clusterID, '\n')+1:]
	format := exec.Command(java, append(append(jvm, "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
		"-t", clusterID, "-c", propsFile), formatArgs...)...)
	if out, err := format.CombinedOutput(); err != nil {
		t.Fatalf("kafka storage format: %v\n%s", err, out)
	}
	return kafkaNode{
		args: append([]string{java}, append(jvm, "-cp", cp, "kafka.Kafka", propsFile)...),
		dir:  dir, log: filepath.Join(dir, "kafka.log"), port: port,
	}
}

// started tells the broker answers on its port and the other ports: the
// ports open before the broker has registered with its controller, so
// "started" in the log, the broker's own word, is counted too.
func (n kafkaNode) started(ports ...int) func(starts int) bool {
	return func(starts int) bool {
		for _, p := range append([]int{n.port}, ports...) {
			if !PortOpen(p) {
				return false
			}
		}
		out, _ := os.ReadFile(n.log)
		return bytes.Count(out, []byte("Kafka Server started")) >= starts
	}
}

// StartPrivateKafka runs a broker with deploy/kafka's configuration and
// returns it with its bootstrap address.
func StartPrivateKafka(t testing.TB) (*Service, string) {
	t.Helper()
	n := prepareKafka(t, nil)
	return startService(t, "kafka", n.dir, n.log, n.started(), n.args...), loopback(n.port)
}

// prepareClickHouse18 writes deploy/clickhouse's configuration for
// Debian's clickhouse-server on free ports into a temporary directory,
// config.xml passed through edit when it is set, and users as users.xml.
// It returns the directory, the native port and the command line.
func prepareClickHouse18(t testing.TB, edit func(config string) string, users []byte) (string, int, []string) {
	t.Helper()
	server := "/usr/sbin/clickhouse-server"
	if _, err := os.Stat(server); err != nil {
		Unavailable(t, "%s is not installed (deploy/services.sh installs it)", server)
	}
	dir := t.TempDir()
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port, httpPort := FreePort(t), FreePort(t)
	config := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).
		Replace(string(readRepoFile(t, "deploy/clickhouse/config.xml")))
	if edit != nil {
		config = edit(config)
	}
	writeFile(t, filepath.Join(dir, "config.xml"), []byte(config))
	writeFile(t, filepath.Join(dir, "users.xml"), users)
	return dir, port, []string{server, "--config-file=" + filepath.Join(dir, "config.xml")}
}

// StartPrivateClickHouse18 runs Debian's clickhouse-server (18.16) with
// deploy/clickhouse's configuration and returns it with its native address.
func StartPrivateClickHouse18(t testing.TB) (*Service, string) {
	t.Helper()
	dir, port, args := prepareClickHouse18(t, nil, readRepoFile(t, "deploy/clickhouse/users.xml"))
	s := startService(t, "clickhouse", dir, filepath.Join(dir, "log", "stdout.log"),
		func(int) bool { return PortOpen(port) }, args...)
	return s, loopback(port)
}

// prepareClickHouseModern writes deploy/clickhouse-modern's configuration
// and serve.py for the current ClickHouse that deploy/services.sh
// installed (chdb-core's clickhouse-local) on free ports into a temporary
// directory, users as users.xml. It returns the directory, the native
// port and the command line; a restart serves the same data again.
func prepareClickHouseModern(t testing.TB, users []byte) (string, int, []string) {
	t.Helper()
	python := installed(t, filepath.Join(RepoRoot(t), ".services", "clickhouse-modern", "venv", "bin", "python"), "chdb-core")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o755); err != nil {
		t.Fatal(err)
	}
	port, httpPort := FreePort(t), FreePort(t)
	config := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(port), "@HTTP_PORT@", strconv.Itoa(httpPort)).
		Replace(string(readRepoFile(t, "deploy/clickhouse-modern/config.xml")))
	writeFile(t, filepath.Join(dir, "config.xml"), []byte(config))
	writeFile(t, filepath.Join(dir, "users.xml"), users)
	writeFile(t, filepath.Join(dir, "serve.py"), readRepoFile(t, "deploy/clickhouse-modern/serve.py"))
	return dir, port, []string{python, "serve.py", filepath.Join(dir, "data")}
}

// StartPrivateClickHouseModern runs the current ClickHouse with
// deploy/clickhouse-modern's configuration and returns it with its native
// address.
func StartPrivateClickHouseModern(t testing.TB) (*Service, string) {
	t.Helper()
	dir, port, args := prepareClickHouseModern(t, readRepoFile(t, "deploy/clickhouse-modern/users.xml"))
	s := startService(t, "clickhouse (chdb-core)", dir, filepath.Join(dir, "log", "stdout.log"),
		func(int) bool { return PortOpen(port) }, args...)
	return s, loopback(port)
}

// usersWith adds to a users.xml a user with password, allowed from
// loopback with the default profile: the user wormsign logs in as when
// clickhouse.username and clickhouse.password are set.
func usersWith(raw []byte, user, password string) []byte {
	entry := fmt.Sprintf("<users>\n        <%[1]s><password>%[2]s</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"+
		"<profile>default</profile><quota>default</quota></%[1]s>", user, password)
	return []byte(strings.Replace(string(raw), "<users>", entry, 1))
}
