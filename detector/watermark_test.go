package detector

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
)

// sourced is a flow and the publisher that wrote it.
type sourced struct {
	origin uint64
	f      flow.Flow
}

// reorderScenario builds three sources' flows, each in end-time order:
// zombies that send in bursts separated by more than the cool-down (so
// incidents resolve and reopen), a scanner on one port, and ordinary
// users. Sources are split by subscriber, as the collector's publishers
// split them.
func reorderScenario() [][]sourced {
	srcs := make([][]sourced, 3)
	rng := rand.New(rand.NewPCG(1, 2))
	add := func(sub netip.Addr, f flow.Flow) {
		o := uint64(sub.As4()[3] % 3)
		f.Exporter, f.TimeReceivedMs = routerA, f.EndMs+1000
		srcs[o] = append(srcs[o], sourced{o, f})
	}
	var all []flow.Flow
	for minute := 0; minute < 90; minute++ {
		for z := range 4 {
			zombie := netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + z)})
			// Bursts of ten minutes every half hour, shifted per zombie.
			if (minute+5*z)%30 < 10 {
				for i := range 8 {
					all = append(all, smtpFlow(zombie, minute*8+i, at(float64(minute)+float64(i)/8), flow.TCPSyn))
				}
			}
		}
		scanner := netip.AddrFrom4([4]byte{203, 0, 113, 50})
		if minute >= 20 && minute < 40 {
			for i := range 40 {
				f := smtpFlow(scanner, minute*40+i, at(float64(minute)+float64(i)/40), flow.TCPSyn)
				f.DstPort = 445
				all = append(all, f)
			}
		}
		// darknet, relay_abuse and outbound_flood, each in two bursts
		// further apart than their cool-downs.
		if burst := minute % 40; burst < 5 {
			dark := netip.AddrFrom4([4]byte{203, 0, 113, 60})
			for i := range 3 {
				all = append(all, darkFlow(dark, minute*3+i, at(float64(minute)+float64(i)/3)))
			}
			abuser := netip.AddrFrom4([4]byte{203, 0, 113, 61})
			for i := range 40 {
				all = append(all, relayFlow(abuser, 587, at(float64(minute)+float64(i)/40)))
			}
			flooder := netip.AddrFrom4([4]byte{203, 0, 113, 62})
			for s := range 60 {
				from := float64(minute) + float64(s)/60
				all = append(all, floodFlow(flooder, 17, at(from), at(from+1.0/60), 30_000))
			}
		}
		for u := range 6 {
			user := netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + u)})
			f := smtpFlow(user, rng.IntN(5), at(float64(minute)+rng.Float64()), flow.TCPSyn|flow.TCPAck)
			f.DstPort = 443
			all = append(all, f)
		}
	}
	slices.SortStableFunc(all, func(a, b flow.Flow) int { return int(a.EndMs - b.EndMs) })
	for _, f := range all {
		add(f.SrcAddr, f)
	}
	return srcs
}

// interleave merges the sources, each in its own order, with source lag
// held back by lagMs of event time, or at random when lagMs is negative.
func interleave(srcs [][]sourced, lag int, lagMs int64, seed uint64) []sourced {
	var out []sourced
	next := make([]int, len(srcs))
	rng := rand.New(rand.NewPCG(seed, 7))
	for {
		best := -1
		for i, s := range srcs {
			if next[i] == len(s) {
				continue
			}
			if lagMs < 0 {
				if best < 0 || rng.IntN(2) == 0 {
					best = i
				}
				continue
			}
			t := s[next[i]].f.EndMs
			if i == lag {
				t += lagMs
			}
			if best < 0 || t < srcs[best][next[best]].f.EndMs+map[bool]int64{true: lagMs}[best == lag] {
				best = i
			}
		}
		if best < 0 {
			return out
		}
		out = append(out, srcs[best][next[best]])
		next[best]++
	}
}

