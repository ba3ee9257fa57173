// Package bus carries messages between wormsign's stages: Apache Kafka when
// brokers are configured, an in-process queue otherwise (wormsign run on its
// embedded default). Both give the same contract: messages with the same key
// stay in order, and a consumer commits a message only after the work it
// feeds has succeeded, so a restart re-delivers everything not yet committed.
package bus

import (
	"context"
	"errors"
)

// Message is one record on a topic.
type Message struct {
	Key, Value []byte
	Partition  int
	Offset     int64
	// Time is when the message was produced.
	Time int64
	// Origin names the writer (a collector instance and publisher) so
	// that consumers can tell ordered streams apart; 0 when unknown.
	// On Kafka it travels in the wormsign-origin header.
	Origin uint64
}

// Producer publishes messages to one topic.
type Producer interface {
	// Publish returns once every message is accepted by the transport.
	Publish(ctx context.Context, msgs ...Message) error
	Close() error
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
	Close() error
}

// ErrClosed is returned by a consumer or producer after Close.
var ErrClosed = errors.New("bus closed")
