package sink

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
)

// sliceConsumer hands out msgs, then reports the end of the topic; it
// records every Commit.
type sliceConsumer struct {
	mu      sync.Mutex
	msgs    []bus.Message
	commits [][]int64
}

func (c *sliceConsumer) Fetch(ctx context.Context) (bus.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 {
		return bus.Message{}, bus.ErrClosed
	}
	m := c.msgs[0]
	c.msgs = c.msgs[1:]
	return m, nil
}

func (c *sliceConsumer) Commit(_ context.Context, msgs ...bus.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var offsets []int64
	for _, m := range msgs {
		offsets = append(offsets, m.Offset)
	}
	c.commits = append(c.commits, offsets)
	return nil
}

func (c *sliceConsumer) Close() error { return nil }

func (c *sliceConsumer) committed() [][]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]int64(nil), c.commits...)
}

// Workers finish out of order; offsets are committed in order, each batch
// only once it and those before it are written, and a failing batch is
// retried until it is.
func TestPipelineCommitsInOrder(t *testing.T) {
	consumer := &sliceConsumer{}
	for i := range 9 {
		consumer.msgs = append(consumer.msgs, bus.Message{Offset: int64(i)})
	}
	release := make(chan struct{})
	var mu sync.Mutex
	tries := map[int64]int{}
	write := func(ctx context.Context, msgs []bus.Message, try attempt) error {
		first := msgs[0].Offset
		mu.Lock()
		tries[first]++
		mu.Unlock()
		switch first {
		case 0: // slow: the other workers finish first
			<-release
		case 3: // fails twice, then works
			if try.n < 2 {
				return errors.New("server away")
			}
		}
		return nil
	}
	p := &pipeline{name: "t", consumer: consumer, write: write, maxMessages: 3, maxBytes: 1 << 20,
		interval: time.Hour, workers: 3, maxBackoff: 10 * time.Millisecond, drain: time.Minute,
		logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())}
	done := make(chan struct{})
	go func() {
		p.run(context.Background())
		close(done)
	}()
	// Batches 2 and 3 are written, batch 1 is not: nothing may be
	// committed yet.
	waitFor(t, "the later batches", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return tries[3] == 3 && tries[6] == 1
	})
	time.Sleep(50 * time.Millisecond)
	if got := consumer.committed(); len(got) != 0 {
		t.Fatalf("committed %v while the first batch was not written", got)
	}
	close(release)
	<-done
	want := [][]int64{{0, 1, 2}, {3, 4, 5}, {6, 7, 8}}
	if diff := cmp.Diff(want, consumer.committed()); diff != "" {
		t.Errorf("commits (-want +got):\n%s", diff)
	}
}
