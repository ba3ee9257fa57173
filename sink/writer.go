package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
)

// pipeline reads one topic into batches bounded by messages, bytes and
// time, writes them with several workers and commits their offsets in
// order, each only after its batch and every batch before it are written.
// A worker retries its batch with backoff until it is written; meanwhile
// the batcher stops taking batches when all workers are busy, so the
// fetcher stops reading: a down ClickHouse holds flows back in Kafka (or,
// with the in-process bus, blocks the collector, which counts drops at the
// UDP edge), never in an unbounded buffer here.
type pipeline struct {
	name     string
	consumer bus.Consumer
	// write writes a batch. A retry follows an error whose outcome is
	// unknown, and the writer must find what landed (see attempt).
	write       func(ctx context.Context, msgs []bus.Message, try attempt) error
	maxMessages int
	maxBytes    int
	interval    time.Duration
	workers     int
	maxBackoff  time.Duration
	drain       time.Duration
	logger      *slog.Logger
	metrics     *metrics
}

// attempt identifies one try at writing a batch.
type attempt struct {
	batch string    // random, names the batch's INSERTs on the server
	n     int       // 0 for the first try
	first time.Time // when the first try started
}

// queryID names the INSERT of this try in system.processes, so that a
// retry can wait for an INSERT the server still runs after the client gave
// up on it (a frozen server that comes back).
func (a attempt) queryID() string { return a.batch + "-" + strconv.Itoa(a.n) }

func newBatchID() string {
	var b [8]byte
	rand.Read(b[:])
	return "wormsign-sink-" + hex.EncodeToString(b[:])
}

type job struct {
	msgs    []bus.Message
	written chan struct{} // closed when the worker is done with the batch
	err     error         // set before written is closed when it gave up
}

func (p *pipeline) run(ctx context.Context) {
	// Writes and commits outlive ctx by the drain timeout so that Stop
	// writes what is in hand; after that they give up and, with Kafka,
	// the messages are re-delivered on the next start.
	writeCtx, cancelWrite := context.WithCancel(context.Background())
	defer cancelWrite()
	var drainOnce sync.Once
	startDrain := func() { drainOnce.Do(func() { time.AfterFunc(p.drain, cancelWrite) }) }
	stopWatch := context.AfterFunc(ctx, startDrain)
	defer stopWatch()

	// A short hand-over: what the pipeline holds while ClickHouse is down
	// is this, the batch being gathered and the workers' batches.
	messages := make(chan bus.Message, 64)
	go bus.Feed(ctx, p.consumer, fetchBackoff, fetchWarning(p.logger.With("topic", p.name)), messages)

	jobs := make(chan *job)               // unbuffered: a batch waits for a free worker
	order := make(chan *job, p.workers+1) // batches in offset order, for the committer
	var workers sync.WaitGroup
	for range p.workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobs {
				p.writeBatch(writeCtx, j)
			}
		}()
	}
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		p.commitInOrder(writeCtx, order)
	}()

	dispatch := func(msgs []bus.Message) {
		j := &job{msgs: msgs, written: make(chan struct{})}
		select {
		case order <- j:
		case <-writeCtx.Done():
			return
		}
		select {
		case jobs <- j:
		case <-writeCtx.Done():
			j.err = writeCtx.Err()
			close(j.written)
		}
	}

	var batch []bus.Message
	size := 0
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	for {
		select {
		case msg, ok := <-messages:
			if !ok {
				// Input ended (Stop or a closed topic): write what is in
				// hand, within the drain timeout.
				startDrain()
				if len(batch) > 0 {
					dispatch(batch)
				}
				close(jobs)
				close(order)
				workers.Wait()
				<-committed
				return
			}
			batch = append(batch, msg)
			size += len(msg.Value)
			if len(batch) >= p.maxMessages || size >= p.maxBytes {
				dispatch(batch)
				batch, size = nil, 0
			}
		case <-ticker.C:
			if len(batch) > 0 {
				dispatch(batch)
				batch, size = nil, 0
			}
		}
	}
}

// writeBatch writes j until it succeeds or ctx ends.
func (p *pipeline) writeBatch(ctx context.Context, j *job) {
	defer close(j.written)
	inflight := p.metrics.inflight.WithLabelValues(p.name)
	inflight.Inc()
	defer inflight.Dec()
	try := attempt{batch: newBatchID(), first: time.Now()}
	err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: p.maxBackoff}, func(ctx context.Context) error {
		start := time.Now()
		err := p.write(ctx, j.msgs, try)
		try.n++
		if err != nil {
			p.metrics.writeErrors.WithLabelValues(p.name).Inc()
			return err
		}
		p.metrics.batchSeconds.WithLabelValues(p.name).Observe(time.Since(start).Seconds())
		return nil
	}, func(err error, wait time.Duration) {
		p.logger.Warn("cannot write batch, retrying", "topic", p.name, "messages", len(j.msgs), "error", err, "backoff", wait)
	})
	if err != nil {
		j.err = err
		p.logger.Error("gave up writing a batch at shutdown; Kafka re-delivers it on the next start",
			"topic", p.name, "messages", len(j.msgs), "error", err)
	}
}

// commitInOrder commits each batch's offsets once it and all batches
// before it are written. It stops at the first batch given up: committing
// a later one would skip it.
func (p *pipeline) commitInOrder(ctx context.Context, order <-chan *job) {
	for j := range order {
		select {
		case <-j.written:
		case <-ctx.Done():
			return
		}
		if j.err != nil {
			return
		}
		// Only the commit is retried: the batch is in ClickHouse, and the
		// ledger would keep a re-delivery out anyway.
		err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: p.maxBackoff}, func(ctx context.Context) error {
			err := p.consumer.Commit(ctx, j.msgs...)
			if err != nil {
				p.metrics.commitErrors.WithLabelValues(p.name).Inc()
			}
			return err
		}, func(err error, wait time.Duration) {
			p.logger.Warn("cannot commit offsets, retrying", "topic", p.name, "error", err, "backoff", wait)
		})
		if err != nil {
			return
		}
		p.metrics.committed.WithLabelValues(p.name).Add(float64(len(j.msgs)))
	}
}

// fetchBackoff paces the sink's fetches while the brokers are away.
var fetchBackoff = retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// fetchWarning logs a failed fetch that bus.FetchRetrying waits out.
func fetchWarning(logger *slog.Logger) func(error, time.Duration) {
	return func(err error, wait time.Duration) {
		logger.Warn("cannot fetch, retrying", "error", err, "backoff", wait)
	}
}
