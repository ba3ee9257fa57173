package evaluation

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/network"
)

const scanPeer = "WORMSIGN_EVAL_SCAN" // "from|port|target,target,..."

func TestMain(m *testing.M) {
	testenv.RunPeer()
	if spec := os.Getenv(scanPeer); spec != "" {
		scan(spec)
		os.Exit(0)
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// scan is the worm: one TCP connection attempt to port on each target,
// from the subscriber address, as a scanning worm sweeps for victims.
func scan(spec string) {
	parts := strings.SplitN(spec, "|", 3)
	local, _ := net.ResolveTCPAddr("tcp", net.JoinHostPort(parts[0], "0"))
	d := net.Dialer{LocalAddr: local, Timeout: 300 * time.Millisecond}
	for _, t := range strings.Split(parts[2], ",") {
		if c, err := d.Dial("tcp", net.JoinHostPort(t, parts[1])); err == nil {
			c.Close()
		}
	}
}

// TestLabScenario runs the pipeline as deployed, on live traffic: four
// subscribers in a network namespace, softflowd exporting NetFlow v9 from
// the router interface to the collector, the collector handing flows to
// the detector. A spam zombie (40 SMTP attempts, 10 refused), a worm
// (port 445 on 200 addresses), the ISP's mail relay (30 SMTP sessions,
// allow-listed) and an ordinary user (2 SMTP sessions): only the zombie
// (smtp_fanout) and the worm (dst_entropy) may be flagged.
func TestLabScenario(t *testing.T) {
	lab := testenv.NewLab(t, 4, 200)
	zombie, worm, relay, user := lab.Subscribers[0], lab.Subscribers[1], lab.Subscribers[2], lab.Subscribers[3]
	port := testenv.FreeUDPPort(t)

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	mem := bus.NewMemory(1024)
	alertsIn, _ := mem.Consumer("alerts", "test")
	subscribers := network.NewSubscribers([]network.Prefix{network.MustParsePrefix("203.0.113.0/24")})
	dcfg := detector.DefaultConfiguration()
	dcfg.AllowList = []network.Prefix{network.MustParsePrefix(relay.String())}
	d, err := detector.New(dcfg, detector.Dependencies{Logger: logger, Registry: reg, Bus: mem,
		FlowsTopic: "flows", AlertsTopic: "alerts", Subscribers: subscribers})
	if err != nil {
		t.Fatal(err)
	}
	ccfg := collector.DefaultConfiguration()
	ccfg.NetFlowListen = []string{fmt.Sprintf("127.0.0.1:%d", port)}
	ccfg.SFlowListen = nil
	c, err := collector.New(ccfg, collector.Dependencies{Logger: logger, Registry: reg, Bus: mem,
		Topic: "flows", Subscribers: subscribers})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}

	lab.StartSMTPServers(t, lab.Servers[:30])
	sf := lab.StartSoftflowd(t, 9, port)
	if n := lab.SMTPSessions(t, zombie, lab.Servers[:40]); n != 30 {
		t.Fatalf("zombie had %d sessions answered, want 30", n)
	}
	if n := lab.SMTPSessions(t, relay, lab.Servers[:30]); n != 30 {
		t.Fatalf("relay had %d sessions answered, want 30", n)
	}
	if n := lab.SMTPSessions(t, user, lab.Servers[:2]); n != 2 {
		t.Fatalf("user had %d sessions answered, want 2", n)
	}
	targets := make([]string, 0, 200)
	for _, s := range lab.Servers[:200] {
		targets = append(targets, s.String())
	}
	cmd := lab.Command(lab.Subscriber, os.Args[0])
	cmd.Env = append(os.Environ(), scanPeer+"="+worm.String()+"|445|"+strings.Join(targets, ","))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("worm: %v\n%s", err, out)
	}
	sf.ExpireAll(t)

	opened := map[string]alert.Alert{}
	all := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(opened) < 2 {
		m, err := alertsIn.Fetch(ctx)
		if err != nil {
			t.Fatalf("only %d of 2 incidents opened within 30 s: %v", len(opened), opened)
		}
		a, _ := alert.Unmarshal(m.Value)
		all[a.SubscriberIP+" "+a.Kind]++
		if a.State == alert.StateOpen {
			opened[a.SubscriberIP+" "+a.Kind] = a
		}
	}
	// Let anything else that would be flagged arrive.
	time.Sleep(2 * time.Second)
	c.Stop()
	d.Drain()
	d.Stop()
	mem.CloseTopic("alerts")
	for {
		m, err := alertsIn.Fetch(context.Background())
		if err != nil {
			break
		}
		a, _ := alert.Unmarshal(m.Value)
		all[a.SubscriberIP+" "+a.Kind]++
	}
	want := map[string]bool{zombie.String() + " smtp_fanout": true, worm.String() + " dst_entropy": true}
	for k := range all {
		if !want[k] {
			t.Errorf("flagged %s; only the zombie's smtp_fanout and the worm's dst_entropy should be", k)
		}
	}
	for k := range want {
		if _, ok := opened[k]; !ok {
			t.Errorf("no open for %s", k)
		}
	}
	if a, ok := opened[worm.String()+" dst_entropy"]; ok {
		e := a.Evidence.Entropy
		if a.Evidence.Trigger != detector.TriggerWorm || e == nil || e.TopPort != 445 || e.DstAddr < 0.9 {
			t.Errorf("worm alert evidence %+v %+v, want the worm pattern on port 445", a.Evidence, e)
		}
	}
	if a, ok := opened[zombie.String()+" smtp_fanout"]; ok && a.Evidence.FailedAttempts == 0 {
		t.Errorf("zombie alert without failed attempts: %+v", a.Evidence)
	}
	t.Logf("opened: %v; all events: %v", keys(opened), all)
}

func keys(m map[string]alert.Alert) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
