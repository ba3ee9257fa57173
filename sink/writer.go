package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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
// fetchers stop reading: a down ClickHouse holds flows back in Kafka (or,
// with the in-process bus, blocks the collector, which counts drops at the
// UDP edge), never in an unbounded buffer here.
//
// The topic is read through the consumer group's partition claims, a
// goroutine per claim that hands whole fetches to the batcher (not a
// goroutine and a channel hop per message), and each batch's offsets are
// committed through the claim that fetched them, in the claim's
// generation. A claim taken away by a rebalance waits, up to
// rebalanceHandover (at shutdown the drain timeout), until what it handed
// over is written and committed, so that the next owner starts after it;
// what it could not commit by then is its next owner's: the batches not
// yet written drop it, and the ledger keeps what was written from being
// written twice.
type pipeline struct {
	name  string
	group bus.GroupConsumer
	// write writes a batch. A retry follows an error whose outcome is
	// unknown, and the writer must find what landed (see attempt).
	write       func(ctx context.Context, msgs []bus.Message, try attempt) error
	maxMessages int
	maxBytes    int
	interval    time.Duration
	workers     int
	maxBackoff  time.Duration
	drain       time.Duration
	durable     bool // the bus re-delivers what was not committed
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

// heldClaim is a partition the pipeline holds in one generation.
type heldClaim struct {
	claim bus.Claim
	// commits ends when the claim's handler has returned: its generation
	// may be over, and a commit through it would go nowhere.
	commits context.Context
	// pending counts the fetches and the batch parts of this claim not
	// yet committed or given up.
	pending sync.WaitGroup
}

// fetch is one fetch of one claim, handed to the batcher; one without
// messages says that the claim ends and wants what was gathered written.
type fetch struct {
	held *heldClaim
	msgs []bus.Message
}

// claimPart is what one batch holds of one claim: the last message, whose
// commit covers the part.
type claimPart struct {
	held *heldClaim
	last bus.Message
	n    int // messages
}

type job struct {
	msgs    []bus.Message
	parts   []claimPart
	written chan struct{} // closed when the worker is done with the batch
	err     error         // set before written is closed when it gave up
}

// held returns the messages of j whose partitions are still held. Those of
// a partition that let go are its next owner's to write: writing them too
// could race its write of the same offsets past the ledger's check.
func (j *job) held() []bus.Message {
	msgs, from := j.msgs[:0:0], 0
	for _, part := range j.parts {
		if part.held.commits.Err() == nil {
			msgs = append(msgs, j.msgs[from:from+part.n]...)
		}
		from += part.n
	}
	if len(msgs) == len(j.msgs) {
		return j.msgs
	}
	return msgs
}

// settle tells the claims of j that the pipeline is done with their parts.
func (j *job) settle() {
	for _, part := range j.parts {
		part.held.pending.Done()
	}
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
	fetches := make(chan fetch, 4)
	go p.consume(ctx, writeCtx, fetches)

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

	dispatch := func(j *job) {
		j.written = make(chan struct{})
		select {
		case order <- j:
		case <-writeCtx.Done():
			j.settle()
			return
		}
		select {
		case jobs <- j:
		case <-writeCtx.Done():
			j.err = writeCtx.Err()
			close(j.written)
		}
	}

	batch := &job{}
	size := 0
	add := func(f fetch) {
		defer f.held.pending.Done() // the fetch is now in batches
		if len(f.msgs) == 0 && len(batch.msgs) > 0 {
			dispatch(batch)
			batch, size = &job{}, 0
		}
		for _, m := range f.msgs {
			if n := len(batch.parts); n > 0 && batch.parts[n-1].held == f.held {
				batch.parts[n-1].last = m
				batch.parts[n-1].n++
			} else {
				f.held.pending.Add(1)
				batch.parts = append(batch.parts, claimPart{held: f.held, last: m, n: 1})
			}
			batch.msgs = append(batch.msgs, m)
			size += len(m.Value)
			if len(batch.msgs) >= p.maxMessages || size >= p.maxBytes {
				dispatch(batch)
				batch, size = &job{}, 0
			}
		}
	}
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	for {
		select {
		case f, ok := <-fetches:
			if !ok {
				// Input ended (Stop or a closed topic): write what is in
				// hand, within the drain timeout.
				startDrain()
				if len(batch.msgs) > 0 {
					dispatch(batch)
				}
				close(jobs)
				close(order)
				workers.Wait()
				<-committed
				return
			}
			add(f)
		case <-ticker.C:
			if len(batch.msgs) > 0 {
				dispatch(batch)
				batch, size = &job{}, 0
			}
		}
	}
}

// consume runs the group's claims until ctx ends or, on the in-process
// bus, the topic is closed and drained; then it closes fetches.
func (p *pipeline) consume(ctx, writeCtx context.Context, fetches chan<- fetch) {
	claims := newHandlers()
	defer close(fetches)
	defer claims.closeAndWait() // no claim may send on fetches once it is closed
	logger := p.logger.With("topic", p.name)
	err := p.group.Consume(ctx, func(claimCtx context.Context, claim bus.Claim) {
		if !claims.enter() {
			return // a claim handed out as the group stops
		}
		defer claims.leave()
		commits, stopCommits := context.WithCancel(writeCtx)
		defer stopCommits()
		held := &heldClaim{claim: claim, commits: commits}
		topicClosed := p.hold(claimCtx, held, fetches, logger)
		// Taken away, stopping or at the end of the topic: let what was
		// handed over be written and committed through this generation,
		// which lasts until we return. A rebalance waits for us, within
		// the group's rebalance timeout; a stop or a closed in-process
		// topic gets the whole drain timeout, since on the in-process bus
		// no next owner would read what a shorter wait gave up.
		wait := p.drain
		if ctx.Err() == nil && !topicClosed {
			wait = min(wait, rebalanceHandover)
		}
		handover, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		held.pending.Add(1)
		select {
		case fetches <- fetch{held: held}:
		case <-handover.Done():
			held.pending.Done()
		}
		settled := make(chan struct{})
		go func() {
			held.pending.Wait()
			close(settled)
		}()
		select {
		case <-settled:
		case <-handover.Done():
			logger.Warn("a partition ended before its batches were committed; its next owner re-reads them",
				"partition", claim.Partition())
		}
	})
	if err != nil && ctx.Err() == nil {
		logger.Error("cannot consume", "error", err)
	}
}

// handlers counts the claims' handlers running, so that consume can wait
// for them, and refuses new ones after that.
type handlers struct {
	mu      sync.Mutex
	running int
	closed  bool
	idle    chan struct{} // closed when closed and none runs
}

func newHandlers() *handlers { return &handlers{idle: make(chan struct{})} }

func (h *handlers) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.running++
	return true
}

