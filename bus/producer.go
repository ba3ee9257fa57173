package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// kafkaProducer writes each Publish as produce requests per partition
// (split at kafka.batch_bytes; the partitions in parallel, each
// partition's requests one after another to keep a key's messages in
// order) and returns when every broker in the ISR has them. It uses
// kafka-go's Client rather than its Writer: the Writer looks up the
// topic's metadata and allocates for every message and waits up to its
// batch timeout for batches to fill, which cost the collector more than
// encoding its flows, while every caller here hands over whole batches.
type kafkaProducer struct {
	client     *kafka.Client
	topic      string
	codec      compress.Compression
	batchBytes int

	mu         sync.Mutex
	partitions []int // 0..n-1, looked up at most every partitionsTTL
	fetched    time.Time
	closed     bool
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
		client:     &kafka.Client{Addr: kafka.TCP(k.config.Brokers...), Timeout: produceTimeout, Transport: k.roundTripper()},
		topic:      topic,
		codec:      codec,
		batchBytes: k.config.BatchBytes,
	}, nil
}

func (p *kafkaProducer) Publish(ctx context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now()
	for attempt := 1; ; attempt++ {
		failed, err := p.publishOnce(ctx, msgs, now)
		if err == nil {
			return nil
		}
		if attempt == produceAttempts || ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return fmt.Errorf("cannot write to %s: %w", p.topic, err)
		}
		// A moved leader or a changed partition count: look again.
		p.mu.Lock()
		p.fetched = time.Time{}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
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
	byPartition := make([][]Message, len(partitions))
	balancer := kafka.Murmur2Balancer{} // same partition for a key as the Java client
	for _, m := range msgs {
		i := balancer.Balance(kafka.Message{Key: m.Key}, partitions...)
		byPartition[i] = append(byPartition[i], m)
	}
	unwritten := make([][]Message, len(byPartition))
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
				for n < len(part) && (n == 0 || size+recordSize(part[n]) <= p.batchBytes) {
					size += recordSize(part[n])
					n++
				}
				if err := p.produce(ctx, i, part[:n], now); err != nil {
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
			failed = append(failed, unwritten[i]...)
			if first == nil {
				first = err
			}
		}
	}
	return failed, first
}

func (p *kafkaProducer) produce(ctx context.Context, partition int, msgs []Message, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, produceTimeout)
	defer cancel()
	res, err := p.client.Produce(ctx, &kafka.ProduceRequest{
		Topic:        p.topic,
		Partition:    partition,
		RequiredAcks: kafka.RequireAll,
		Compression:  p.codec,
		Records:      &messageRecords{msgs: msgs, time: now},
	})
	switch {
	case err != nil:
		return err
	case res.Error != nil:
		return fmt.Errorf("partition %d: %w", partition, res.Error)
	}
	for _, err := range res.RecordErrors {
		return fmt.Errorf("partition %d: %w", partition, err)
	}
	return nil
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

// recordSize is about what a message takes in a record batch: its key,
// value and headers plus the record's own framing.
func recordSize(m Message) int {
	n := len(m.Key) + len(m.Value) + 24
	if m.Origin != 0 {
		n += len(originHeader) + 8 + 2
	}
	if m.LowMs > 0 {
		n += len(lowHeader) + 8 + 2
	}
	return n
}

// messageRecords hands messages to kafka-go's encoder one at a time,
// reusing one record, its byte readers and, while they repeat (they do
// within a collector batch), its headers.
type messageRecords struct {
	msgs         []Message
	time         time.Time
	record       kafka.Record
	key, value   recordBytes
	origin, low  uint64
	headers      []kafka.Header
	headersValid bool
}

func (r *messageRecords) ReadRecord() (*kafka.Record, error) {
	if len(r.msgs) == 0 {
		return nil, io.EOF
	}
	m := &r.msgs[0]
	r.msgs = r.msgs[1:]
	if !r.headersValid || m.Origin != r.origin || uint64(m.LowMs) != r.low {
		r.headers, r.origin, r.low, r.headersValid = headers(*m), m.Origin, uint64(m.LowMs), true
	}
	r.record = kafka.Record{Time: r.time, Headers: r.headers}
	if m.Key != nil {
		r.key.reset(m.Key)
		r.record.Key = &r.key
	}
	if m.Value != nil {
		r.value.reset(m.Value)
		r.record.Value = &r.value
	}
	return &r.record, nil
}

// recordBytes is a key or value as kafka-go's encoder reads it.
type recordBytes struct {
	b   []byte
	off int
}

func (b *recordBytes) reset(p []byte) { b.b, b.off = p, 0 }
func (b *recordBytes) Len() int       { return len(b.b) - b.off }
func (b *recordBytes) Close() error   { return nil }

func (b *recordBytes) Read(p []byte) (int, error) {
	if b.off >= len(b.b) {
		return 0, io.EOF
	}
	n := copy(p, b.b[b.off:])
	b.off += n
	return n, nil
}

func (b *recordBytes) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b.b[b.off:])
	b.off += n
	return int64(n), err
}
