package bus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/retry"
)

// idempotentSession is a producer id the brokers gave and the next
// sequence number per partition: Kafka's idempotent producer (KIP-98),
// which kafka-go's Writer does not have. With it a batch retried after
// an answer that was lost (a broker killed, a timeout) is dropped by the
// partition's leader if it already has it, instead of landing twice at a
// new offset, where the sink's ledger, keyed by offset, would write its
// flows twice.
//
// A sequence number is used for exactly one batch: after an error whose
// outcome is unknown, the next batch of the partition gets the same
// sequence only if it is the same batch (its records' print), which the
// producer's and its callers' retries are (same messages from the same
// first one, split the same way). Another batch then starts a new session
// (a new producer id), since the broker would take it for the retry and
// drop it if the unanswered one had landed.
type idempotentSession struct {
	mu    sync.Mutex
	id    int64 // -1 before InitProducerId
	epoch int16
	next  map[int]int32 // partition → next base sequence
	// unanswered is, per partition, the batch sent last without an
	// answer that it was written.
	unanswered map[int]sentBatch
	// partitions serialises each partition's batches.
	partitions map[int]*sync.Mutex
}

// lock holds partition's batches to this caller until unlock.
func (s *idempotentSession) lock(partition int) (unlock func()) {
	s.mu.Lock()
	if s.partitions == nil {
		s.partitions = map[int]*sync.Mutex{}
	}
	m, ok := s.partitions[partition]
	if !ok {
		m = &sync.Mutex{}
		s.partitions[partition] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

type sentBatch struct {
	print    batchPrint
	sequence int32
}

// stamp returns the producer id, epoch and sequence for partition's next
// batch, print, asking the brokers for an id first if the session has
// none. The batch counts as unanswered until advance.
func (s *idempotentSession) stamp(ctx context.Context, client *kafka.Client, partition int, print batchPrint) (producerStamp, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, ok := s.unanswered[partition]; ok && s.next != nil && u.print != print {
		s.next = nil // another batch after an unanswered one: new session
	}
	if s.next == nil {
		producer, err := initProducerID(ctx, client)
		if err != nil {
			return noStamp, err
		}
		s.id, s.epoch, s.next = int64(producer.ProducerID), int16(producer.ProducerEpoch), map[int]int32{}
		s.unanswered = map[int]sentBatch{}
	}
	s.unanswered[partition] = sentBatch{print: print, sequence: s.next[partition]}
	return producerStamp{id: s.id, epoch: s.epoch, sequence: s.next[partition]}, nil
}

// initProducerID asks the brokers for a producer id. A broker answers
// COORDINATOR_LOAD_IN_PROGRESS until the controller gave it a block of
// ids, right after its start: that is waited out, briefly.
func initProducerID(ctx context.Context, client *kafka.Client) (*kafka.ProducerSession, error) {
	var err error
	for attempt := range 20 {
		var res *kafka.InitProducerIDResponse
		res, err = client.InitProducerID(ctx, &kafka.InitProducerIDRequest{ProducerID: -1, ProducerEpoch: -1})
		if err == nil && res.Error == nil {
			return res.Producer, nil
		}
		if err == nil {
			err = res.Error
		}
		var kerr kafka.Error
		if !errors.As(err, &kerr) || !kerr.Temporary() || !retry.Sleep(ctx, time.Duration(attempt+1)*50*time.Millisecond) {
			break
		}
	}
	return nil, fmt.Errorf("cannot get a producer id: %w", err)
}

// advance records that the batch of n records stamped st was written.
func (s *idempotentSession) advance(partition int, st producerStamp, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == nil || s.id != st.id || s.epoch != st.epoch {
		return // the session was reset meanwhile
	}
	// Sequences wrap to 0 after the largest int32, as Kafka's do.
	s.next[partition] = int32((int64(st.sequence) + int64(n)) % (math.MaxInt32 + 1))
	delete(s.unanswered, partition)
}

// reset drops the session: the next batch asks for a new producer id.
func (s *idempotentSession) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = nil
}

// unfinishedCalls keeps what failed Publish calls left unwritten, by the
// caller's slice (its first message and length), so that the caller's
// retry with the same slice writes only that. At most maxUnfinished are
// kept: a caller that never retries leaks no more than that.
type unfinishedCalls struct {
	mu    sync.Mutex
	calls map[unfinishedKey][]Message
}

type unfinishedKey struct {
	first *Message
	n     int
}

const maxUnfinished = 64

func (u *unfinishedCalls) put(first *Message, n int, rest []Message) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls == nil {
		u.calls = map[unfinishedKey][]Message{}
	}
	if len(u.calls) >= maxUnfinished {
		for k := range u.calls {
			delete(u.calls, k) // any one: an old call its caller gave up
			break
		}
	}
	u.calls[unfinishedKey{first, n}] = rest
}

func (u *unfinishedCalls) take(first *Message, n int) ([]Message, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	k := unfinishedKey{first, n}
	rest, ok := u.calls[k]
	delete(u.calls, k)
	return rest, ok
}
