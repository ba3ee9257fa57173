package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// KafkaCluster is the three-node KRaft cluster of `deploy/services.sh up
// kafka-cluster` (nodes 1, 2 and 3, each broker and controller; node n has
// broker id n), for tests that kill a broker. It runs from the state
// directory of this checkout (SERVICES_DIR, else .services), so another
// checkout's cluster is never touched: its ports being taken makes the
// script, and so the test, give up.
type KafkaCluster struct {
	t      testing.TB
	script string
	dir    string // the script's state directory of the cluster
	// Brokers are the client listeners, node n's at Brokers[n-1].
	Brokers []string
}

// StartKafkaCluster starts the cluster through deploy/services.sh (nodes
// that already run are left as they are) and waits until every node
// serves. A cluster the test started is stopped at cleanup; one that ran
// before is left running, with any node the test killed started again.
// Where the script cannot start it (no Java, no jars and no Maven Central,
// its ports taken) the test is skipped, or fails in CI.
func StartKafkaCluster(t testing.TB) *KafkaCluster {
	t.Helper()
	state := os.Getenv("SERVICES_DIR")
	if state == "" {
		state = filepath.Join(RepoRoot(t), ".services")
	}
	c := &KafkaCluster{t: t, script: filepath.Join(RepoRoot(t), "deploy", "services.sh"),
		dir: filepath.Join(state, "kafka-cluster")}
	before := c.runningNodes()
	if out, err := c.run("up", "kafka-cluster"); err != nil {
		// Whatever the script started before it gave up must not outlive
		// the test.
		if before == 0 {
			c.run("down", "kafka-cluster")
		}
		Unavailable(t, "deploy/services.sh up kafka-cluster: %v\n%s", err, tail(out, 3000))
	}
	if before == 3 {
		t.Cleanup(c.Start)
	} else {
		t.Cleanup(c.Stop)
	}
	raw, err := os.ReadFile(filepath.Join(c.dir, "brokers"))
	if err != nil {
		t.Fatal(err)
	}
	c.Brokers = strings.Split(strings.TrimSpace(string(raw)), ",")
	if len(c.Brokers) != 3 {
		t.Fatalf("kafka-cluster brokers %q, want three", raw)
	}
	return c
}

// Kill sends SIGKILL to node (1 to 3), as a crash or the OOM killer would,
// through `deploy/services.sh kill kafka-cluster`.
func (c *KafkaCluster) Kill(node int) {
	c.t.Helper()
	if out, err := c.run("kill", "kafka-cluster", strconv.Itoa(node)); err != nil {
		c.t.Fatalf("deploy/services.sh kill kafka-cluster %d: %v\n%s", node, err, out)
	}
}

// Start starts the nodes that do not run (after Kill) on their state and
// waits until they serve: `deploy/services.sh up kafka-cluster`.
func (c *KafkaCluster) Start() {
	c.t.Helper()
	if out, err := c.run("up", "kafka-cluster"); err != nil {
		c.t.Fatalf("deploy/services.sh up kafka-cluster: %v\n%s", err, tail(out, 3000))
	}
}

// Stop stops every node: `deploy/services.sh down kafka-cluster`.
func (c *KafkaCluster) Stop() {
	c.t.Helper()
	if out, err := c.run("down", "kafka-cluster"); err != nil {
		c.t.Errorf("deploy/services.sh down kafka-cluster: %v\n%s", err, out)
	}
}

// Log is the log of node's current run.
func (c *KafkaCluster) Log(node int) string {
	return filepath.Join(c.dir, "node"+strconv.Itoa(node), "kafka.log")
}

func (c *KafkaCluster) run(args ...string) ([]byte, error) {
	return exec.Command(c.script, args...).CombinedOutput()
}

// runningNodes counts the nodes whose process lives, as the script does.
func (c *KafkaCluster) runningNodes() int {
	n := 0
	for node := 1; node <= 3; node++ {
		raw, err := os.ReadFile(filepath.Join(c.dir, "node"+strconv.Itoa(node), "pid"))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && syscall.Kill(pid, 0) == nil {
			n++
		}
	}
	return n
}

func tail(out []byte, n int) []byte {
	if len(out) > n {
		return out[len(out)-n:]
	}
	return out
}
