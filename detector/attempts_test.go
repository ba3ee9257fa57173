package detector

import (
	"math"
	"net/netip"
	"testing"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// reversed is the flow f as the subscriber received it: from f's
// destination to f's source.
func reversed(f flow.Flow, flags uint8) flow.Flow {
	f.SrcAddr, f.DstAddr, f.SrcPort, f.DstPort, f.TCPFlags = f.DstAddr, f.SrcAddr, f.DstPort, f.SrcPort, flags
	return f
}

func (r *run) receive(f flow.Flow) { r.e.Receive(&f) }

// kinds lists the kinds of the alerts.
func kindsOf(as []alert.Alert) map[string]int {
	out := map[string]int{}
	for _, a := range as {
		out[a.SubscriberIP+" "+a.Kind+" "+a.State]++
	}
	return out
}

// TestAnswersNeverOpen replays at the engine what an outsider can make an
// innocent subscriber send, and, beside each, the subscriber's own
// traffic of the same shape, which must still be found.
func TestAnswersNeverOpen(t *testing.T) {
	cfg := darkConfig()
	cfg.SMTPFanout.Threshold = 25
	for _, tc := range []struct {
		name string
		// traffic feeds the subscriber's flows (inbound with r.receive).
		traffic func(r *run, src netip.Addr)
		kind    string
		found   bool
	}{
		{"RSTs to port 25 answering spoofed ACKs", func(r *run, src netip.Addr) {
			for i := range 40 {
				in := reversed(smtpFlow(src, i, at(float64(i)/60), 0), flow.TCPAck)
				in.SrcPort, in.DstPort = 25, 3000+uint16(i)
				r.receive(in)
				f := smtpFlow(src, i, at(float64(i)/60)+1, flow.TCPRst)
				f.SrcPort, f.Packets = 3000+uint16(i), 1
				r.feed(f)
			}
		}, alert.KindSMTPFanout, false},
		{"SYN-ACKs to port 25 from an open port answering spoofed SYNs", func(r *run, src netip.Addr) {
			for i := range 40 {
				f := smtpFlow(src, i, at(float64(i)/60)+1, flow.TCPSyn|flow.TCPAck)
				f.SrcPort, f.Packets = 8080, 5 // the SYN-ACK and its retransmissions
				r.receive(reversed(f, flow.TCPSyn))
				r.feed(f)
			}
		}, alert.KindSMTPFanout, false},
		{"the same SYN-ACKs, nothing received: a client on a high port", func(r *run, src netip.Addr) {
			for i := range 40 {
				f := smtpFlow(src, i, at(float64(i)/60)+1, flow.TCPSyn|flow.TCPAck)
				f.SrcPort = 8080
				r.feed(f)
			}
		}, alert.KindSMTPFanout, true},
		{"a zombie: SYNs to port 25", func(r *run, src netip.Addr) {
			for i := range 40 {
				r.feed(smtpFlow(src, i, at(float64(i)/60), flow.TCPSyn))
			}
		}, alert.KindSMTPFanout, true},
		{"echo replies and RST-ACKs to dark space", func(r *run, src netip.Addr) {
			for i := range 6 {
				f := darkFlow(src, i, at(float64(i)/60))
				f.Proto, f.SrcPort, f.DstPort = network.ProtoICMP, 0, 0 // echo reply
				r.feed(f)
				g := darkFlow(src, 10+i, at(float64(i)/60))
				g.TCPFlags, g.SrcPort, g.DstPort = flow.TCPRst|flow.TCPAck, 23, 40000
				r.feed(g)
				h := darkFlow(src, 20+i, at(float64(i)/60))
				h.Proto, h.SrcPort, h.DstPort = network.ProtoICMP, 0, 3<<8|3 // port unreachable
				r.feed(h)
			}
		}, alert.KindDarknet, false},
		{"echo requests to dark space", func(r *run, src netip.Addr) {
			for i := range 6 {
				f := darkFlow(src, i, at(float64(i)/60))
				f.Proto, f.SrcPort, f.DstPort = network.ProtoICMP, 0, 8<<8
				r.feed(f)
			}
		}, alert.KindDarknet, true},
		{"UDP answers to dark space from an open high port", func(r *run, src netip.Addr) {
			for i := range 6 {
				f := darkFlow(src, i, at(float64(i)/60))
				f.Proto, f.TCPFlags, f.SrcPort, f.DstPort = network.ProtoUDP, 0, 5353, 53
				r.receive(reversed(f, 0))
				r.feed(f)
			}
		}, alert.KindDarknet, false},
		{"UDP probes to dark space", func(r *run, src netip.Addr) {
			for i := range 6 {
				f := darkFlow(src, i, at(float64(i)/60))
				f.Proto, f.TCPFlags, f.SrcPort, f.DstPort = network.ProtoUDP, 0, 5353, 53
				r.feed(f)
			}
		}, alert.KindDarknet, true},
		{"a worm's sweep answered by RSTs is found by its SYNs", func(r *run, src netip.Addr) {
			for i := range 300 {
				f := smtpFlow(src, i, at(float64(i)/300), flow.TCPSyn)
				f.DstPort = 445
				r.feed(f)
			}
		}, alert.KindDstEntropy, true},
		{"RSTs answering a spoofed sweep from 300 addresses", func(r *run, src netip.Addr) {
			for i := range 300 {
				f := smtpFlow(src, i, at(float64(i)/300), flow.TCPRst|flow.TCPAck)
				f.SrcPort, f.DstPort = 445, 40000
				r.feed(f)
			}
		}, alert.KindDstEntropy, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{e: NewEngine(cfg)}
			tc.traffic(r, user)
			r.advance(at(60))
			if got := len(opens(r.all, tc.kind)) > 0; got != tc.found {
				t.Errorf("%s opened: %v, want %v (alerts %v)", tc.kind, got, tc.found, kindsOf(r.all))
			}
			if !tc.found && len(r.all) > 0 {
				t.Errorf("answers raised alerts: %v", kindsOf(r.all))
			}
		})
	}
}