// perIncident runs the flows and returns each subscriber's and kind's
// alert events, in order, as text.
func perIncident(t *testing.T, cfg Configuration, flows []sourced) (map[string][]string, EngineStats) {
	t.Helper()
	e := NewEngine(cfg)
	out := map[string][]string{}
	rec := func(as []alert.Alert) {
		for _, a := range as {
			k := a.SubscriberIP + " " + a.Kind
			out[k] = append(out[k], fmt.Sprintf("%s %s %d %s", a.State, a.ID, a.DistinctDsts, a.WindowEnd.Format(time.TimeOnly)))
		}
	}
	for _, s := range flows {
		f := s.f
		rec(e.ProcessFrom(s.origin, 0, &f))
	}
	rec(e.Flush())
	return out, e.Stats()
}

// TestWatermarkSurvivesReordering: whatever the interleaving of the
// sources, and with one source held back by five minutes of event time,
// no flow is late and every incident gets the same events.
func TestWatermarkSurvivesReordering(t *testing.T) {
	cfg := testConfig()
	cfg.SMTPFanout.Cooldown = 5 * time.Minute
	cfg.DstEntropy.MinFlows = 20
	cfg.DstEntropy.WormMinDsts = 20
	cfg.Darknet.Networks = darkConfig().Darknet.Networks
	cfg.RelayAbuse.Relays = relayConfig().RelayAbuse.Relays
	srcs := reorderScenario()
	want, st := perIncident(t, cfg, interleave(srcs, 0, 0, 0))
	if st.LateFlows != 0 {
		t.Fatalf("in-order input: %d late flows", st.LateFlows)
	}
	var reopened int
	for k, evs := range want {
		if strings.Contains(k, "smtp_fanout") {
			reopened += strings.Count(strings.Join(evs, "\n"), "open ") - 1
		}
	}
	for _, k := range []string{"203.0.113.60 darknet", "203.0.113.61 relay_abuse", "203.0.113.62 outbound_flood"} {
		if n := strings.Count(strings.Join(want[k], "\n"), "open "); n < 2 {
			t.Fatalf("scenario too weak: %s opened %d times, want 2 or more: %v", k, n, want[k])
		}
	}
	if reopened < 4 || len(want) < 8 {
		t.Fatalf("scenario too weak: %d incidents, %d reopenings: %v", len(want), reopened, want)
	}
	for _, tc := range []struct {
		name  string
		lag   int
		lagMs int64
		seed  uint64
	}{
		{"source 1 held back 5 min", 1, 5 * 60000, 0},
		{"source 2 held back 5 min", 2, 5 * 60000, 0},
		{"random interleaving a", 0, -1, 1},
		{"random interleaving b", 0, -1, 2},
		{"random interleaving c", 0, -1, 3},
	} {
		got, st := perIncident(t, cfg, interleave(srcs, tc.lag, tc.lagMs, tc.seed))
		if st.LateFlows != 0 {
			t.Errorf("%s: %d late flows, want 0", tc.name, st.LateFlows)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: incidents differ from the in-order run (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestIdleSourceStopsHoldingBack: a source that stops sending holds the
// watermark back only for source_idle_timeout of wall clock; a source
// that keeps sending older flows holds it back as long as it sends.
func TestIdleSourceStopsHoldingBack(t *testing.T) {
	cfg := testConfig()
	cfg.SourceIdleTimeout = time.Minute
	e := NewEngine(cfg)
	feed := func(origin uint64, endMin, wallMin float64) {
		f := smtpFlow(user, 1, at(endMin), flow.TCPSyn|flow.TCPAck)
		f.TimeReceivedMs = at(wallMin)
		e.SetWallClock(at(wallMin))
		e.ProcessFrom(origin, 0, &f)
	}
	feed(1, 0, 0)
	feed(2, 0, 0)
	for m := 1.0; m <= 10; m++ {
		feed(1, m, m) // source 2 says nothing more
	}
	if got := (e.Watermark() - t0) / 60000; got != 10 {
		t.Errorf("watermark at %d min after source 2 went quiet for 10 min, want 10", got)
	}
	e = NewEngine(cfg)
	for m := 0.0; m <= 10; m++ {
		feed(2, m-5, m) // five minutes behind, but sending
		feed(1, m, m)
	}
	if got := (e.Watermark() - t0) / 60000; got != 5 {
		t.Errorf("watermark at %d min with a source five minutes behind, want 5", got)
	}
	if e.Stats().LateFlows != 0 {
		t.Errorf("%d late flows from the lagging source", e.Stats().LateFlows)
	}
	// A flow of a source that has caught up, older than the watermark
	// minus the allowed lateness, is late and counted for its exporter;
	// so is a new source's flow older than every window.
	f := smtpFlow(user, 1, at(-1), flow.TCPSyn)
	e.ProcessFrom(1, 0, &f)
	g := smtpFlow(user, 1, at(-100), flow.TCPSyn)
	g.Exporter = netip.MustParseAddr("192.0.2.9")
	e.ProcessFrom(3, 0, &g)
	want := map[netip.Addr]uint64{routerA: 1, g.Exporter: 1}
	if diff := cmp.Diff(want, e.LateByExporter(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("late flows by exporter (-want +got):\n%s", diff)
	}
}

// TestWatermarkFollowsSlowestWithoutRescan checks the watermark's fast
// path (observeSource follows the slowest source without scanning every
// source while it stays at or below the runner-up) against the
// definition, recomputed from every source after each flow: the least
// progress among sources that are neither idle nor broken, never going
// back. Four busy sources advance at random paces, the fourth slowest;
// two more speak rarely, fall idle and come back; the slowest's clock
// breaks (flows received hours after they end) for a while and mends. The
// wall clock moves in whole seconds, so that every move rescans. In one
// run the rare sources come back a little ahead of the slowest (their
// return must lower the minimum), in the other ahead of every source (so
// that the broken slowest must give way to the runner-up).
func TestWatermarkFollowsSlowestWithoutRescan(t *testing.T) {
	for _, returnAhead := range []bool{false, true} {
		t.Run(fmt.Sprintf("back_ahead_of_all=%v", returnAhead), func(t *testing.T) {
			watermarkAgainstDefinition(t, returnAhead)
		})
	}
}

func watermarkAgainstDefinition(t *testing.T, returnAhead bool) {
	cfg := testConfig()
	cfg.SourceIdleTimeout = 10 * time.Second
	e := NewEngine(cfg)
	rng := rand.New(rand.NewPCG(3, 4))
	const sources = 6
	end := [sources]int64{}
	for i := range end {
		end[i] = at(0) + int64(rng.IntN(60_000))
	}
	wall := at(0)
	e.SetWallClock(wall)
	var want int64
	fastPaths := 0
	for step := range 20_000 {
		if rng.IntN(50) == 0 {
			wall += 1000
			e.SetWallClock(wall)
		}
		o := rng.IntN(4)
		if rng.IntN(100) == 0 {
			o = 4 + rng.IntN(2)
		}
		switch {
		case o == 3:
			end[o] += int64(rng.IntN(500))
		case o >= 4 && returnAhead:
			end[o] = max(end[o], end[0], end[1], end[2]) + int64(rng.IntN(1500))
		case o >= 4:
			end[o] = max(end[o], end[3]) + int64(rng.IntN(1500))
		default:
			end[o] += int64(rng.IntN(1500))
		}
		f := smtpFlow(user, step, end[o], flow.TCPSyn|flow.TCPAck)
		f.TimeReceivedMs = end[o] + 500
		if o == 3 && step%4000 < 1000 {
			f.TimeReceivedMs = end[o] + e.keepMs + 3600*1000 // a broken clock, for a while
		}
		scansBefore, wmBefore := e.scannedAtMs, e.watermark
		e.ProcessFrom(uint64(o+1), 0, &f)
		if e.scannedAtMs == scansBefore && e.watermark != wmBefore {
			fastPaths++
		}
		least := int64(0)
		for _, s := range e.sources {
			if wall-s.lastWallMs > cfg.SourceIdleTimeout.Milliseconds() || s.lagMs > e.keepMs {
				continue
			}
			if least == 0 || s.progressMs < least {
				least = s.progressMs
			}
		}
		want = max(want, least)
		if e.watermark != want {
			t.Fatalf("step %d (source %d): watermark %d, want %d, the least progress of the sources that count", step, o+1, e.watermark-at(0), want-at(0))
		}
	}
	t.Logf("the watermark moved %d times without a scan of the sources", fastPaths)
	if fastPaths == 0 {
		t.Error("the fast path never ran: the test proves nothing")
	}
}
