package evaluation

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
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

// TestLabScenario runs the pipeline as deployed, on live traffic:
// subscribers in a network namespace, softflowd exporting NetFlow v9 from
// the router interface to the collector, the collector handing flows to
// the detector, whose dark space and mail relay are the lab's. Each rule
// must flag its culprit and nobody else:
//   - a spam zombie (40 SMTP attempts, 10 refused): smtp_fanout;
//   - a worm (port 445 on 200 addresses, 16 of them in the dark prefix):
//     dst_entropy and darknet;
//   - a bot with a stolen password, 150 full SMTP sessions through the
//     ISP's submission server on 587 within a minute or two: relay_abuse;
//   - a bot flooding one address with UDP from new source ports (250 a
//     second, 70 s): outbound_flood;
//   - not flagged: the ISP's mail relay (30 SMTP sessions, allow-listed),
//     an ordinary user (2 SMTP sessions), a user sending 5 mails through
//     the submission server, and a host asking its DNS resolver 20
//     queries a second throughout.
func TestLabScenario(t *testing.T) {
	lab := testenv.NewLab(t, 8, 220)
	zombie, worm, relay, user := lab.Subscribers[0], lab.Subscribers[1], lab.Subscribers[2], lab.Subscribers[3]
	abuser, mailer, flooder, dnsUser := lab.Subscribers[4], lab.Subscribers[5], lab.Subscribers[6], lab.Subscribers[7]
	submission, resolver, victim := lab.Servers[210], lab.Servers[211], lab.Servers[212]
	// The dark prefix: the top /28 of the lab's internet /24, which no
	// address of the internet namespace uses.
	b := lab.Servers[0].As4()
	dark := netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], b[2], 240}), 28)
	port := testenv.FreeUDPPort(t)

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	mem := bus.NewMemory(1024)
	alertsIn, _ := mem.Consumer("alerts", "test")
	subscribers := network.NewSubscribers([]network.Prefix{network.MustParsePrefix("203.0.113.0/24")})
	dcfg := detector.DefaultConfiguration()
	dcfg.AllowList = []network.Prefix{network.MustParsePrefix(relay.String())}
	dcfg.Darknet.Networks = []network.Prefix{{Prefix: dark}}
	dcfg.RelayAbuse.Relays = []network.Prefix{network.MustParsePrefix(submission.String())}
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
	lab.StartSMTPServersOn(t, []netip.Addr{submission}, 587)
	sf := lab.StartSoftflowd(t, 9, port)
	// The flood and the resolver client run for 70 s while the rest
	// happens.
	flood := lab.StartUDPSender(t, flooder, victim, 9, 250, 70*time.Second)
	dns := lab.StartUDPSender(t, dnsUser, resolver, 53, 20, 70*time.Second)
	// The zombie tries the refusing hosts first: its alert opens at the
	// 25th distinct destination to arrive, and the evidence must show the
	// refused attempts however softflowd orders its exports after them.
	zombieTargets := append(slices.Clone(lab.Servers[30:40]), lab.Servers[:30]...)
	if n := lab.SMTPSessions(t, zombie, zombieTargets); n != 30 {
		t.Fatalf("zombie had %d sessions answered, want 30", n)
	}
	if n := lab.SMTPSessions(t, relay, lab.Servers[:30]); n != 30 {
		t.Fatalf("relay had %d sessions answered, want 30", n)
	}
	if n := lab.SMTPSessions(t, user, lab.Servers[:2]); n != 2 {
		t.Fatalf("user had %d sessions answered, want 2", n)
	}
	if n := lab.SMTPSubmit(t, mailer, submission, 587, 5); n != 5 {
		t.Fatalf("mailer had %d of 5 submissions answered", n)
	}
	if n := lab.SMTPSubmit(t, abuser, submission, 587, 150); n != 150 {
		t.Fatalf("abuser had %d of 150 submissions answered", n)
	}
	targets := make([]string, 0, 216)
	for _, s := range lab.Servers[:200] {
		targets = append(targets, s.String())
	}
	for a, i := dark.Addr(), 0; i < 16; a, i = a.Next(), i+1 {
		targets = append(targets, a.String())
	}
	cmd := lab.Command(lab.Subscriber, os.Args[0])
	cmd.Env = append(os.Environ(), scanPeer+"="+worm.String()+"|445|"+strings.Join(targets, ","))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("worm: %v\n%s", err, out)
	}
	for _, p := range []*exec.Cmd{flood, dns} {
		if err := p.Wait(); err != nil {
			t.Fatalf("udp sender: %v", err)
		}
	}
	sf.ExpireAll(t)

	want := map[string]bool{
		zombie.String() + " smtp_fanout": true, worm.String() + " dst_entropy": true, worm.String() + " darknet": true,
		abuser.String() + " relay_abuse": true, flooder.String() + " outbound_flood": true,
	}
	opened := map[string]alert.Alert{}
	all := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for len(opened) < len(want) {
		m, err := alertsIn.Fetch(ctx)
		if err != nil {
			t.Fatalf("only %d of %d incidents opened within 60 s: %v", len(opened), len(want), keys(opened))
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
	for k := range all {
		if !want[k] {
			t.Errorf("flagged %s; only %v should be", k, slices.Sorted(maps.Keys(want)))
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
	if a, ok := opened[worm.String()+" darknet"]; ok {
		// The dark contacts came last in the worm's sweep: opened within
		// a minute of the first one.
		dn := a.Evidence.Darknet
		if dn == nil || !slices.Equal(dn.Ports, []uint16{445}) || a.LastSeen.Sub(dn.FirstContact) > time.Minute ||
			a.DistinctDsts < 3 || !dark.Contains(netip.MustParseAddr(a.Evidence.SampleDsts[0])) {
			t.Errorf("darknet alert %+v evidence %+v", a, dn)
		}
	}
	if a, ok := opened[abuser.String()+" relay_abuse"]; ok {
		r := a.Evidence.Relay
		if r == nil || r.Connections < 100 || !slices.Equal(r.Relays, []string{submission.String()}) || !slices.Equal(r.Ports, []uint16{587}) {
			t.Errorf("relay_abuse evidence %+v", r)
		}
	}
	if a, ok := opened[flooder.String()+" outbound_flood"]; ok {
		f := a.Evidence.Flood
		if f == nil || f.Target != victim.String() || f.Protocol != "udp" || f.FlowsPerMinute < 6000 || f.Seconds < 60 {
			t.Errorf("outbound_flood evidence %+v", f)
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
