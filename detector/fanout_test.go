package detector

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func dst(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }

type contact struct {
	dst    int
	minute int64
	failed bool
}

type counts struct{ Distinct, Flows, Failed uint64 }

func TestFanoutWindow(t *testing.T) {
	cases := []struct {
		name     string
		contacts []contact
		minutes  int // window asked for
		want     counts
		tooOld   int // contacts add() refused
	}{
		{
			name:     "distinct within one bucket",
			contacts: []contact{{1, 100, false}, {2, 100, true}, {1, 100, false}},
			minutes:  5,
			want:     counts{2, 3, 1},
		},
		{
			name:     "same destination in several minutes counts once",
			contacts: []contact{{1, 100, false}, {1, 101, false}, {1, 104, false}},
			minutes:  5,
			want:     counts{1, 3, 0},
		},
		{
			name: "slides: minute 100 leaves the 5-minute window at 105",
			contacts: []contact{{1, 100, false}, {2, 100, false}, {3, 104, false},
				{4, 105, false}},
			minutes: 5,
			want:    counts{2, 2, 0},
		},
		{
			name: "a destination seen again later stays in the window",
			contacts: []contact{{1, 100, false}, {2, 100, false}, {1, 103, false},
				{3, 105, false}},
			minutes: 5,
			want:    counts{2, 2, 0},
		},
		{
			name: "out of order: an older minute fills its own bucket",
			contacts: []contact{{1, 104, false}, {2, 102, true}, {3, 101, false},
				{4, 100, false}},
			minutes: 5,
			want:    counts{4, 4, 1},
		},
		{
			name:     "out of order: older contact of a known destination changes nothing but flows",
			contacts: []contact{{1, 104, false}, {1, 102, false}},
			minutes:  5,
			want:     counts{1, 2, 0},
		},
		{
			name:     "older than the longest window is refused",
			contacts: []contact{{1, 200, false}, {2, 200 - 60, false}, {3, 200 - 59, false}},
			minutes:  60,
			want:     counts{2, 2, 0},
			tooOld:   1,
		},
		{
			name:     "long window sees what the short one forgot",
			contacts: []contact{{1, 100, false}, {2, 120, false}, {3, 150, false}},
			minutes:  60,
			want:     counts{3, 3, 0},
		},
		{
			name:     "short window of the same state",
			contacts: []contact{{1, 100, false}, {2, 120, false}, {3, 150, false}},
			minutes:  5,
			want:     counts{1, 1, 0},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFanout(60)
			refused := 0
			for _, c := range tc.contacts {
				if !f.add(dst(c.dst), c.minute, c.failed, 1, 1000, 3) {
					refused++
				}
			}
			d, fl, fa := f.window(tc.minutes)
			if diff := cmp.Diff(tc.want, counts{d, fl, fa}); diff != "" {
				t.Errorf("window(%d) (-want +got):\n%s", tc.minutes, diff)
			}
			if refused != tc.tooOld {
				t.Errorf("refused %d contacts, want %d", refused, tc.tooOld)
			}
		})
	}
}

// TestFanoutMatchesBruteForce checks the bucket arithmetic against a
// recount from scratch over a long pseudo-random, partly out-of-order run.
func TestFanoutMatchesBruteForce(t *testing.T) {
	f := newFanout(60)
	type ev struct {
		dst    int
		minute int64
	}
	var seen []ev
	latest := int64(0)
	x := uint32(1)
	for i := 0; i < 20000; i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		minute := 1000 + int64(i/100) - int64(x%4) // up to 3 minutes late
		d := int(x>>8) % 700
		if !f.add(dst(d), minute, false, 1, 1<<20, 0) {
			continue
		}
		seen = append(seen, ev{d, minute})
		latest = max(latest, minute)
		if i%997 != 0 {
			continue
		}
		for _, w := range []int{1, 5, 60} {
			want := map[int]bool{}
			for _, e := range seen {
				if e.minute > latest-int64(w) {
					want[e.dst] = true
				}
			}
			got, _, _ := f.window(w)
			if got != uint64(len(want)) {
				t.Fatalf("step %d window %d: distinct %d, want %d", i, w, got, len(want))
			}
		}
	}
}

func TestFanoutSampleAndCap(t *testing.T) {
	f := newFanout(5)
	for i := 0; i < 10; i++ {
		f.add(dst(i), 7, false, 1, 1000, 3)
	}
	got := fmt.Sprint(f.sample)
	if want := fmt.Sprint([]netip.Addr{dst(0), dst(1), dst(2)}); got != want {
		t.Errorf("sample %s, want first three %s", got, want)
	}
	// Sampled at 1:100: flow counts are scaled, distinct counts are not.
	g := newFanout(5)
	g.add(dst(1), 7, true, 100, 1000, 3)
	g.add(dst(1), 7, false, 100, 1000, 3)
	if d, fl, fa := g.window(5); d != 1 || fl != 200 || fa != 100 {
		t.Errorf("sampled: distinct %d flows %d failed %d, want 1 200 100", d, fl, fa)
	}
}

// add is addFirst for tests that only check that the flow counted.
func (f *fanout) add(dst netip.Addr, minute int64, failed bool, scale uint64, maxDsts, sampleSize int) (ok bool) {
	_, ok = f.addFirst(dst, minute, failed, scale, maxDsts, sampleSize)
	return ok
}