// TestFloodOfABot: a bot's share of a rented attack (a few hundred
// packets a second at one target for over a minute) is found for ICMP,
// UDP and SYNs; the same rates answered back at the same rate, or for
// under a minute, are not.
func TestFloodOfABot(t *testing.T) {
	cfg := testConfig()
	second := func(s int) (int64, int64) { return at(float64(s) / 60), at(float64(s+1) / 60) }
	for _, tc := range []struct {
		name    string
		traffic func(r *run)
		trigger string // "" = not flagged
	}{
		{"ICMP echo, 400 pps for 80 s, answered by echo replies", func(r *run) {
			for s := range 80 {
				from, to := second(s)
				f := floodFlow(zombie, network.ProtoICMP, from, to, 400)
				r.feed(f)
				reply := reversed(f, 0)
				reply.DstPort = 0 // echo reply
				r.receive(reply)
			}
		}, "max_icmp_pps"},
		{"UDP from one port, 300 pps for 80 s, unanswered", func(r *run) {
			for s := range 80 {
				from, to := second(s)
				r.feed(floodFlow(zombie, network.ProtoUDP, from, to, 300))
			}
		}, "max_udp_pps"},
		{"SYNs, 300 pps for 80 s, from new ports", func(r *run) {
			for s := range 80 {
				from, _ := second(s)
				for i := range 300 {
					f := floodFlow(zombie, flow.ProtoTCP, from+int64(i*3), from+int64(i*3), 1)
					f.TCPFlags, f.SrcPort = flow.TCPSyn, uint16(1024+i)
					r.feed(f)
				}
			}
		}, "max_syn_pps"},
		{"a UDP call, 300 pps each way for 10 minutes", func(r *run) {
			for s := range 600 {
				from, to := second(s)
				f := floodFlow(zombie, network.ProtoUDP, from, to, 300)
				f.SrcPort, f.DstPort = 50000, 3478
				back := reversed(f, 0)
				back.StartMs += 20 // the subscriber called
				// Who spoke first depends on the exporter's order: the
				// remote's datagrams arrive after the subscriber's here.
				r.feed(f)
				r.receive(back)
			}
		}, ""},
		{"a QUIC upload, 2000 pps with an ACK every 4 packets", func(r *run) {
			for s := range 300 {
				from, to := second(s)
				f := floodFlow(zombie, network.ProtoUDP, from, to, 2000)
				f.SrcPort, f.DstPort, f.Bytes = 50001, 443, 2000*1350
				r.feed(f)
				back := reversed(f, 0)
				back.Packets, back.Bytes = 500, 500*60
				r.receive(back)
			}
		}, ""},
		{"a bulk TCP upload, 8000 pps with its ACK stream", func(r *run) {
			for s := range 300 {
				from, to := second(s)
				f := floodFlow(zombie, flow.ProtoTCP, from, to, 8000)
				f.TCPFlags, f.Bytes = flow.TCPAck|0x08, 8000*1448
				if s == 0 {
					f.TCPFlags |= flow.TCPSyn
				}
				r.feed(f)
				r.receive(reversed(f, f.TCPFlags))
			}
		}, ""},
		{"ping at 1 pps all day", func(r *run) {
			for s := range 3600 {
				from, to := second(s)
				r.feed(floodFlow(zombie, network.ProtoICMP, from, to, 1))
			}
		}, ""},
		{"ICMP echo at 400 pps for 40 s", func(r *run) {
			for s := range 40 {
				from, to := second(s)
				r.feed(floodFlow(zombie, network.ProtoICMP, from, to, 400))
			}
			r.feed(floodFlow(zombie, network.ProtoICMP, at(1.5), at(1.5), 1))
		}, ""},
		{"echo replies at 400 pps answering a spoofed ping flood", func(r *run) {
			for s := range 120 {
				from, to := second(s)
				f := floodFlow(zombie, network.ProtoICMP, from, to, 400)
				f.DstPort = 0
				r.feed(f)
			}
		}, ""},
		{"UDP answers at 400 pps to a spoofed victim of a reflection", func(r *run) {
			for s := range 120 {
				from, to := second(s)
				f := floodFlow(zombie, network.ProtoUDP, from, to, 400)
				f.SrcPort, f.DstPort = 1900, 40000 // SSDP answering
				r.receive(reversed(f, 0))
				r.feed(f)
			}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{e: NewEngine(cfg)}
			tc.traffic(r)
			got := opens(r.all, alert.KindOutboundFlood)
			switch {
			case tc.trigger == "" && len(r.all) > 0:
				t.Errorf("flagged: %v", kindsOf(r.all))
			case tc.trigger != "" && (len(got) != 1 || got[0].Evidence.Trigger != tc.trigger):
				t.Errorf("opens %+v, want one by %s", got, tc.trigger)
			case tc.trigger != "":
				if fl := got[0].Evidence.Flood; fl.PPS < 250 || fl.Seconds < 60 {
					t.Errorf("flood evidence %+v", fl)
				}
			}
		})
	}
	t.Run("the answer ratio is in the evidence", func(t *testing.T) {
		r := &run{e: NewEngine(cfg)}
		for s := range 80 {
			from, to := second(s)
			f := floodFlow(zombie, network.ProtoUDP, from, to, 300)
			r.feed(f)
			back := reversed(f, 0)
			back.StartMs += 20
			back.Packets = 6 // 2 %: a target that now and then says something
			r.receive(back)
		}
		got := opens(r.all, alert.KindOutboundFlood)
		if len(got) != 1 || got[0].Evidence.Flood.AnswerRatio < 0.015 || got[0].Evidence.Flood.AnswerRatio > 0.025 {
			t.Fatalf("opens %+v, want one with an answer ratio of 0.02", got)
		}
	})
}