func (h *handlers) leave() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running--; h.running == 0 && h.closed {
		close(h.idle)
	}
}

func (h *handlers) closeAndWait() {
	h.mu.Lock()
	h.closed = true
	if h.running == 0 {
		close(h.idle)
	}
	h.mu.Unlock()
	<-h.idle
}

// rebalanceHandover bounds how long a partition taken away by a rebalance
// waits for its batches to be committed: the group's members must rejoin
// within its rebalance timeout, 10 s (bus.Kafka.Partitioned).
const rebalanceHandover = 5 * time.Second

// hold hands the claim's fetches to the batcher until ctx ends or the
// topic is closed; it reports whether the topic was closed.
func (p *pipeline) hold(ctx context.Context, held *heldClaim, fetches chan<- fetch, logger *slog.Logger) bool {
	wait := fetchBackoff.Min
	for {
		msgs, err := held.claim.FetchBatch(ctx, nil)
		if len(msgs) > 0 {
			held.pending.Add(1)
			select {
			case fetches <- fetch{held: held, msgs: msgs}:
			case <-ctx.Done():
				held.pending.Done()
				return false
			}
		}
		switch {
		case errors.Is(err, bus.ErrClosed):
			return true
		case ctx.Err() != nil:
			return false
		case err != nil:
			// Keep the partition through fetch errors: giving up would
			// stall it until the next rebalance.
			p.metrics.fetchErrors.WithLabelValues(p.name).Inc()
			logger.Warn("cannot fetch, retrying", "partition", held.claim.Partition(), "error", err, "backoff", wait)
			select {
			case <-ctx.Done():
				return false
			case <-time.After(wait):
			}
			wait = min(2*wait, fetchBackoff.Max)
		default:
			wait = fetchBackoff.Min
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
		msgs := j.held()
		if len(msgs) == 0 {
			return nil // every partition of the batch has a new owner
		}
		err := p.write(ctx, msgs, try)
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
		p.metrics.givenUp.WithLabelValues(p.name).Add(float64(len(j.msgs)))
		if p.durable {
			p.logger.Error("gave up writing a batch at shutdown; Kafka re-delivers it on the next start",
				"topic", p.name, "messages", len(j.msgs), "error", err)
		} else {
			p.logger.Error("gave up writing a batch at shutdown; the in-process bus keeps nothing, its messages are lost",
				"topic", p.name, "messages", len(j.msgs), "error", err)
		}
	}
}

// commitInOrder commits each batch's offsets, through the claims that
// fetched them, once it and all batches before it are written. It stops
// committing at the first batch given up: committing a later one would
// skip it.
func (p *pipeline) commitInOrder(ctx context.Context, order <-chan *job) {
	stopped := false
	for j := range order {
		if !stopped {
			select {
			case <-j.written:
				stopped = j.err != nil
			case <-ctx.Done():
				stopped = true
			}
		}
		if !stopped && !p.commit(ctx, j) {
			stopped = true
		}
		j.settle()
	}
}

// commit commits the parts of a written batch, retrying those that fail;
// it returns false when ctx ended first. Only the commit is retried: the
// batch is in ClickHouse, and the ledger would keep a re-delivery out
// anyway. Each round tries every part left, so that one partition whose
// commits fail does not hold back the others'. A part whose partition has
// let go is abandoned: its next owner reads it again.
func (p *pipeline) commit(ctx context.Context, j *job) bool {
	left := j.parts
	backoff := retry.Backoff{Min: 100 * time.Millisecond, Max: p.maxBackoff}
	for {
		var failed []claimPart
		for _, part := range left {
			if part.held.commits.Err() != nil {
				if p.durable {
					p.metrics.abandoned.WithLabelValues(p.name).Add(float64(part.n))
				} else {
					// No next owner: the drain timeout ended first.
					p.metrics.givenUp.WithLabelValues(p.name).Add(float64(part.n))
				}
				continue
			}
			if err := part.held.claim.Commit(part.held.commits, part.last); err != nil {
				p.metrics.commitErrors.WithLabelValues(p.name).Inc()
				p.logger.Warn("cannot commit offsets, retrying", "topic", p.name, "partition", part.last.Partition, "error", err)
				failed = append(failed, part)
				continue
			}
			p.metrics.committed.WithLabelValues(p.name).Add(float64(part.n))
		}
		if len(failed) == 0 {
			return true
		}
		if !retry.Sleep(ctx, backoff.Next()) {
			return false
		}
		left = failed
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
