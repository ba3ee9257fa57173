// Package retry is the one backoff loop of wormsign: the stages retry a
// publish, an INSERT, an offset commit or a webhook delivery until it
// succeeds, waiting longer after each failure, and give up only when they
// are told to stop.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential wait: Min after the first failure, then twice
// the previous wait, up to Max. The zero value waits not at all; copy a
// Backoff literal per retried operation, its state is the current step.
type Backoff struct {
	Min, Max time.Duration
	// Jitter waits a random time between half the step and the step, so
	// that many clients of one recovering server do not retry in step.
	Jitter bool

	step time.Duration
}

// Next returns the wait before the next attempt and advances the step.
func (b *Backoff) Next() time.Duration {
	if b.step == 0 {
		b.step = b.Min
	}
	wait := b.step
	// The first wait is Min even where Max is smaller: a cap configured
	// below the call site's floor bounds the later waits only.
	b.step = min(2*b.step, b.Max)
	if b.Jitter {
		wait = wait/2 + rand.N(wait/2+1)
	}
	return wait
}

// Reset starts the next wait from Min again, after a success.
func (b *Backoff) Reset() { b.step = 0 }

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks an error that another attempt cannot fix (a closed
// bus): Do returns it at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// Do calls fn until it succeeds, returns a Permanent error or ctx ends.
// After each other failure it calls onError (when not nil) with the error
// and the coming wait, then waits; fn runs at least once, even on an ended
// ctx. Do returns nil on success, else the last error of fn (a Permanent
// one unwrapped); the caller tells a stop from ctx.Err().
func Do(ctx context.Context, b Backoff, fn func(ctx context.Context) error, onError func(err error, wait time.Duration)) error {
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil {
			return err
		}
		wait := b.Next()
		if onError != nil {
			onError(err, wait)
		}
		if !Sleep(ctx, wait) {
			return err
		}
	}
}

// Sleep waits d or until ctx ends, and reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
