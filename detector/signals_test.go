package detector

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

var (
	darkNet   = network.MustParsePrefix("198.19.200.0/24")
	mailRelay = netip.MustParseAddr("198.18.0.25")
)

func darkAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 200, byte(i)}) }

func darkFlow(src netip.Addr, i int, endMs int64) flow.Flow {
	f := smtpFlow(src, 0, endMs, flow.TCPSyn)
	f.DstAddr, f.DstPort = darkAddr(i), 23
	return f
}

func darkConfig() Configuration {
	c := testConfig()
	c.Darknet.Networks = []network.Prefix{darkNet, network.MustParsePrefix("198.19.201.7")}
	return c
}

// states lists the states of the alerts of kind, in order.
func states(as []alert.Alert, kind string) []string {
	var out []string
	for _, a := range as {
		if a.Kind == kind {
			out = append(out, a.State)
		}
	}
	return out
}

func TestDarknet(t *testing.T) {
	t.Run("off without networks", func(t *testing.T) {
		r := &run{e: NewEngine(testConfig())}
		for i := range 10 {
			r.feed(darkFlow(zombie, i, at(float64(i)*0.1)))
		}
		if n := len(opens(r.all, alert.KindDarknet)); n != 0 {
			t.Errorf("%d darknet opens with no dark networks configured", n)
		}
	})
	t.Run("three distinct within the window", func(t *testing.T) {
		r := &run{e: NewEngine(darkConfig())}
		r.feed(darkFlow(zombie, 1, at(0)))
		r.feed(darkFlow(zombie, 1, at(0.5))) // same address again
		f := darkFlow(zombie, 2, at(1))
		f.Proto, f.DstPort = 17, 161
		r.feed(f)
		if len(r.all) != 0 {
			t.Fatalf("opened at two distinct dark addresses: %+v", r.all)
		}
		g := darkFlow(zombie, 0, at(2))
		g.DstAddr = netip.MustParseAddr("198.19.201.7") // a single honeypot address
		r.feed(g)
		got := opens(r.all, alert.KindDarknet)
		if len(got) != 1 {
			t.Fatalf("opens %+v, want one at the third dark address", r.events)
		}
		a := got[0]
		d := a.Evidence.Darknet
		want := &alert.Darknet{Ports: []uint16{23, 161}, Protocols: []string{"tcp", "udp"}, FirstContact: time.UnixMilli(at(0)).UTC()}
		if diff := cmp.Diff(want, d); diff != "" {
			t.Errorf("evidence (-want +got):\n%s", diff)
		}
		if a.DistinctDsts != 3 || a.Flows != 4 || a.Evidence.Threshold != 3 || a.Evidence.Trigger != TriggerMinDsts ||
			!cmp.Equal(a.Evidence.SampleDsts, []string{"198.19.200.1", "198.19.200.2", "198.19.201.7"}) {
			t.Errorf("alert %+v", a)
		}
		if a.ID != incidentID(zombie, alert.KindDarknet, at(2)) {
			t.Errorf("id %s is not incidentID(subscriber, kind, opening flow's time)", a.ID)
		}
	})
	t.Run("spread beyond the window", func(t *testing.T) {
		r := &run{e: NewEngine(darkConfig())}
		for i := range 10 {
			r.feed(darkFlow(zombie, i, at(float64(i)*6))) // one every 6 minutes, window 10
		}
		if n := len(opens(r.all, alert.KindDarknet)); n != 0 {
			t.Errorf("%d opens for one dark address every 6 minutes", n)
		}
	})
	t.Run("cooldown resolves, a new scan reopens under a new id", func(t *testing.T) {
		r := &run{e: NewEngine(darkConfig())}
		for i := range 4 {
			r.feed(darkFlow(zombie, i, at(float64(i)*0.1)))
		}
		// Nothing more for 10 minutes (cooldown): the subscriber's next
		// flow, 30 minutes later, resolves it first (catchUp), then opens
		// a new one.
		for i := range 3 {
			r.feed(darkFlow(zombie, 100+i, at(30+float64(i)*0.1)))
		}
		got := states(r.all, alert.KindDarknet)
		if diff := cmp.Diff([]string{"open", "resolved", "open"}, got); diff != "" {
			t.Fatalf("events (-want +got):\n%s", diff)
		}
		if r.all[0].ID == r.all[2].ID {
			t.Error("reopened incident kept the old id")
		}
		if r.all[1].ID != r.all[0].ID {
			t.Error("resolved under another id")
		}
	})
	t.Run("sampled flows: distinct never scaled, flows scaled", func(t *testing.T) {
		r := &run{e: NewEngine(darkConfig())}
		for i := range 2 {
			f := darkFlow(zombie, i, at(float64(i)*0.1))
			f.SamplingRate = 1000
			r.feed(f)
		}
		if len(r.all) != 0 {
			t.Fatalf("two sampled dark contacts opened: %+v", r.all)
		}
		f := darkFlow(zombie, 2, at(0.3))
		f.SamplingRate = 1000
		r.feed(f)
		got := opens(r.all, alert.KindDarknet)
		if len(got) != 1 || got[0].DistinctDsts != 3 || got[0].Flows != 3000 || got[0].Evidence.SamplingRate != 1000 {
			t.Fatalf("opens %+v, want one at 3 distinct, 3000 flows", got)
		}
	})
	t.Run("groups", func(t *testing.T) {
		cfg := darkConfig()
		cfg.Groups = []GroupConfiguration{
			{Name: "researchers", Networks: []network.Prefix{network.MustParsePrefix(zombie.String())},
				Darknet: Set(func(d *DarknetConfiguration) { d.MinDsts = 5 })},
			{Name: "telescope-operator", Networks: []network.Prefix{network.MustParsePrefix(user.String())},
				Disable: []string{alert.KindDarknet}},
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		r := &run{e: NewEngine(cfg)}
		for i := range 4 {
			r.feed(darkFlow(zombie, i, at(float64(i)*0.1)))
			r.feed(darkFlow(user, i, at(float64(i)*0.1)))
		}
		if len(r.all) != 0 {
			t.Fatalf("opened under the group's min_dsts or for a disabled group: %+v", r.events)
		}
		r.feed(darkFlow(zombie, 4, at(0.5)))
		got := opens(r.all, alert.KindDarknet)
		if len(got) != 1 || got[0].Evidence.Group != "researchers" || got[0].Evidence.Threshold != 5 {
			t.Fatalf("opens %+v, want the researchers' at 5", got)
		}
	})
}

func relayFlow(src netip.Addr, port uint16, endMs int64) flow.Flow {
	f := smtpFlow(src, 0, endMs, flow.TCPSyn|flow.TCPAck|flow.TCPFin)
	f.DstAddr, f.DstPort, f.Packets, f.Bytes = mailRelay, port, 20, 6000
	return f
}

func relayConfig() Configuration {
	c := testConfig()
	c.RelayAbuse.Relays = []network.Prefix{network.MustParsePrefix(mailRelay.String())}
	return c
}

func TestRelayAbuse(t *testing.T) {
	t.Run("ceiling", func(t *testing.T) {
		r := &run{e: NewEngine(relayConfig())}
		for i := range 5 { // an ordinary user: a handful of mails
			r.feed(relayFlow(user, 587, at(float64(i))))
		}
		for i := range 120 { // the bot: 120 sessions in two minutes
			port := uint16(587)
			if i%2 == 1 {
				port = 465
			}
			r.feed(relayFlow(zombie, port, at(10+float64(i)/60)))
		}
		r.feed(relayFlow(zombie, 443, at(12))) // another port of the relay: not counted
		got := opens(r.all, alert.KindRelayAbuse)
		if len(got) != 1 || got[0].SubscriberIP != zombie.String() {
			t.Fatalf("opens %+v, want the bot's only", r.events)
		}
		a := got[0]
		rel := a.Evidence.Relay
		if a.Evidence.Trigger != TriggerMaxConnections || a.Flows != 100 || rel == nil || rel.Connections != 100 ||
			rel.Bytes != 600000 || !cmp.Equal(rel.Relays, []string{mailRelay.String()}) || !cmp.Equal(rel.Ports, []uint16{465, 587}) {
			t.Errorf("alert %+v relay %+v", a, rel)
		}
	})
	t.Run("a sampled flow stands for N connections", func(t *testing.T) {
		r := &run{e: NewEngine(relayConfig())}
		f := relayFlow(zombie, 587, at(0))
		f.SamplingRate = 64
		r.feed(f)
		if len(r.all) != 0 {
			t.Fatalf("64 connections opened: %+v", r.all)
		}
		f.EndMs = at(0.5)
		r.feed(f)
		got := opens(r.all, alert.KindRelayAbuse)
		if len(got) != 1 || got[0].Evidence.Relay.Connections != 128 || got[0].Evidence.Relay.Bytes != 2*64*6000 {
			t.Fatalf("opens %+v, want one at 128 connections", got)
		}
	})
	t.Run("baseline after warm-up, not before", func(t *testing.T) {
		cfg := relayConfig()
		cfg.RelayAbuse.BaselineWarmup = 30
		r := &run{e: NewEngine(cfg)}
		burst := func(src netip.Addr, from float64) {
			for i := range 50 { // under the ceiling of 100
				r.feed(relayFlow(src, 587, at(from+float64(i)/50)))
			}
		}
		// zombie: two mails a minute for 40 minutes, then a burst of 50.
		for m := range 40 {
			r.feed(relayFlow(zombie, 587, at(float64(m))))
			r.feed(relayFlow(zombie, 587, at(float64(m)+0.5)))
		}
		burst(zombie, 40)
		// user: first use of the relay is the burst: no baseline yet.
		burst(user, 40)
		got := opens(r.all, alert.KindRelayAbuse)
		if len(got) != 1 || got[0].SubscriberIP != zombie.String() || got[0].Evidence.Trigger != TriggerBaseline {
			t.Fatalf("opens %+v, want the zombie's by baseline_departure", r.events)
		}
		rel := got[0].Evidence.Relay
		if rel.BaselineSteps < 30 || rel.BaselineConnections < 15 || rel.BaselineConnections > 25 {
			t.Errorf("baseline %+v, want about 20 connections per 10-minute window after 40 steps", rel)
		}
	})
	t.Run("groups and allow list", func(t *testing.T) {
		cfg := relayConfig()
		cfg.AllowList = []network.Prefix{network.MustParsePrefix(relay.String())}
		cfg.Groups = []GroupConfiguration{{Name: "bulk", Networks: []network.Prefix{network.MustParsePrefix(zombie.String())},
			RelayAbuse: Set(func(c *RelayAbuseConfiguration) { c.MaxConnections = 1000 })}}
		r := &run{e: NewEngine(cfg)}
		for i := range 200 {
			r.feed(relayFlow(zombie, 587, at(float64(i)/100)))
			r.feed(relayFlow(relay, 587, at(float64(i)/100)))
		}
		if n := len(opens(r.all, alert.KindRelayAbuse)); n != 0 {
			t.Errorf("%d opens for a group with its own ceiling and an allow-listed host", n)
		}
	})
	t.Run("cooldown", func(t *testing.T) {
		r := &run{e: NewEngine(relayConfig())}
		for i := range 100 {
			r.feed(relayFlow(zombie, 587, at(float64(i)/100)))
		}
		r.advance(at(30))
		if diff := cmp.Diff([]string{"open", "resolved"}, states(r.all, alert.KindRelayAbuse)); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})
}

// floodFlow is traffic to one target; ICMP is echo requests.
func floodFlow(src netip.Addr, proto uint8, startMs, endMs int64, packets uint64) flow.Flow {
	f := flow.Flow{StartMs: startMs, EndMs: endMs, Exporter: routerA, SrcAddr: src, DstAddr: dst(7), SrcPort: 40000,
		DstPort: 80, Proto: proto, Packets: packets, Bytes: packets * 100}
	if proto == network.ProtoICMP {
		f.SrcPort, f.DstPort = 0, 8<<8
	}
	return f
}

func TestOutboundFlood(t *testing.T) {
	cfg := testConfig()
	t.Run("a flood past the ceiling for a minute", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		// 30,000 UDP packets per second, reported in one-second flows.
		for s := range 90 {
			r.feed(floodFlow(zombie, 17, at(float64(s)/60), at(float64(s+1)/60), 30_000))
		}
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 {
			t.Fatalf("opens %+v, want one", r.events)
		}
		a := got[0]
		fl := a.Evidence.Flood
		if a.Evidence.Trigger != TriggerMaxPPS || fl.Target != dst(7).String() || fl.Protocol != "udp" || fl.Traffic != "udp" ||
			fl.PPS < 29_000 || fl.PPS > 31_000 || fl.Seconds < 60 || !cmp.Equal(fl.Ports, []uint16{80}) {
			t.Errorf("alert %+v flood %+v", a, fl)
		}
		// It opened once the traffic had lasted a minute, not before.
		if open := a.LastSeen.UnixMilli(); open < at(1) || open > at(1.05) {
			t.Errorf("opened at %v, want one minute in", a.LastSeen)
		}
	})
	t.Run("one long flow", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		r.feed(floodFlow(zombie, 1, at(0), at(3), 3*60*25_000)) // ICMP, 25k pps for 3 minutes
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].Evidence.Flood.Protocol != "icmp" || got[0].FirstSeen.UnixMilli() != at(0) {
			t.Fatalf("opens %+v", got)
		}
	})
	t.Run("a burst is not an attack", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		for s := range 10 { // ten seconds at 100k pps, then quiet
			r.feed(floodFlow(zombie, 17, at(float64(s)/60), at(float64(s+1)/60), 100_000))
		}
		r.feed(floodFlow(zombie, 17, at(1.5), at(1.5), 1))
		if n := len(opens(r.all, alert.KindOutboundFlood)); n != 0 {
			t.Errorf("%d opens for a ten-second burst", n)
		}
	})
	t.Run("DNS all day, a backup, flows per minute", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		// A busy resolver client: 50 queries a second, each its own flow,
		// for six hours.
		for s := range 6 * 3600 {
			f := floodFlow(user, 17, at(float64(s)/60), at(float64(s)/60)+20, 50)
			for q := range 50 {
				g := f
				g.Packets, g.Bytes, g.SrcPort = 1, 70, uint16(1024+q)
				g.DstPort = 53
				r.feed(g)
			}
		}
		// A backup: TCP with ACKs at 80,000 packets a second for an hour.
		for s := range 3600 {
			f := floodFlow(relay, flow.ProtoTCP, at(float64(s)/60), at(float64(s+1)/60), 80_000)
			f.TCPFlags = flow.TCPAck | 0x08
			f.Bytes = 80_000 * 1500
			r.feed(f)
		}
		if n := len(opens(r.all, alert.KindOutboundFlood)); n != 0 {
			t.Fatalf("%d opens for DNS at 3,000 flows a minute and an established TCP backup: %+v", n, r.events)
		}
		// A SYN flood with random source ports: 200 new flows a second.
		for s := range 70 {
			for i := range 200 {
				f := floodFlow(zombie, flow.ProtoTCP, at(360+float64(s)/60)+int64(i*5), at(360+float64(s)/60)+int64(i*5), 1)
				f.TCPFlags, f.SrcPort = flow.TCPSyn, uint16(i)
				r.feed(f)
			}
		}
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].SubscriberIP != zombie.String() || got[0].Evidence.Trigger != "max_syn_pps" ||
			got[0].Evidence.Flood.Traffic != "tcp_syn" || got[0].Evidence.Flood.FlowsPerMinute < 6000 {
			t.Fatalf("opens %+v, want the SYN flood by max_syn_pps", got)
		}
	})
	t.Run("established TCP counts in a group that asks", func(t *testing.T) {
		c := testConfig()
		c.Groups = []GroupConfiguration{{Name: "strict", Networks: []network.Prefix{network.MustParsePrefix(relay.String())},
			OutboundFlood: Set(func(o *OutboundFloodConfiguration) { o.EstablishedTCP = true })}}
		r := &run{e: NewEngine(c)}
		for s := range 70 {
			f := floodFlow(relay, flow.ProtoTCP, at(float64(s)/60), at(float64(s+1)/60), 80_000)
			f.TCPFlags = flow.TCPAck
			r.feed(f)
		}
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].Evidence.Group != "strict" || got[0].Evidence.Flood.Traffic != "tcp" {
			t.Fatalf("opens %+v", got)
		}
	})
	t.Run("sampling scales packets, bytes and flows", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		for s := range 70 { // 250 sampled packets a second at 1:100
			f := floodFlow(zombie, 17, at(float64(s)/60), at(float64(s+1)/60), 250)
			f.SamplingRate = 100
			r.feed(f)
		}
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].Evidence.Flood.PPS < 24_000 || got[0].Evidence.SamplingRate != 100 {
			t.Fatalf("opens %+v, want one at 25,000 pps", got)
		}
	})
	t.Run("baseline after warm-up, not before", func(t *testing.T) {
		c := testConfig()
		c.OutboundFlood.BaselineWarmup = 20
		// Ceilings per kind out of the way: the baseline is what is tested.
		c.OutboundFlood.MaxUDPPPS = 10_000
		r := &run{e: NewEngine(c)}
		// A game: 200 UDP packets a second to one server for 30 minutes.
		for s := range 30 * 60 {
			r.feed(floodFlow(zombie, 17, at(float64(s)/60), at(float64(s+1)/60), 200))
		}
		// Then 5,000 pps (a quarter of the ceiling) at another target:
		// 25 times the usual, so the baseline opens.
		flood := func(src netip.Addr, from float64) {
			for s := range 80 {
				f := floodFlow(src, 17, at(from+float64(s)/60), at(from+float64(s+1)/60), 5_000)
				f.DstAddr = dst(9)
				r.feed(f)
			}
		}
		flood(zombie, 30)
		flood(user, 30) // the same from a subscriber with no baseline
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].SubscriberIP != zombie.String() || got[0].Evidence.Trigger != TriggerBaseline {
			t.Fatalf("opens %+v, want the zombie's by baseline_departure", r.events)
		}
		if fl := got[0].Evidence.Flood; fl.BaselinePPS < 190 || fl.BaselinePPS > 210 || fl.BaselineSteps < 20 {
			t.Errorf("baseline %+v, want about 200 pps", fl)
		}
	})
	t.Run("cooldown", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		for s := range 70 {
			r.feed(floodFlow(zombie, 17, at(float64(s)/60), at(float64(s+1)/60), 30_000))
		}
		r.advance(at(20))
		if diff := cmp.Diff([]string{"open", "resolved"}, states(r.all, alert.KindOutboundFlood)); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})
}

// TestQuietSubscriberState: a subscriber that browses and asks its
// resolver keeps no state beyond the inline records, whatever rules are
// on; one past the flood gate or at a relay does.
func TestQuietSubscriberState(t *testing.T) {
	cfg := darkConfig()
	cfg.RelayAbuse.Relays = []network.Prefix{network.MustParsePrefix(mailRelay.String())}
	e := NewEngine(cfg)
	for i := range 20 {
		f := floodFlow(user, 17, at(float64(i)/20), at(float64(i)/20), 2)
		f.DstPort = 53
		e.Process(&f)
		g := floodFlow(user, flow.ProtoTCP, at(float64(i)/20), at(float64(i)/20), 12)
		g.TCPFlags, g.DstPort = flow.TCPSyn|flow.TCPAck, 443
		e.Process(&g)
	}
	if s := e.lookup(user); s == nil || s.more != nil {
		t.Fatalf("quiet subscriber: %+v, want state without rule states", s)
	}
	f := relayFlow(user, 587, at(2))
	e.Process(&f)
	if s := e.lookup(user); s.more == nil || s.more.state[kindRelay] == nil || s.more.state[kindFlood] != nil {
		t.Errorf("after a relay connection: %+v", s.more)
	}
}
