package bus

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

func TestKafkaPublishConsumeCommit(t *testing.T) {
	cfg := DefaultConfiguration()
	cfg.Brokers = testenv.KafkaBrokers(t)
	cfg.FlowsTopic = testenv.Name(t, "flows")
	cfg.AlertsTopic = testenv.Name(t, "alerts")
	cfg.Partitions = 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, err := NewKafka(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if !k.Durable() {
		t.Error("Kafka bus does not say it is durable")
	}
	// A second NewKafka finds the topics in place.
	if _, err := NewKafka(ctx, cfg); err != nil {
		t.Fatalf("second NewKafka: %v", err)
	}
	p, _ := k.Producer(cfg.FlowsTopic)
	defer p.Close()
	const n = 30
	var msgs []Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, Message{Key: []byte(fmt.Sprintf("k%d", i%5)), Value: []byte(fmt.Sprintf("%d", i)), Origin: uint64(i % 3), LowMs: int64(1000 + i)})
	}
	if err := p.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	group := testenv.Name(t, "g")
	read := func(want int) map[string][]string {
		c, _ := k.Consumer(cfg.FlowsTopic, group)
		defer c.Close()
		byKey := map[string][]string{}
		partitionOf := map[string]int{}
		for i := 0; i < want; i++ {
			m, err := c.Fetch(ctx)
			if err != nil {
				t.Fatalf("fetch %d: %v", i, err)
			}
			if p, ok := partitionOf[string(m.Key)]; ok && p != m.Partition {
				t.Errorf("key %s in partitions %d and %d", m.Key, p, m.Partition)
			}
			partitionOf[string(m.Key)] = m.Partition
			if v, _ := strconv.Atoi(string(m.Value)); m.Origin != uint64(v%3) {
				t.Errorf("message %s has origin %d, want %d", m.Value, m.Origin, v%3)
			} else if m.LowMs != int64(1000+v) {
				t.Errorf("message %s has low watermark %d, want %d", m.Value, m.LowMs, 1000+v)
			}
			byKey[string(m.Key)] = append(byKey[string(m.Key)], string(m.Value))
			if i < 10 {
				if err := c.Commit(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
		}
		return byKey
	}
	first := read(n)
	for k, vs := range first {
		for i := 1; i < len(vs); i++ {
			if len(vs[i]) < len(vs[i-1]) || (len(vs[i]) == len(vs[i-1]) && vs[i] < vs[i-1]) {
				t.Errorf("key %s out of order: %v", k, vs)
			}
		}
	}
	// Only the first ten were committed: a new member of the group gets
	// the other twenty again.
	again := read(n - 10)
	total := 0
	for _, vs := range again {
		total += len(vs)
	}
	if total != n-10 {
		t.Errorf("re-delivered %d messages, want %d", total, n-10)
	}
}
