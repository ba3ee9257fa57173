package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"
)

// kafkaProducer writes each Publish as produce requests per partition
// (split at kafka.batch_bytes; the partitions in parallel, each
// partition's requests one after another to keep a key's messages in
// order) and returns when every broker in the ISR has them. It encodes
// the record batches itself (recordbatch.go) and sends them with kafka-go's
// Client rather than its Writer: the Writer looks up the topic's metadata
// and allocates for every message and waits up to its batch timeout for
// batches to fill, which cost the collector more than encoding its flows,
// while every caller here hands over whole batches.
type kafkaProducer struct {
	client     *kafka.Client
	topic      string
	codec      compress.Compression
	batchBytes int

	mu         sync.Mutex
	partitions []int // 0..n-1, looked up at most every partitionsTTL
	fetched    time.Time
	closed     bool

	session    idempotentSession
	unfinished unfinishedCalls
}

const (
	partitionsTTL = 10 * time.Second
	// produceTimeout bounds one request, and produceAttempts the attempts
	// for the partitions that failed, before Publish returns the error
	// to its caller's own retries.
	produceTimeout  = 10 * time.Second
	produceAttempts = 3
)

// Producer returns a synchronous producer: Publish returns once all brokers
// in the ISR have the messages. Callers batch many messages per call.
func (k *Kafka) Producer(topic string) (Producer, error) {
	codec, err := compressionCodec(k.config.Compression)
	if err != nil {
		return nil, err
	}
	return &kafkaProducer{
		client:     &kafka.Client{Addr: kafka.TCP(k.config.Brokers...), Timeout: produceTimeout, Transport: k.transport},
		topic:      topic,
		codec:      codec,
		batchBytes: k.config.BatchBytes,
	}, nil
}

func (p *kafkaProducer) Publish(ctx context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	// A caller retries a failed Publish with the same messages: go on
	// where the failed one stopped, so that the partitions it wrote are
	// not written again.
	call, callLen := &msgs[0], len(msgs)
	if rest, ok := p.unfinished.take(call, callLen); ok {
		msgs = rest
	}
	now := time.Now()
	for attempt := 1; ; attempt++ {
		failed, err := p.publishOnce(ctx, msgs, now)
		if err == nil {
			return nil
		}
		if attempt == produceAttempts || ctx.Err() != nil || errors.Is(err, ErrClosed) {
			p.unfinished.put(call, callLen, failed)
			return fmt.Errorf("cannot write to %s: %w", p.topic, err)
		}
		// A moved leader or a changed partition count: look again.
		p.mu.Lock()
		p.fetched = time.Time{}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			p.unfinished.put(call, callLen, failed)
			return fmt.Errorf("cannot write to %s: %w", p.topic, ctx.Err())
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
		msgs = failed
	}
}

// publishOnce writes msgs and returns those it could not write: of each
// partition whose request failed, that request's messages and the rest.
func (p *kafkaProducer) publishOnce(ctx context.Context, msgs []Message, now time.Time) ([]Message, error) {
	partitions, err := p.partitionList(ctx)
	if err != nil {
		return msgs, err
	}
	// Messages are grouped by index: copying them would cost write
	// barriers for their pointers.
	byPartition := make([][]int32, len(partitions))
	balancer := kafka.Murmur2Balancer{} // same partition for a key as the Java client
	for j := range msgs {
		i := msgs[j].Partition
		if msgs[j].Key != nil {
			i = balancer.Balance(kafka.Message{Key: msgs[j].Key}, partitions...)
		} else if i < 0 || i >= len(partitions) {
			return msgs, fmt.Errorf("partition %d of %s: the topic has %d", i, p.topic, len(partitions))
		}
		byPartition[i] = append(byPartition[i], int32(j))
	}
	unwritten := make([][]int32, len(byPartition))
	errs := make([]error, len(byPartition))
	var wg sync.WaitGroup
	for i, part := range byPartition {
		if len(part) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for len(part) > 0 {
				n, size := 0, 0
				for ; n < len(part); n++ {
					next := recordSize(&msgs[part[n]])
					if n > 0 && size+next > p.batchBytes {
						break
					}
					size += next
				}
				if err := p.produce(ctx, i, msgs, part[:n], size, now); err != nil {
					unwritten[i], errs[i] = part, err
					return
				}
				part = part[n:]
			}
		}()
	}
	wg.Wait()
	var failed []Message
	var first error
	for i, err := range errs {
		if err != nil {
			for _, j := range unwritten[i] {
				failed = append(failed, msgs[j])
			}
			if first == nil {
				first = err
			}
		}
	}
	return failed, first
}

