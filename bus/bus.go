// Package bus carries messages between wormsign's stages: Apache Kafka when
// brokers are configured, an in-process queue otherwise (wormsign run on its
// embedded default). Both give the same contract: messages with the same key
// stay in order, and a consumer commits a message only after the work it
// feeds has succeeded, so a restart re-delivers everything not yet committed.
package bus

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"github.com/wormsign/wormsign/retry"
)

// Message is one record on a topic.
type Message struct {
	Key, Value []byte
	// Partition is where a consumer read the message. A producer writes
	// a message with a Key to its key's partition, and one without to
	// this one: the collector chooses its partitions itself (PartitionOf)
	// so that one record carries the flows of many subscribers.
	Partition int
	Offset    int64
	// Time is when the message was produced.
	Time int64
	// Origin names the writer (a collector instance and publisher) so
	// that consumers can tell ordered streams apart; 0 when unknown.
	// On Kafka it travels in the wormsign-origin header.
	Origin uint64
	// LowMs is the writer's progress in event time (Unix ms): no flow
	// the writer (a collector, over all its publishers) has yet to write
	// ends before it. Publishers write concurrently and the messages of a
	// batch in no particular order, so a consumer takes this, not the
	// flows' own times, for the writer's progress; 0 when unknown. On
	// Kafka it travels in the wormsign-low header.
	LowMs int64
}

// Producer publishes messages to one topic.
type Producer interface {
	// Publish returns once every message is accepted by the transport.
	Publish(ctx context.Context, msgs ...Message) error
	// Partitions is how many partitions the topic has (1 on the
	// in-process bus), for a writer that chooses them itself. Kafka
	// partitions are only ever added, so a partition once valid stays so.
	Partitions(ctx context.Context) (int, error)
	Close() error
}

// PartitionOf is the partition of a subscriber key (an address's 16-byte
// form) among n: the halves mixed by multiplication as in splitmix64,
// which is several times cheaper than hashing byte by byte.
func PartitionOf(key [16]byte, n int) int {
	return int(KeyHash(key) % uint32(n))
}

// KeyHash spreads subscriber keys: over partitions (PartitionOf) and over
// a stage's own workers.
func KeyHash(key [16]byte) uint32 {
	h := binary.LittleEndian.Uint64(key[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(key[8:])
	h = (h ^ h>>31) * 0xbf58476d1ce4e5b9
	return uint32(h ^ h>>32)
}

// Consumer reads one topic as a member of a consumer group.
type Consumer interface {
	// Fetch blocks for the next message.
	Fetch(ctx context.Context) (Message, error)
	// Commit records that msgs (and everything before them in their
	// partitions) have been processed.
	Commit(ctx context.Context, msgs ...Message) error
	Close() error
}

// Bus makes producers and consumers for topics.
type Bus interface {
	Producer(topic string) (Producer, error)
	Consumer(topic, group string) (Consumer, error)
	// Partitioned joins group for partition-aware consumption, for
	// stages that keep state per partition (the detector).
	Partitioned(topic, group string) (GroupConsumer, error)
	// Durable tells whether the bus keeps messages across restarts and
	// commits offsets (Kafka). The in-process bus does not: what its
	// queues hold when the process ends is gone.
	Durable() bool
	// CloseTopic declares that nothing more will be published to topic.
	// On a bus that is not durable its consumers then read what is
	// queued and get ErrClosed, which is how a stage drains; a producer
	// blocked on a full queue gets ErrClosed. A Kafka topic has no end:
	// there it does nothing, and a stage stops by Stop alone.
	CloseTopic(topic string)
	Close() error
}

// ErrClosed is returned by a consumer or producer after Close.
var ErrClosed = errors.New("bus closed")

// Fetcher is what FetchRetrying and Feed read: a Consumer or a Claim.
type Fetcher interface {
	Fetch(ctx context.Context) (Message, error)
}

// FetchRetrying returns the next message of f, waiting out broker outages
// with backoff: kafka-go reports a failed attempt to rejoin the group or
// to reach a partition's leader as an error from Fetch but keeps trying
// behind it, so only the end of the input (ErrClosed) or of ctx ends the
// wait. onError (may be nil) hears of each failed fetch and the wait
// before the next.
func FetchRetrying(ctx context.Context, f Fetcher, backoff retry.Backoff, onError func(err error, wait time.Duration)) (Message, error) {
	var msg Message
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		var err error
		msg, err = f.Fetch(ctx)
		if errors.Is(err, ErrClosed) {
			return retry.Permanent(err)
		}
		return err
	}, onError)
	return msg, err
}

// Each hands the messages of cons to handle one at a time, in order, and
// commits each once handle returned nil. It returns when the input or ctx
// ends, or when handle fails: that message is not committed, and is read
// again after a restart.
func Each(ctx context.Context, cons Consumer, backoff retry.Backoff, handle func(Message) error) {
	for {
		msg, err := FetchRetrying(ctx, cons, backoff, nil)
		if err != nil || handle(msg) != nil {
			return
		}
		if retry.Do(ctx, backoff, func(ctx context.Context) error { return cons.Commit(ctx, msg) }, nil) != nil {
			return
		}
	}
}

// Feed sends the messages of f to out, fetching as FetchRetrying does,
// until the input or ctx ends; then it closes out. It runs in a goroutine
// of its own, so that a stage gathers and writes batches while the next
// messages are fetched.
func Feed(ctx context.Context, f Fetcher, backoff retry.Backoff, onError func(err error, wait time.Duration), out chan<- Message) {
	defer close(out)
	for {
		msg, err := FetchRetrying(ctx, f, backoff, onError)
		if err != nil {
			return
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return
		}
	}
}
