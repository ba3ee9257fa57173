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
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wormsign/wormsign/bus"
)

// sliceClaim hands out msgs, a few per fetch, then reports the end of the
// topic; it records every Commit.
type sliceClaim struct {
	partition int
	// endless claims wait for more instead of ending the topic.
	endless   bool
	mu        sync.Mutex
	msgs      []bus.Message
	commits   [][]int64
	commitErr error
}

func (c *sliceClaim) Partition() int    { return c.partition }
func (c *sliceClaim) Generation() int32 { return 1 }
func (c *sliceClaim) ReadBack(context.Context, time.Time, func(bus.Message) error) error {
	return nil
}

func (c *sliceClaim) Fetch(context.Context) (bus.Message, error) {
	panic("the sink reads whole fetches")
}

func (c *sliceClaim) FetchBatch(_ context.Context, dst []bus.Message) ([]bus.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 && c.endless {
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		c.mu.Lock()
		return dst, nil
	}
	if len(c.msgs) == 0 {
		return dst, bus.ErrClosed
	}
	n := min(2, len(c.msgs))
	dst = append(dst, c.msgs[:n]...)
	c.msgs = c.msgs[n:]
	return dst, nil
}

func (c *sliceClaim) Commit(_ context.Context, msgs ...bus.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.commitErr != nil {
		return c.commitErr
	}
	var offsets []int64
	for _, m := range msgs {
		offsets = append(offsets, m.Offset)
	}
	c.commits = append(c.commits, offsets)
	return nil
}

func (c *sliceClaim) committed() [][]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]int64(nil), c.commits...)
}

// sliceGroup hands its claims out, each to its own handler, and returns
// once every handler has.
type sliceGroup struct{ claims []bus.Claim }

func (g sliceGroup) Consume(ctx context.Context, handle func(context.Context, bus.Claim)) error {
	var wg sync.WaitGroup
	for _, c := range g.claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(ctx, c)
		}()
	}
	wg.Wait()
	return nil
}

func (sliceGroup) Close() error { return nil }

// revokingGroup hands out a kept claim and one that a rebalance takes
// away when revoke is closed; it records what that one had committed when
// its handler returned.
type revokingGroup struct {
	kept, revoked *sliceClaim
	revoke        chan struct{}
	returned      chan [][]int64
}

func (g revokingGroup) Consume(ctx context.Context, handle func(context.Context, bus.Claim)) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		handle(ctx, g.kept)
	}()
	go func() {
		defer wg.Done()
		claimCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			<-g.revoke
			cancel()
		}()
		handle(claimCtx, g.revoked)
		g.returned <- g.revoked.committed()
	}()
	wg.Wait()
	return nil
}

func (revokingGroup) Close() error { return nil }

func newRevokingGroup() revokingGroup {
	g := revokingGroup{kept: &sliceClaim{partition: 0}, revoked: &sliceClaim{partition: 1, endless: true},
		revoke: make(chan struct{}), returned: make(chan [][]int64, 1)}
	for i := range 4 {
		g.kept.msgs = append(g.kept.msgs, bus.Message{Partition: 0, Offset: int64(i)})
	}
	g.revoked.msgs = []bus.Message{{Partition: 1, Offset: 10}, {Partition: 1, Offset: 11}}
	return g
}

// testPipeline's groups stand for Kafka's: what a revoked partition lets go
// is re-read by its next owner.
func testPipeline(group bus.GroupConsumer, write func(context.Context, []bus.Message, attempt) error, drain time.Duration) *pipeline {
	return &pipeline{name: "t", group: group, write: write, maxMessages: 100, maxBytes: 1 << 20,
		interval: 20 * time.Millisecond, workers: 2, maxBackoff: 10 * time.Millisecond, drain: drain, durable: true,
		logger: slog.New(slog.DiscardHandler), metrics: newMetrics(prometheus.NewRegistry())}
}

func holds(msgs []bus.Message, partition int) bool {
	for _, m := range msgs {
		if m.Partition == partition {
			return true
		}
	}
	return false
}

// A partition taken away by a rebalance waits until what it handed over
// is written and committed through its generation before it lets go, so
// that its next owner starts after it.
func TestPipelineRevokedClaimCommitsBeforeLeaving(t *testing.T) {
	g := newRevokingGroup()
	release := make(chan struct{})
	writing := make(chan struct{}, 1)
	write := func(ctx context.Context, msgs []bus.Message, _ attempt) error {
		if holds(msgs, 1) {
			select {
			case writing <- struct{}{}:
			default:
			}
			<-release
		}
		return nil
	}
	p := testPipeline(g, write, time.Minute)
	done := make(chan struct{})
	go func() {
		p.run(context.Background())
		close(done)
	}()
	<-writing
	close(g.revoke)
	select {
	case got := <-g.returned:
		t.Fatalf("the revoked partition let go while its batch was being written (committed %v)", got)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case got := <-g.returned:
		if diff := cmp.Diff([][]int64{{11}}, got); diff != "" {
			t.Errorf("commits of the revoked partition when it let go (-want +got):\n%s", diff)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the revoked partition did not let go after its batch was written")
	}
	<-done
	if got := g.kept.committed(); len(got) == 0 || got[len(got)-1][0] != 3 {
		t.Errorf("kept partition's commits %v, want the last at offset 3", got)
	}
}

// A revoked partition whose commit cannot go through (its generation is
// over) lets go after the hand-over bound; the commit is abandoned, counted,
// and the other partitions' commits go on.
func TestPipelineAbandonsCommitOfRevokedClaim(t *testing.T) {
	g := newRevokingGroup()
	g.revoked.commitErr = errors.New("generation is over")
	var revokeOnce sync.Once
	write := func(ctx context.Context, msgs []bus.Message, _ attempt) error {
		if holds(msgs, 1) {
			revokeOnce.Do(func() { close(g.revoke) })
		}
		return nil
	}
	p := testPipeline(g, write, 300*time.Millisecond)
	done := make(chan struct{})
	go func() {
		p.run(context.Background())
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the pipeline did not end")
	}
	if got := <-g.returned; len(got) != 0 {
		t.Errorf("revoked partition committed %v", got)
	}
	if got := g.kept.committed(); len(got) == 0 || got[len(got)-1][0] != 3 {
		t.Errorf("kept partition's commits %v, want the last at offset 3", got)
	}
	if got := testutil.ToFloat64(p.metrics.abandoned.WithLabelValues("t")); got != 2 {
		t.Errorf("abandoned messages %v, want 2", got)
	}
}

// Workers finish out of order; offsets are committed in order, each batch
// only once it and those before it are written, and a failing batch is
// retried until it is.
func TestPipelineCommitsInOrder(t *testing.T) {
	claim := &sliceClaim{}
	for i := range 9 {
		claim.msgs = append(claim.msgs, bus.Message{Offset: int64(i)})
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
	p := &pipeline{name: "t", group: sliceGroup{[]bus.Claim{claim}}, write: write, maxMessages: 3, maxBytes: 1 << 20,
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
	if got := claim.committed(); len(got) != 0 {
		t.Fatalf("committed %v while the first batch was not written", got)
	}
	close(release)
	<-done
	// A commit names the last message of the batch's part of the
	// partition: Kafka's offset covers everything before it.
	want := [][]int64{{2}, {5}, {8}}
	if diff := cmp.Diff(want, claim.committed()); diff != "" {
		t.Errorf("commits (-want +got):\n%s", diff)
	}
}