// TestSampledAttempts: a record sampled at 1:N stands for N attempts only
// when it is one; the middle of a sampled session is no connection.
func TestSampledAttempts(t *testing.T) {
	cfg := relayConfig()
	cfg.RelayAbuse.MaxConnections = 150
	r := &run{e: NewEngine(cfg)}
	// A long submission session sampled at 1:100: 300 records of its
	// middle, none with the SYN.
	for i := range 300 {
		f := relayFlow(user, 587, at(float64(i)/60))
		f.TCPFlags, f.SamplingRate, f.Packets = flow.TCPAck|0x08, 100, 1
		r.feed(f)
	}
	if len(r.all) != 0 {
		t.Fatalf("a sampled session counted as connections: %v", kindsOf(r.all))
	}
	// Two sampled SYNs at 1:100 stand for 200 connection attempts.
	for i := range 2 {
		f := relayFlow(zombie, 587, at(5+float64(i)/60))
		f.TCPFlags, f.SamplingRate, f.Packets = flow.TCPSyn, 100, 1
		r.feed(f)
	}
	got := opens(r.all, alert.KindRelayAbuse)
	if len(got) != 1 || got[0].Evidence.Relay.Connections != 200 {
		t.Fatalf("opens %+v, want one at 200 connections", got)
	}
}

