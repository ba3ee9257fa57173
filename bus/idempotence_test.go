package bus

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/wormsign/wormsign/internal/testenv"
)

// A batch sent without an answer keeps its sequence number for its retry,
// and only for it: another batch after it gets a new producer id.
func TestIdempotentSessionSequences(t *testing.T) {
	client := &kafka.Client{Addr: kafka.TCP(testenv.KafkaBrokers(t)...), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var s idempotentSession
	a, b := batchPrint{records: 3, sum: 1}, batchPrint{records: 3, sum: 2}

	first, err := s.stamp(ctx, client, 0, a)
	if err != nil {
		t.Fatal(err)
	}
	if first.id < 0 || first.sequence != 0 {
		t.Fatalf("first stamp %+v, want a producer id and sequence 0", first)
	}
	s.advance(0, first, 3)
	second, _ := s.stamp(ctx, client, 0, b)
	if second.id != first.id || second.sequence != 3 {
		t.Fatalf("after 3 records: %+v, want id %d sequence 3", second, first.id)
	}
	// second is not answered: its retry gets the same stamp...
	if retry, _ := s.stamp(ctx, client, 0, b); retry != second {
		t.Errorf("retry of the unanswered batch: %+v, want %+v", retry, second)
	}
	// ...another partition goes on in the same session...
	if other, _ := s.stamp(ctx, client, 1, a); other.id != first.id || other.sequence != 0 {
		t.Errorf("partition 1: %+v, want id %d sequence 0", other, first.id)
	}
	// ...and another batch on partition 0 may not take it over.
	moved, err := s.stamp(ctx, client, 0, a)
	if err != nil {
		t.Fatal(err)
	}
	if moved.id == first.id && moved.epoch == first.epoch {
		t.Errorf("a batch after an unanswered other one kept the session: %+v", moved)
	}
	if moved.sequence != 0 {
		t.Errorf("new session starts at sequence %d, want 0", moved.sequence)
	}
	// An answer for a stamp of the old session changes nothing.
	s.advance(1, first, 5)
	if next, _ := s.stamp(ctx, client, 1, a); next.sequence != 0 {
		t.Errorf("partition 1 in the new session: sequence %d, want 0", next.sequence)
	}
}

// A failed Publish leaves what it did not write for the caller's retry
// with the same messages, and nothing for other calls.
func TestUnfinishedCalls(t *testing.T) {
	var u unfinishedCalls
	msgs := make([]Message, 4)
	u.put(&msgs[0], 4, msgs[2:])
	if _, ok := u.take(&msgs[0], 3); ok {
		t.Error("a call of another length took the rest")
	}
	if _, ok := u.take(&msgs[1], 4); ok {
		t.Error("a call starting elsewhere took the rest")
	}
	rest, ok := u.take(&msgs[0], 4)
	if !ok || len(rest) != 2 || &rest[0] != &msgs[2] {
		t.Fatalf("the retry got %v %v", rest, ok)
	}
	if _, ok := u.take(&msgs[0], 4); ok {
		t.Error("the rest was handed out twice")
	}
	for i := range maxUnfinished + 10 {
		m := make([]Message, 1)
		u.put(&m[0], 1+i, nil)
	}
	if len(u.calls) > maxUnfinished {
		t.Errorf("%d unfinished calls kept, at most %d", len(u.calls), maxUnfinished)
	}
}
