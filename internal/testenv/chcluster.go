package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ClickHouseCluster is a private ClickHouse 18.16 cluster of a test: the
// cluster `wormsign` of deploy/services.sh (ZooKeeper and 2 shards x 2
// replicas), started by that script in a state directory of the test's
// own on free loopback ports, and stopped at cleanup. Server n (1..4)
// is replica (n+1)%2+1 of shard (n+1)/2.
type ClickHouseCluster struct {
	t     testing.TB
	Name  string
	dir   string
	env   []string
	ports int // tcp port of server n is ports+n
}

// clusterServers is how many servers deploy/services.sh starts.
const clusterServers = 4

// StartClickHouseCluster starts a private cluster through
// deploy/services.sh. Where it cannot (no java, maven or clickhouse-server;
// the script failed), the test is skipped, or fails in CI.
func StartClickHouseCluster(t testing.TB) *ClickHouseCluster {
	t.Helper()
	for _, tool := range []string{"java", "mvn", "/usr/sbin/clickhouse-server", "clickhouse-client"} {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "the ClickHouse cluster needs %s (run deploy/services.sh up clickhouse-cluster once to install it)", tool)
		}
	}
	root := RepoRoot(t)
	base := freePortBlock(t)
	c := &ClickHouseCluster{t: t, Name: "wormsign", dir: t.TempDir(), ports: base}
	c.env = append(os.Environ(),
		"SERVICES_DIR="+c.dir,
		// The jars once for every test, beside the shared services.
		"SERVICES_ZOOKEEPER_LIBS="+filepath.Join(root, ".services", "zookeeper", "libs"),
		"SERVICES_ZOOKEEPER_PORT="+strconv.Itoa(base),
		"SERVICES_CLICKHOUSE_CLUSTER_PORT="+strconv.Itoa(base),
		"SERVICES_CLICKHOUSE_CLUSTER_HTTP_PORT="+strconv.Itoa(base+10),
		"SERVICES_CLICKHOUSE_CLUSTER_INTERSERVER_PORT="+strconv.Itoa(base+20),
	)
	t.Cleanup(func() {
		if t.Failed() {
			c.logErrors()
		}
		if out, err := c.script("down"); err != nil {
			t.Logf("cannot stop the private ClickHouse cluster: %v\n%s", err, out)
		}
	})
	if out, err := c.script("up"); err != nil {
		Unavailable(t, "cannot start a private ClickHouse cluster: %v\n%s", err, out)
	}
	return c
}

// logErrors writes the end of each server's error log to the test's log:
// the state directory goes with the test, and a failure on a cluster
// (a replica slow to come back, a DDL queue stuck) is told there.
func (c *ClickHouseCluster) logErrors() {
	for n := 1; n <= clusterServers; n++ {
		raw, err := os.ReadFile(filepath.Join(c.dir, "clickhouse-cluster", strconv.Itoa(n), "log", "server.err.log"))
		if err != nil {
			c.t.Logf("cluster server %d: no error log: %v", n, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
		c.t.Logf("cluster server %d, the last lines of server.err.log:\n%s", n, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

func (c *ClickHouseCluster) script(verb string) (string, error) {
	cmd := exec.Command(filepath.Join(RepoRoot(c.t), "deploy", "services.sh"), verb, "clickhouse-cluster")
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Addr is the native-protocol address of server n (1..4).
func (c *ClickHouseCluster) Addr(n int) string { return loopback(c.ports + n) }

// Addrs are the addresses of every server.
func (c *ClickHouseCluster) Addrs() []string {
	var out []string
	for n := 1; n <= clusterServers; n++ {
		out = append(out, c.Addr(n))
	}
	return out
}

// Kill sends SIGKILL to server n, as a crash or an OOM kill would.
func (c *ClickHouseCluster) Kill(n int) {
	c.t.Helper()
	pid := c.Signal(n, syscall.SIGKILL)
	// Reap it where it is ours (services.sh started it in the
	// background; it is not a child of the test), and wait until it is
	// gone so that a restart finds its port free.
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		time.Sleep(100 * time.Millisecond)
	}
}

// Signal sends sig to server n and returns its pid: SIGSTOP freezes it
// as a stalled disk, a long pause or a partitioned network would (its
// sockets stay open, nothing answers), SIGCONT lets it go on.
func (c *ClickHouseCluster) Signal(n int, sig syscall.Signal) (pid int) {
	c.t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.dir, "clickhouse-cluster", strconv.Itoa(n), "pid"))
	if err != nil {
		c.t.Fatalf("cannot read the pid of cluster server %d: %v", n, err)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		c.t.Fatalf("cluster server %d: bad pid file: %v", n, err)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		c.t.Fatalf("cannot send %v to cluster server %d: %v", sig, n, err)
	}
	return pid
}

// Restart starts every server that is not running (services.sh `up` is
// idempotent) and waits until all answer.
func (c *ClickHouseCluster) Restart() {
	c.t.Helper()
	if out, err := c.script("up"); err != nil {
		c.t.Fatalf("cannot restart the ClickHouse cluster: %v\n%s", err, out)
	}
}

// freePortBlock returns a base port p such that p .. p+30 are free on
// loopback now: ZooKeeper on p, the servers' native ports on p+1..p+4,
// HTTP on p+11.., interserver on p+21...
func freePortBlock(t testing.TB) int {
	t.Helper()
	for base := 21000 + os.Getpid()%200*40; base < 60000; base += 40 {
		free := true
		for p := base; p <= base+30 && free; p++ {
			l, err := net.Listen("tcp", loopback(p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal(fmt.Errorf("no block of 31 free loopback ports"))
	return 0
}

// ClusterFaultTest skips a fault test on the clusters unless
// TEST_CLUSTER_FAULTS is set, as `make cluster-faults` (part of `make
// test`) and `make test-clusters` set it: such a test runs alone, after
// the other packages' tests, whose load on two cores kept a restarted
// replica unreachable for over a minute.
func ClusterFaultTest(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("fault test")
	}
	if os.Getenv("TEST_CLUSTER_FAULTS") == "" {
		t.Skip("a cluster fault test: it runs alone in make cluster-faults (TEST_CLUSTER_FAULTS=1)")
	}
}
