package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBackoff(t *testing.T) {
	cases := []struct {
		name string
		b    Backoff
		want []time.Duration
	}{
		{"doubles to the cap", Backoff{Min: 100 * time.Millisecond, Max: time.Second},
			[]time.Duration{100e6, 200e6, 400e6, 800e6, 1e9, 1e9}},
		{"fixed", Backoff{Min: time.Second, Max: time.Second}, []time.Duration{1e9, 1e9, 1e9}},
		// A cap below the floor bounds the later waits only, as the
		// sink's retry_max_backoff always did.
		{"cap below the floor", Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Millisecond},
			[]time.Duration{100e6, 10e6, 10e6}},
		{"zero", Backoff{}, []time.Duration{0, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []time.Duration
			for range tc.want {
				got = append(got, tc.b.Next())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			tc.b.Reset()
			if w := tc.b.Next(); w != tc.want[0] {
				t.Errorf("after Reset: %s, want %s", w, tc.want[0])
			}
		})
	}
}

func TestBackoffJitter(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 4 * time.Second, Jitter: true}
	for i, step := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if w := b.Next(); w < step/2 || w > step {
			t.Errorf("wait %d = %s, want within [%s, %s]", i, w, step/2, step)
		}
	}
}

func TestDo(t *testing.T) {
	fail := errors.New("away")
	closed := errors.New("closed")
	t.Run("until success", func(t *testing.T) {
		n := 0
		var waits []time.Duration
		err := Do(context.Background(), Backoff{Min: time.Millisecond, Max: 2 * time.Millisecond}, func(context.Context) error {
			if n++; n < 4 {
				return fail
			}
			return nil
		}, func(err error, wait time.Duration) {
			if err != fail {
				t.Errorf("onError got %v", err)
			}
			waits = append(waits, wait)
		})
		if err != nil || n != 4 {
			t.Errorf("Do = %v after %d calls, want nil after 4", err, n)
		}
		if diff := cmp.Diff([]time.Duration{1e6, 2e6, 2e6}, waits); diff != "" {
			t.Errorf("waits (-want +got):\n%s", diff)
		}
	})
	t.Run("permanent", func(t *testing.T) {
		n := 0
		err := Do(context.Background(), Backoff{Min: time.Millisecond}, func(context.Context) error {
			n++
			return Permanent(closed)
		}, func(error, time.Duration) { t.Error("onError called for a permanent error") })
		if err != closed || n != 1 {
			t.Errorf("Do = %v after %d calls, want %v after 1", err, n, closed)
		}
	})
	t.Run("context ends while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		start := time.Now()
		err := Do(ctx, Backoff{Min: time.Hour, Max: time.Hour}, func(context.Context) error {
			n++
			return fail
		}, func(error, time.Duration) { cancel() })
		if err != fail || n != 1 || time.Since(start) > time.Minute {
			t.Errorf("Do = %v after %d calls, want %v after 1 without waiting", err, n, fail)
		}
	})
	t.Run("ended context: one call, no onError", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		n := 0
		err := Do(ctx, Backoff{Min: time.Millisecond}, func(context.Context) error {
			n++
			return fail
		}, func(error, time.Duration) { t.Error("onError called after the context ended") })
		if err != fail || n != 1 {
			t.Errorf("Do = %v after %d calls, want %v after 1", err, n, fail)
		}
	})
}
