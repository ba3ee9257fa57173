package identity

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/internal/testenv"
)

// Without Kafka the bindings survive a restart in the state file.
func TestStateFileKeepsBindings(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.StateFile = filepath.Join(t.TempDir(), "bindings.jsonl")
	s := NewStore(cfg, bus.NewMemory(16), nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	b := hold("A", "203.0.113.7/32", "a1", at(0))
	if _, err := s.Record(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	again := NewStore(cfg, bus.NewMemory(16), nil)
	if err := again.Start(); err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	if got := resolve(t, again.Table(), "203.0.113.7", at(1)); got != "A" {
		t.Fatalf("after a restart .7 resolves to %q, want A", got)
	}
}

// With Kafka every instance holds the same bindings: one records, another
// started later reads them from the compacted topic, and both follow the
// next record.
func TestKafkaInstancesShareBindings(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	ctx := context.Background()
	kcfg := bus.DefaultConfiguration()
	kcfg.Brokers = brokers
	k, err := bus.NewKafka(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cfg := DefaultConfiguration()
	cfg.Topic = testenv.Name(t, "identity")
	t.Cleanup(func() { k.DeleteTopics(context.Background(), cfg.Topic) })
	writer := NewStore(cfg, k, nil)
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	defer writer.Stop()
	if _, err := writer.Record(ctx, hold("A", "203.0.113.7/32", "a1", at(0))); err != nil {
		t.Fatal(err)
	}
	reader := NewStore(cfg, k, nil)
	moved := make(chan []string, 4)
	reader.OnApply(func(a Applied) { moved <- a.Customers })
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	defer reader.Stop()
	if got := resolve(t, reader.Table(), "203.0.113.7", at(1)); got != "A" {
		t.Fatalf("a later instance resolves .7 to %q, want A", got)
	}
	<-moved
	if _, err := writer.Record(ctx, hold("B", "203.0.113.7/32", "b1", at(5))); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-moved:
		if len(c) != 2 || c[0] != "B" || c[1] != "A" {
			t.Errorf("customers changed %v, want B then A", c)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reader did not follow the new record")
	}
	if got := resolve(t, reader.Table(), "203.0.113.7", at(6)); got != "B" {
		t.Errorf(".7 at +6m resolves to %q on the reader, want B", got)
	}
	if got := resolve(t, reader.Table(), "203.0.113.7", at(4)); got != "A" {
		t.Errorf(".7 at +4m resolves to %q on the reader, want A", got)
	}
}