// TestSampledCountsSaturate: an exporter's absurd count times its rate
// must not wrap around into a trickle.
func TestSampledCountsSaturate(t *testing.T) {
	r := &run{e: NewEngine(testConfig())}
	for s := range 70 {
		f := floodFlow(zombie, network.ProtoUDP, at(float64(s)/60), at(float64(s+1)/60), math.MaxUint64/3)
		f.Bytes, f.SamplingRate = math.MaxUint64/3, 1<<20
		r.feed(f)
	}
	got := opens(r.all, alert.KindOutboundFlood)
	if len(got) != 1 || got[0].Evidence.Trigger != TriggerMaxPPS || got[0].Evidence.Flood.Packets != math.MaxUint64 {
		t.Fatalf("opens %+v, want one by max_pps with saturated counts", got)
	}
}

// TestIPv6SubscriberIsAPrefix: a host that changes its privacy address
// within its /64 halfway through a scan is one subscriber with one
// incident, named by its prefix.
func TestIPv6SubscriberIsAPrefix(t *testing.T) {
	e := NewEngine(testConfig())
	e.SetSubscribers(network.NewSubscribers(nil))
	r := &run{e: e}
	for i := range 10 {
		src := netip.MustParseAddr("2001:db8:1:2::a")
		if i >= 5 {
			src = netip.MustParseAddr("2001:db8:1:2:dead:beef:0:1")
		}
		f := smtpFlow(src, 0, at(float64(i)/60), flow.TCPSyn)
		f.DstAddr = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 15: byte(i)})
		r.feed(f)
	}
	got := opens(r.all, alert.KindSMTPFanout)
	if len(got) != 1 || got[0].SubscriberIP != "2001:db8:1:2::/64" || got[0].DistinctDsts < 5 {
		t.Fatalf("opens %+v, want one for 2001:db8:1:2::/64", got)
	}
	if e.Subscribers() != 1 {
		t.Errorf("%d subscribers, want 1", e.Subscribers())
	}
}

// TestMaxSubscribers: a spoofed flood of sources cannot grow an engine
// past max_subscribers, and never pushes out a subscriber with an open
// incident.
func TestMaxSubscribers(t *testing.T) {
	cfg := testConfig()
	cfg.MaxSubscribers = 50
	e := NewEngine(cfg)
	r := &run{e: e}
	for i := range 10 {
		r.feed(smtpFlow(zombie, i, at(float64(i)/60), flow.TCPSyn))
	}
	if len(opens(r.all, alert.KindSMTPFanout)) != 1 {
		t.Fatalf("no incident for the zombie: %v", kindsOf(r.all))
	}
	for i := range 10_000 {
		f := smtpFlow(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 1, at(0.5), flow.TCPSyn)
		f.DstPort = 443
		r.feed(f)
		if e.Subscribers() > 50 {
			t.Fatalf("%d subscribers after %d sources, want at most 50", e.Subscribers(), i+1)
		}
	}
	if e.lookup(zombie) == nil || e.lookup(zombie).incidentOf(kindSMTP) == nil {
		t.Fatal("the zombie's incident was pushed out")
	}
	if s := e.Stats(); s.Displaced < 9_000 {
		t.Errorf("displaced %d, want most of the 10,000 sources", s.Displaced)
	}
	// The zombie's incident goes on under its id.
	r.feed(smtpFlow(zombie, 50, at(2), flow.TCPSyn))
	if n := len(opens(r.all, alert.KindSMTPFanout)); n != 1 {
		t.Errorf("%d opens, want the one incident", n)
	}
	// When every subscriber has an incident, newcomers are refused.
	full := NewEngine(cfg)
	full.budget = NewSubscriberBudget(1)
	for i := range 10 {
		f := smtpFlow(zombie, i, at(float64(i)/60), flow.TCPSyn)
		full.Process(&f)
	}
	f := smtpFlow(user, 1, at(0.5), flow.TCPSyn)
	full.Process(&f)
	if full.Subscribers() != 1 || full.Stats().Refused != 1 {
		t.Errorf("subscribers %d, refused %d, want 1 and 1", full.Subscribers(), full.Stats().Refused)
	}
}
