package detector

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

func opens(as []alert.Alert, kind string) []alert.Alert {
	var out []alert.Alert
	for _, a := range as {
		if a.Kind == kind && a.State == alert.StateOpen {
			out = append(out, a)
		}
	}
	return out
}

func TestSequentialTest(t *testing.T) {
	cases := []struct {
		name     string
		outcomes string // per first contact: f failed, c completed
		wantOpen int    // index of the contact that opens; -1 none
		decision string
	}{
		// ln(0.99/1e-6)/ln(4) = 9.96: the tenth failure decides.
		{"ten failures open before the threshold", "ffffffffff", 9, "infected"},
		{"nine failures are not enough", "fffffffff", -1, ""},
		{"successes pull the odds down", "fcfcfcfcfcfcfcfc", -1, ""},
		{"a success cancels a failure", "cfffffffffff", 11, "infected"},
		// Four successes reach the benign bound (odds 0.01) and restart
		// the walk at 1; without the restart ten failures would leave the
		// odds at 4^6, far from deciding.
		{"benign decision restarts the walk", "ccccffffffffff", 13, "infected"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTPFanout.Threshold = 25
			cfg.SMTPFanout.SlowThreshold = 100
			r := &run{e: NewEngine(cfg)}
			openedAt := -1
			for i, o := range tc.outcomes {
				flags := uint8(flow.TCPSyn)
				if o == 'c' {
					flags |= flow.TCPAck
				}
				before := len(r.all)
				r.feed(smtpFlow(zombie, i, at(float64(i)*0.01), flags))
				if len(r.all) > before && openedAt < 0 {
					openedAt = i
				}
			}
			if openedAt != tc.wantOpen {
				t.Fatalf("opened at contact %d, want %d (events %+v)", openedAt, tc.wantOpen, r.events)
			}
			if openedAt < 0 {
				return
			}
			a := r.all[0]
			q := a.Evidence.Sequential
			if a.Evidence.Trigger != TriggerSequential || q == nil || q.Decision != tc.decision {
				t.Fatalf("trigger %q sequential %+v, want sequential/%s", a.Evidence.Trigger, q, tc.decision)
			}
			if q.Odds < q.Bound || math.Abs(q.Bound-0.99/1e-6) > 1 {
				t.Errorf("odds %g bound %g, want odds >= bound = 990000", q.Odds, q.Bound)
			}
			if a.Score <= 1 {
				t.Errorf("score %.2f, want > 1 past the bound", a.Score)
			}
		})
	}
}

func TestSequentialDisabled(t *testing.T) {
	cfg := testConfig()
	cfg.SMTPFanout.Threshold = 25
	cfg.SMTPFanout.SlowThreshold = 100
	cfg.SMTPFanout.Sequential.Enabled = false
	r := &run{e: NewEngine(cfg)}
	for i := 0; i < 20; i++ {
		r.feed(smtpFlow(zombie, i, at(float64(i)*0.01), flow.TCPSyn))
	}
	if len(r.all) != 0 {
		t.Errorf("sequential test off: %d alerts for 20 destinations under a threshold of 25", len(r.all))
	}
}

func TestSlowWindow(t *testing.T) {
	cfg := testConfig()
	cfg.SMTPFanout.Threshold = 25
	cfg.SMTPFanout.SlowThreshold = 30
	cfg.SMTPFanout.Sequential.Enabled = false
	r := &run{e: NewEngine(cfg)}
	// One new destination every 90 seconds: never more than 4 in 5
	// minutes, the 30th within the hour.
	for i := 0; i < 30; i++ {
		r.feed(smtpFlow(zombie, i, at(float64(i)*1.5), flow.TCPSyn|flow.TCPAck))
	}
	got := opens(r.all, alert.KindSMTPFanout)
	if len(got) != 1 || got[0].Evidence.Trigger != TriggerSlowWindow || got[0].Evidence.DistinctDsts60m != 30 {
		t.Fatalf("slow sender: %+v, want one open by slow_window at 30 destinations", r.events)
	}
}

