package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/segmentio/kafka-go"
)

// fetchMaxBytes bounds one fetch from a partition: several flows records
// (256 KiB each), so that a fetch round trip is paid per some thousands
// of flows.
const fetchMaxBytes = 16 << 20

// fetchWait is how long the leader holds a fetch open while the partition
// has nothing new: what a stage waits before it looks at its clock.
const fetchWait = 250 * time.Millisecond

// partitionReader reads one partition from its leader in whole fetches,
// in the calling goroutine: kafka-go's Reader hands each message over a
// channel from a goroutine of its own, a hop per message that cost the
// detector more than detecting when messages were small. It keeps one
// connection, redialled after an error (the leader may have moved).
type partitionReader struct {
	k         *Kafka
	topic     string
	partition int
	// offset is the next to read: an absolute offset, or kafka.FirstOffset
	// until the first connection resolves it.
	offset int64
	conn   *kafka.Conn
	// pending is what Fetch has not yet returned of the last fetch.
	pending []Message
}

func newPartitionReader(k *Kafka, topic string, partition int, offset int64) *partitionReader {
	return &partitionReader{k: k, topic: topic, partition: partition, offset: offset}
}

// connect dials the partition's leader and resolves the offset: a
// committed offset that retention has since removed starts at the oldest
// one kept, as kafka-go's Reader does.
func (r *partitionReader) connect(ctx context.Context) error {
	var err error
	for _, b := range r.k.config.Brokers {
		var conn *kafka.Conn
		if conn, err = r.k.dialer.DialLeader(ctx, "tcp", b, r.topic, r.partition); err != nil {
			continue
		}
		var first, last int64
		if first, last, err = conn.ReadOffsets(); err != nil {
			conn.Close()
			continue
		}
		switch {
		case r.offset == kafka.FirstOffset, r.offset < first:
			r.offset = first
		case r.offset == kafka.LastOffset, r.offset > last:
			// Past the end only after the log was cut back (an unclean
			// leader election): what was beyond is gone for good.
			r.offset = last
		}
		if _, err = conn.Seek(r.offset, kafka.SeekAbsolute|kafka.SeekDontCheck); err != nil {
			conn.Close()
			continue
		}
		r.conn = conn
		return nil
	}
	return fmt.Errorf("cannot reach the leader of %s/%d: %w", r.topic, r.partition, err)
}

func (r *partitionReader) close() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

// fetchBatch appends to dst what one fetch returns: every message the
// leader sent, or none when the partition had nothing new within
// fetchWait. An error leaves the connection closed for the next call to
// redial; messages read before it are returned with it.
func (r *partitionReader) fetchBatch(ctx context.Context, dst []Message) ([]Message, error) {
	if len(r.pending) > 0 {
		dst = append(dst, r.pending...)
		r.pending = r.pending[:0]
		return dst, nil
	}
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if r.conn == nil {
		if err := r.connect(ctx); err != nil {
			return dst, err
		}
	}
	conn := r.conn
	// The leader answers within fetchWait; the deadline beyond it is for
	// a leader that does not answer at all.
	conn.SetReadDeadline(time.Now().Add(fetchWait + r.k.config.ConnectTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	batch := conn.ReadBatchWith(kafka.ReadBatchConfig{MinBytes: 1, MaxBytes: fetchMaxBytes, MaxWait: fetchWait})
	for {
		m, err := batch.ReadMessage()
		if err != nil {
			break
		}
		dst = append(dst, fromKafka(m))
		r.offset = m.Offset + 1
	}
	err := batch.Close()
	switch {
	case err == nil, errors.Is(err, kafka.RequestTimedOut):
		return dst, nil
	case ctx.Err() != nil:
		r.close()
		return dst, ctx.Err()
	case errors.Is(err, kafka.OffsetOutOfRange):
		// Retention removed what was next: connect finds the oldest kept.
		r.close()
		return dst, fmt.Errorf("offset %d of %s/%d is gone (retention): %w", r.offset, r.topic, r.partition, err)
	case errors.Is(err, io.EOF):
		r.close()
		return dst, fmt.Errorf("the leader of %s/%d closed the connection: %w", r.topic, r.partition, err)
	}
	r.close()
	return dst, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.topic, r.partition, r.offset, err)
}

// fetch returns the next message, from the last fetch while it lasts.
func (r *partitionReader) fetch(ctx context.Context) (Message, error) {
	for len(r.pending) == 0 {
		var err error
		if r.pending, err = r.fetchBatch(ctx, r.pending[:0]); err != nil && len(r.pending) == 0 {
			return Message{}, err
		}
	}
	m := r.pending[0]
	r.pending = r.pending[1:]
	return m, nil
}
