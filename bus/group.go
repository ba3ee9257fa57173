package bus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/retry"
)

// Claim is one partition of a topic that the consumer group gave to this
// member, from the group's committed offset on.
type Claim interface {
	Partition() int
	// Generation identifies the group assignment the claim belongs to;
	// claims handed out together share it.
	Generation() int32
	// ReadBack calls fn, in order, for the messages of the partition
	// produced at or after since and before the first message Fetch will
	// return: what the previous owner already processed. A stage that
	// keeps windows rebuilds them from it before acting on new messages.
	ReadBack(ctx context.Context, since time.Time, fn func(Message) error) error
	// Fetch blocks for the next message.
	Fetch(ctx context.Context) (Message, error)
	// FetchBatch appends to dst the messages of one fetch, read in the
	// calling goroutine; none when the partition had nothing new for a
	// fetch's wait (250 ms), so that a caller can look at its clock.
	FetchBatch(ctx context.Context, dst []Message) ([]Message, error)
	// Commit records that msgs and everything before them in the
	// partition have been processed.
	Commit(ctx context.Context, msgs ...Message) error
}

// GroupConsumer hands partitions of a topic to a handler, one goroutine per
// partition, as the consumer group assigns them.
type GroupConsumer interface {
	// Consume runs handle for each partition this member is given until
	// ctx ends. The handler's context ends when the partition is taken
	// away (a rebalance) or ctx ends; it must return then, after
	// committing what it has finished, so that the next owner starts
	// exactly there. Consume returns nil when ctx ends or, on the
	// in-process bus, when the topic is closed and drained.
	Consume(ctx context.Context, handle func(ctx context.Context, c Claim)) error
	Close() error
}

// Partitioned joins group on topic for partition-aware consumption.
func (m *Memory) Partitioned(topic, group string) (GroupConsumer, error) {
	// The queue must exist before anything is published: create it now.
	c, err := m.Consumer(topic, group)
	if err != nil {
		return nil, err
	}
	return &memoryGroup{c: c.(*memoryConsumer)}, nil
}

// memoryGroup is the single-partition view of the in-process bus: one
// claim, partition 0, nothing to read back (the bus keeps no history).
type memoryGroup struct{ c *memoryConsumer }

func (g *memoryGroup) Consume(ctx context.Context, handle func(context.Context, Claim)) error {
	handle(ctx, memoryClaim{g.c})
	return nil
}

func (g *memoryGroup) Close() error { return g.c.Close() }

type memoryClaim struct{ *memoryConsumer }

func (memoryClaim) Partition() int    { return 0 }
func (memoryClaim) Generation() int32 { return 0 }
func (memoryClaim) ReadBack(context.Context, time.Time, func(Message) error) error {
	return nil
}

// memoryBatch bounds what one FetchBatch takes from the queue.
const memoryBatch = 1024

func (c memoryClaim) FetchBatch(ctx context.Context, dst []Message) ([]Message, error) {
	wait, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	m, err := c.Fetch(wait)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return dst, nil // nothing new within the wait
		}
		return dst, err
	}
	dst = append(dst, m)
	for range memoryBatch - 1 {
		select {
		case m := <-c.q.ch:
			dst = append(dst, c.number(m))
		default:
			return dst, nil
		}
	}
	return dst, nil
}

// Partitioned joins group on topic with kafka-go's ConsumerGroup, which
// exposes each generation's assignments and committed offsets: what a
// stage needs to rebuild state on assignment.
func (k *Kafka) Partitioned(topic, group string) (GroupConsumer, error) {
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                group,
		Brokers:           k.config.Brokers,
		Dialer:            k.dialer,
		Topics:            []string{topic},
		StartOffset:       kafka.FirstOffset,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		HeartbeatInterval: time.Second,
		JoinGroupBackoff:  time.Second,
		Timeout:           k.config.ConnectTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot join consumer group %s on %s: %w", group, topic, err)
	}
	return &kafkaGroup{k: k, topic: topic, cg: cg}, nil
}

type kafkaGroup struct {
	k     *Kafka
	topic string
	cg    *kafka.ConsumerGroup
	once  sync.Once
}

func (g *kafkaGroup) Close() error {
	var err error
	g.once.Do(func() { err = g.cg.Close() })
	return err
}

func (g *kafkaGroup) Consume(ctx context.Context, handle func(context.Context, Claim)) error {
	stop := context.AfterFunc(ctx, func() { g.Close() })
	defer stop()
	for {
		var gen *kafka.Generation
		err := retry.Do(ctx, retry.Backoff{Min: time.Second, Max: 10 * time.Second}, func(ctx context.Context) error {
			var err error
			if gen, err = g.cg.Next(ctx); errors.Is(err, kafka.ErrGroupClosed) {
				return retry.Permanent(err)
			}
			// Other errors: the coordinator moved or the broker
			// restarts; keep trying.
			return err
		}, nil)
		if err != nil || ctx.Err() != nil {
			return nil // ctx ended or the group was closed
		}
		for _, a := range gen.Assignments[g.topic] {
			gen.Start(func(genCtx context.Context) {
				hctx, cancel := context.WithCancel(ctx)
				defer cancel()
				// The generation's context is not derived from ctx: end
				// the handler on whichever finishes first.
				go func() {
					select {
					case <-genCtx.Done():
						cancel()
					case <-hctx.Done():
					}
				}()
				c := g.claim(gen, a)
				defer c.r.close()
				handle(hctx, c)
				// Returning ends the generation for every partition; wait
				// for it to end on its own instead.
				<-hctx.Done()
			})
		}
	}
}