// produce writes the messages msgs[idx] to partition, about size bytes,
// as one idempotent batch: a retry of it (same messages, same split, same
// sequence) that the broker already wrote is dropped by the broker
// instead of written twice.
func (p *kafkaProducer) produce(ctx context.Context, partition int, msgs []Message, idx []int32, size int, now time.Time) error {
	// A partition's batches go one at a time, in sequence order, also
	// across concurrent Publish calls.
	unlock := p.session.lock(partition)
	defer unlock()
	buf := recordSets.Get().(*[]byte)
	records, err := appendRecordSet(slices.Grow((*buf)[:0], size+recordBatchOverhead), msgs, idx, now.UnixMilli(), noStamp, p.codec.Codec())
	if err != nil {
		return err
	}
	stamp, err := p.session.stamp(ctx, p.client, partition, printOf(records, len(idx)))
	if err != nil {
		return err
	}
	restamp(records, stamp)
	ctx, cancel := context.WithTimeout(ctx, produceTimeout)
	defer cancel()
	res, err := p.client.RawProduce(ctx, &kafka.RawProduceRequest{
		Topic:        p.topic,
		Partition:    partition,
		RequiredAcks: kafka.RequireAll,
		RawRecords:   protocol.RawRecordSet{Reader: bytes.NewReader(records)},
	})
	if err == nil {
		// Answered, so kafka-go has written all of it. After an error
		// (a timeout) its connection may still be reading the buffer:
		// that one is left to the garbage collector.
		*buf = records
		recordSets.Put(buf)
	}
	if err == nil && res.Error == nil {
		for _, rerr := range res.RecordErrors {
			err = rerr
			break
		}
	} else if err == nil {
		err = res.Error
	}
	switch {
	case err == nil, errors.Is(err, kafka.DuplicateSequenceNumber):
		// Written now, or by an attempt whose answer we did not get.
		p.session.advance(partition, stamp, len(idx))
		return nil
	case errors.Is(err, kafka.OutOfOrderSequenceNumber), errors.Is(err, kafka.UnknownProducerId),
		errors.Is(err, kafka.InvalidProducerEpoch), errors.Is(err, kafka.InvalidProducerIDMapping):
		// The broker lost or refused our producer state: start a new
		// session. A batch written before it and retried under the new
		// one is then written twice, the only case left.
		p.session.reset()
	}
	return fmt.Errorf("partition %d: %w", partition, err)
}

func (p *kafkaProducer) Partitions(ctx context.Context) (int, error) {
	partitions, err := p.partitionList(ctx)
	if err != nil {
		return 0, fmt.Errorf("cannot list the partitions of %s: %w", p.topic, err)
	}
	return len(partitions), nil
}

// partitionList is the topic's partitions, refreshed every partitionsTTL
// (a topic may gain partitions) and after a failed write.
func (p *kafkaProducer) partitionList(ctx context.Context) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if p.partitions != nil && time.Since(p.fetched) < partitionsTTL {
		return p.partitions, nil
	}
	res, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.topic}})
	if err != nil {
		return nil, err
	}
	for _, t := range res.Topics {
		if t.Name != p.topic {
			continue
		}
		if t.Error != nil {
			return nil, t.Error
		}
		if len(t.Partitions) == 0 {
			break
		}
		p.partitions = make([]int, len(t.Partitions))
		for i := range p.partitions {
			p.partitions[i] = i
		}
		p.fetched = time.Now()
		return p.partitions, nil
	}
	return nil, kafka.UnknownTopicOrPartition
}

func (p *kafkaProducer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

// recordSets recycles the buffers record batches are encoded into.
var recordSets = sync.Pool{New: func() any { return new([]byte) }}

// recordSize is about what a message takes in a record batch: its key,
// value and headers plus the record's own framing.
func recordSize(m *Message) int {
	n := len(m.Key) + len(m.Value) + 24
	if m.Origin != 0 {
		n += len(originHeader) + 8 + 2
	}
	if m.LowMs > 0 {
		n += len(lowHeader) + 8 + 2
	}
	return n
}