// entropyFlow is a flow from src to dst index d on port.
func entropyFlow(src netip.Addr, d int, port uint16, endMs int64) flow.Flow {
	f := smtpFlow(src, d, endMs, flow.TCPSyn)
	f.DstPort = port
	return f
}

func TestDstEntropyWorm(t *testing.T) {
	cases := []struct {
		name    string
		flow    func(i int) flow.Flow
		n       int
		trigger string
	}{
		{"worm: many addresses, one port", func(i int) flow.Flow { return entropyFlow(zombie, i, 445, at(float64(i)*0.01)) }, 300, TriggerWorm},
		{"busy user: few servers", func(i int) flow.Flow { return entropyFlow(user, i%4, 443, at(float64(i)*0.01)) }, 300, ""},
		{"p2p: many addresses, many ports", func(i int) flow.Flow {
			return entropyFlow(user, i, uint16(10000+i*7), at(float64(i)*0.01))
		}, 300, ""},
		{"worm below min_flows", func(i int) flow.Flow { return entropyFlow(zombie, i, 445, at(float64(i)*0.01)) }, 90, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{e: NewEngine(testConfig())}
			for i := 0; i < tc.n; i++ {
				r.feed(tc.flow(i))
			}
			r.advance(at(6)) // evaluation runs at minute boundaries
			got := opens(r.all, alert.KindDstEntropy)
			if tc.trigger == "" {
				if len(got) != 0 {
					t.Fatalf("alerted: %+v", got[0].Evidence)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%d dst_entropy opens, want 1 (events %+v)", len(got), r.events)
			}
			ev := got[0].Evidence
			if ev.Trigger != tc.trigger || ev.Entropy == nil || ev.Entropy.DstAddr < 0.9 || ev.Entropy.DstPort != 0 || ev.Entropy.TopPort != 445 {
				t.Errorf("evidence %+v entropy %+v, want worm pattern on port 445", ev, ev.Entropy)
			}
			if len(ev.SampleDsts) != 10 || ev.SampleDsts[0] != dst(0).String() {
				t.Errorf("sample %v, want ten destinations from %s", ev.SampleDsts, dst(0))
			}
		})
	}
}

func TestDstEntropyBaselineDeparture(t *testing.T) {
	cfg := testConfig()
	cfg.DstEntropy.BaselineWarmup = 10
	r := &run{e: NewEngine(cfg)}
	// Forty minutes of a steady mix: 60 flows a minute to 6 servers on
	// 443 and 53.
	minute := 0
	for ; minute < 40; minute++ {
		for i := 0; i < 60; i++ {
			port := uint16(443)
			if i%3 == 0 {
				port = 53
			}
			r.feed(entropyFlow(user, i%6, port, at(float64(minute)+float64(i)/61)))
		}
	}
	if n := len(opens(r.all, alert.KindDstEntropy)); n != 0 {
		t.Fatalf("%d alerts during the steady part: %+v", n, r.events)
	}
	// Then one server on many ports: address entropy falls, port
	// entropy rises. Not the worm pattern, but not this subscriber.
	for ; minute < 46; minute++ {
		for i := 0; i < 60; i++ {
			r.feed(entropyFlow(user, 0, uint16(1000+minute*60+i), at(float64(minute)+float64(i)/61)))
		}
	}
	got := opens(r.all, alert.KindDstEntropy)
	if len(got) != 1 || got[0].Evidence.Trigger != TriggerBaseline {
		t.Fatalf("opens %+v, want one baseline_departure", got)
	}
	e := got[0].Evidence.Entropy
	if e.BaselineSteps < 10 || e.DstPort <= e.BaselineDstPort {
		t.Errorf("entropy %+v: want a port entropy above the baseline after >= 10 steps", e)
	}
}