func (g *kafkaGroup) claim(gen *kafka.Generation, a kafka.PartitionAssignment) *kafkaClaim {
	start := a.Offset
	if start < 0 {
		start = kafka.FirstOffset // never committed: from the oldest retained
	}
	return &kafkaClaim{g: g, gen: gen, partition: a.ID, start: a.Offset,
		r: newPartitionReader(g.k, g.topic, a.ID, start)}
}

type kafkaClaim struct {
	g         *kafkaGroup
	gen       *kafka.Generation
	partition int
	start     int64 // committed offset at assignment; < 0 when none
	r         *partitionReader
}

func (c *kafkaClaim) Partition() int    { return c.partition }
func (c *kafkaClaim) Generation() int32 { return c.gen.ID }

func (c *kafkaClaim) ReadBack(ctx context.Context, since time.Time, fn func(Message) error) error {
	if c.start <= 0 {
		return nil // nobody processed anything before us
	}
	var conn *kafka.Conn
	var err error
	for _, b := range c.g.k.config.Brokers {
		if conn, err = c.g.k.dialer.DialLeader(ctx, "tcp", b, c.g.topic, c.partition); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("cannot reach the leader of %s/%d: %w", c.g.topic, c.partition, err)
	}
	from, err := conn.ReadOffset(since)
	if err == nil {
		var first int64
		if first, err = conn.ReadFirstOffset(); err == nil {
			from = max(from, first)
		}
	}
	conn.Close()
	if err != nil {
		return fmt.Errorf("cannot find the offset of %s in %s/%d: %w", since.Format(time.RFC3339), c.g.topic, c.partition, err)
	}
	if from < 0 || from >= c.start {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.g.k.config.Brokers, Dialer: c.g.k.dialer, Topic: c.g.topic, Partition: c.partition,
		MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond,
	})
	defer r.Close()
	if err := r.SetOffset(from); err != nil {
		return fmt.Errorf("cannot seek %s/%d: %w", c.g.topic, c.partition, err)
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("cannot read back %s/%d: %w", c.g.topic, c.partition, err)
		}
		if m.Offset >= c.start {
			return nil
		}
		if err := fn(fromKafka(m)); err != nil {
			return err
		}
		if m.Offset == c.start-1 {
			return nil
		}
	}
}

func fromKafka(m kafka.Message) Message {
	return Message{Key: m.Key, Value: m.Value, Partition: m.Partition, Offset: m.Offset, Time: m.Time.UnixMilli(),
		Origin: headerUint(m.Headers, originHeader), LowMs: int64(headerUint(m.Headers, lowHeader))}
}

const (
	originHeader = "wormsign-origin"
	lowHeader    = "wormsign-low"
)

func headerUint(headers []kafka.Header, key string) uint64 {
	for _, h := range headers {
		if h.Key == key && len(h.Value) == 8 {
			return binary.BigEndian.Uint64(h.Value)
		}
	}
	return 0
}

func (c *kafkaClaim) Fetch(ctx context.Context) (Message, error) { return c.r.fetch(ctx) }

func (c *kafkaClaim) FetchBatch(ctx context.Context, dst []Message) ([]Message, error) {
	return c.r.fetchBatch(ctx, dst)
}

func (c *kafkaClaim) Commit(_ context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	last := msgs[0].Offset
	for _, m := range msgs[1:] {
		last = max(last, m.Offset)
	}
	// Kafka's committed offset is the next one to read.
	if err := c.gen.CommitOffsets(map[string]map[int]int64{c.g.topic: {c.partition: last + 1}}); err != nil {
		return fmt.Errorf("cannot commit %s/%d at %d: %w", c.g.topic, c.partition, last+1, err)
	}
	return nil
}

// History reads what a topic received since some time, across its
// partitions, up to its end when called. The Kafka bus has it; the
// in-process bus keeps no history.
type History interface {
	ReadSince(ctx context.Context, topic string, since time.Time, fn func(Message) error) error
}

// ReadSince calls fn for the messages of every partition of topic produced
// at or after since, up to the end of each partition at the time of the
// call, partition after partition.
func (k *Kafka) ReadSince(ctx context.Context, topic string, since time.Time, fn func(Message) error) error {
	meta, err := k.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("cannot list partitions of %s: %w", topic, err)
	}
	for _, t := range meta.Topics {
		if t.Error != nil {
			return fmt.Errorf("cannot list partitions of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			if err := k.readPartitionSince(ctx, topic, p.ID, since, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func (k *Kafka) readPartitionSince(ctx context.Context, topic string, partition int, since time.Time, fn func(Message) error) error {
	var conn *kafka.Conn
	var err error
	for _, b := range k.config.Brokers {
		if conn, err = k.dialer.DialLeader(ctx, "tcp", b, topic, partition); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("cannot reach the leader of %s/%d: %w", topic, partition, err)
	}
	from, err := conn.ReadOffset(since)
	var first, end int64
	if err == nil {
		first, end, err = conn.ReadOffsets()
	}
	conn.Close()
	if err != nil {
		return fmt.Errorf("cannot find offsets in %s/%d: %w", topic, partition, err)
	}
	if from < 0 {
		return nil // nothing since
	}
	from = max(from, first)
	if from >= end {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: k.config.Brokers, Dialer: k.dialer, Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond,
	})
	defer r.Close()
	if err := r.SetOffset(from); err != nil {
		return fmt.Errorf("cannot seek %s/%d: %w", topic, partition, err)
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("cannot read %s/%d: %w", topic, partition, err)
		}
		if err := fn(fromKafka(m)); err != nil {
			return err
		}
		if m.Offset >= end-1 {
			return nil
		}
	}
}