func TestGroups(t *testing.T) {
	cfg := testConfig()
	cfg.SMTPFanout.SlowThreshold = 100
	cfg.Groups = []GroupConfiguration{
		{Name: "business", Networks: []network.Prefix{network.MustParsePrefix("203.0.113.0/28")},
			SMTPFanout: Set(func(s *SMTPFanoutConfiguration) { s.Threshold = 50 })},
		{Name: "own-mta", Networks: []network.Prefix{network.MustParsePrefix("203.0.113.77")},
			Disable: []string{alert.KindSMTPFanout}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := &run{e: NewEngine(cfg)}
	other := netip.MustParseAddr("203.0.113.200")
	for i := 0; i < 30; i++ {
		for _, src := range []netip.Addr{zombie, user, other} { // .10 business, .77 own MTA, .200 global
			r.feed(smtpFlow(src, i, at(float64(i)*0.01), flow.TCPSyn|flow.TCPAck))
		}
	}
	var got []string
	for _, a := range opens(r.all, alert.KindSMTPFanout) {
		got = append(got, fmt.Sprintf("%s@%d/%s", a.SubscriberIP, a.DistinctDsts, a.Evidence.Group))
	}
	// The global threshold (5) opens .200; business (50) does not open
	// at 30; the own-MTA group never.
	if diff := cmp.Diff([]string{"203.0.113.200@5/"}, got); diff != "" {
		t.Errorf("opens (-want +got):\n%s", diff)
	}
	r.feed(smtpFlow(zombie, 1000, at(0.5), flow.TCPSyn))
	for i := 30; i < 50; i++ {
		r.feed(smtpFlow(zombie, i, at(0.5), flow.TCPSyn))
	}
	last := r.all[len(r.all)-1]
	if last.SubscriberIP != zombie.String() || last.State != alert.StateOpen || last.Evidence.Group != "business" || last.Evidence.Threshold != 50 {
		t.Errorf("business subscriber at 51: %+v, want an open with threshold 50, group business", last)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Configuration)
		want   string
	}{
		{"defaults", func(*Configuration) {}, ""},
		{"window not whole minutes", func(c *Configuration) { c.SMTPFanout.Window = 90 * time.Second }, "detector.smtp_fanout.window"},
		{"sequential odds reversed", func(c *Configuration) { c.SMTPFanout.Sequential.SuccessInfected = 0.9 }, "detector.smtp_fanout.sequential"},
		{"entropy bounds", func(c *Configuration) { c.DstEntropy.WormAddrEntropy = 1.5 }, "detector.dst_entropy"},
		{"group without networks", func(c *Configuration) { c.Groups = []GroupConfiguration{{Name: "x"}} }, "detector.groups[0] (x).networks"},
		{"group unknown rule", func(c *Configuration) {
			c.Groups = []GroupConfiguration{{Name: "x", Networks: []network.Prefix{network.MustParsePrefix("10.0.0.0/8")}, Disable: []string{"smtp"}}}
		}, `unknown rule "smtp"`},
		{"group override invalid", func(c *Configuration) {
			c.Groups = []GroupConfiguration{{Name: "x", Networks: []network.Prefix{network.MustParsePrefix("10.0.0.0/8")},
				SMTPFanout: Set(func(s *SMTPFanoutConfiguration) { s.Threshold = 5000 })}}
		}, "detector.groups[0].smtp_fanout.max_destinations"},
		{"map without reload", func(c *Configuration) { c.SubscriberMap = "x.csv"; c.SubscriberMapReload = 0 }, "subscriber_map_reload"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfiguration()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestNetworkAndMapping(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.25": "192.0.2.25/32", "192.0.2.77/24": "192.0.2.0/24", "2001:db8::1": "2001:db8::1/128", " 10.0.0.0/8 ": "10.0.0.0/8",
	} {
		n, err := network.ParsePrefix(in)
		if err != nil || n.String() != want {
			t.Errorf("ParsePrefix(%q) = %s, %v; want %s", in, n, err, want)
		}
	}
	if _, err := network.ParsePrefix("mail.example"); err == nil {
		t.Error("ParsePrefix accepted a name")
	}
	m, err := ParseMapping(strings.NewReader("network,subscriber_id\n# comment\n203.0.113.0/24,cust-net\n203.0.113.10,cust-10\n\n2001:db8::/32,cust-v6\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range []string{"203.0.113.10", "203.0.113.11", "198.51.100.1", "2001:db8::5", "::ffff:203.0.113.10"} {
		got[a] = m.Lookup(netip.MustParseAddr(a))
	}
	want := map[string]string{"203.0.113.10": "cust-10", "203.0.113.11": "cust-net", "198.51.100.1": "", "2001:db8::5": "cust-v6", "::ffff:203.0.113.10": "cust-10"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lookups (-want +got):\n%s", diff)
	}
	if _, err := ParseMapping(strings.NewReader("203.0.113.0/24,a\nnot-an-address,b\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad line: error %v, want one naming line 2", err)
	}
}

func TestSubscriberIDInAlerts(t *testing.T) {
	m, _ := ParseMapping(strings.NewReader("203.0.113.0/24,cust-7\n"))
	e := NewEngine(testConfig())
	e.SetSubscriberIDs(m.Lookup)
	r := &run{e: e}
	for i := 0; i < 5; i++ {
		r.feed(smtpFlow(zombie, i, at(0), flow.TCPSyn))
	}
	if len(r.all) != 1 || r.all[0].SubscriberID != "cust-7" {
		t.Errorf("alerts %+v, want one with subscriber_id cust-7", r.all)
	}
}

func TestHyperLogLog(t *testing.T) {
	for _, n := range []int{100, 1000, 10000, 200000} {
		var h hll
		for i := 0; i < n; i++ {
			h.add(hashAddr(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})))
		}
		// Three standard errors of 2^10 registers.
		if got := float64(h.estimate()); math.Abs(got-float64(n))/float64(n) > 0.1 {
			t.Errorf("estimate %.0f for %d, want within 10%%", got, n)
		}
	}
}

func TestFanoutSaturates(t *testing.T) {
	f := newFanout(60)
	// 5000 destinations over 10 minutes with a cap of 1000: past the cap
	// the counts come from sketches, within three standard errors.
	for i := 0; i < 5000; i++ {
		f.add(dst(i), 1000+int64(i/500), true, 1, 1000, 3)
	}
	if !f.saturated || f.lastSeen != nil {
		t.Fatal("not saturated past the cap")
	}
	check := func(minutes int, want float64) {
		t.Helper()
		d, flows, _ := f.window(minutes)
		if math.Abs(float64(d)-want)/want > 0.1 {
			t.Errorf("window %d: distinct %d, want %.0f within 10%%", minutes, d, want)
		}
		if minutes == 60 && flows != 5000 {
			t.Errorf("flows %d, want 5000 (exact)", flows)
		}
	}
	check(60, 5000)
	check(5, 2500)
	// An hour later every sketch has left the window: exact again.
	f.add(dst(1), 1000+70, false, 1, 1000, 3)
	if f.saturated || len(f.lastSeen) != 1 {
		t.Errorf("saturated %v with %d exact destinations, want back to exact with 1", f.saturated, len(f.lastSeen))
	}
}

func TestEntropyThinning(t *testing.T) {
	cfg := testConfig()
	cfg.DstEntropy.MaxRecords = 256
	r := &run{e: NewEngine(cfg)}
	for i := 0; i < 4000; i++ {
		r.feed(entropyFlow(zombie, i, 445, at(float64(i)*0.001)))
	}
	r.advance(at(5))
	if n := len(opens(r.all, alert.KindDstEntropy)); n != 1 {
		t.Fatalf("%d opens, want 1", n)
	}
	// The last update saw all four minutes.
	last := r.all[len(r.all)-1]
	e := last.Evidence.Entropy
	if last.State != alert.StateUpdate || e.Thinning < 16 || math.Abs(float64(last.DistinctDsts)-4000)/4000 > 0.25 || e.DstAddr < 0.9 {
		t.Errorf("%s: distinct %d entropy %+v: want an update with thinning >= 16, ~4000 destinations, address entropy >= 0.9",
			last.State, last.DistinctDsts, e)
	}
}

func TestSampledFlows(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	for i := 0; i < 5; i++ {
		f := smtpFlow(zombie, i, at(0), 0)
		f.SamplingRate = 100
		r.feed(f)
	}
	if len(r.all) != 1 {
		t.Fatalf("%d alerts, want 1", len(r.all))
	}
	a := r.all[0]
	// Distinct destinations as observed; flows scaled by 1:100; no flags
	// and sampled: packet counts say nothing, so not counted as failed.
	got := fmt.Sprint(a.DistinctDsts, a.Flows, a.Evidence.FailedAttempts, a.Evidence.SamplingRate)
	if got != "5 500 0 100" {
		t.Errorf("distinct flows failed sampling = %s, want 5 500 0 100", got)
	}
}

// TestDstEntropyOnArrival: a worm is flagged as its flows arrive, within a
// third more flows than min_flows, not at the next minute sweep.
func TestDstEntropyOnArrival(t *testing.T) {
	r := &run{e: NewEngine(DefaultConfiguration())}
	for i := 0; i < 300; i++ {
		r.feed(entropyFlow(zombie, i, 445, at(0.2+float64(i)*0.0001)))
	}
	got := opens(r.all, alert.KindDstEntropy)
	if len(got) != 1 || got[0].Flows > 134 {
		t.Errorf("opens %+v, want one within the first minute, at <= 134 flows", r.events)
	}
}

func TestDstEntropyIgnoresICMPErrors(t *testing.T) {
	cases := []struct {
		name   string
		proto  uint8
		port   uint16
		alerts int
	}{
		{"port unreachable answers to a scan", 1, 3<<8 | 3, 0},
		{"time exceeded", 1, 11 << 8, 0},
		{"ICMPv6 destination unreachable", 58, 1<<8 | 4, 0},
		{"echo requests to many hosts: a ping sweep", 1, 8 << 8, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{e: NewEngine(DefaultConfiguration())}
			for i := 0; i < 300; i++ {
				f := entropyFlow(user, i, tc.port, at(float64(i)*0.001))
				f.Proto, f.TCPFlags = tc.proto, 0
				r.feed(f)
			}
			if got := len(opens(r.all, alert.KindDstEntropy)); got != tc.alerts {
				t.Errorf("%d dst_entropy opens, want %d", got, tc.alerts)
			}
		})
	}
}

func TestIPv6Subscriber(t *testing.T) {
	src := netip.MustParseAddr("2001:db8:1::10")
	r := &run{e: NewEngine(testConfig())}
	for i := 0; i < 200; i++ {
		d := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 15: byte(i)})
		f := smtpFlow(src, 0, at(float64(i)*0.001), flow.TCPSyn)
		f.DstAddr = d
		r.feed(f)
	}
	smtp, ent := opens(r.all, alert.KindSMTPFanout), opens(r.all, alert.KindDstEntropy)
	if len(smtp) != 1 || smtp[0].Evidence.SampleDsts[0] != "2001:db8:ff00::" {
		t.Errorf("smtp_fanout opens %+v, want one with IPv6 sample destinations", smtp)
	}
	// Entropy records hold hashes of IPv6 destinations: no sample, but
	// the worm pattern on port 25 still shows.
	if len(ent) != 1 || len(ent[0].Evidence.SampleDsts) != 0 || ent[0].Evidence.Entropy.TopPort != 25 {
		t.Errorf("dst_entropy opens %+v, want one without a sample", ent)
	}
}
