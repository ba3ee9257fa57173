package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

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

// TestKafkaProducerSplitsByPartition publishes more than kafka.batch_bytes
// per partition in one call, with each codec: the brokers take every
// record batch, and every message arrives once, in order per key,
// in the partition the Java client would choose for its key, stamped with
// the time of publishing; a closed producer refuses.
func TestKafkaProducerSplitsByPartition(t *testing.T) {
	for _, codec := range []string{"none", "lz4", "snappy", "zstd", "gzip"} {
		t.Run(codec, func(t *testing.T) { testProducerSplits(t, codec) })
	}
}

func testProducerSplits(t *testing.T, codec string) {
	cfg := DefaultConfiguration()
	cfg.Brokers = testenv.KafkaBrokers(t)
	cfg.FlowsTopic = testenv.Name(t, "flows")
	cfg.AlertsTopic = testenv.Name(t, "alerts")
	cfg.Partitions = 4
	cfg.BatchBytes = 16 << 10
	cfg.Compression = codec
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, err := NewKafka(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := k.Producer(cfg.FlowsTopic)
	const n, keys = 2000, 37
	var msgs []Message
	for i := range n {
		value := append([]byte(strconv.Itoa(i)+" "), make([]byte, 1000)...)
		msgs = append(msgs, Message{Key: []byte(fmt.Sprintf("subscriber-%d", i%keys)), Value: value})
	}
	before := time.Now().Add(-time.Second)
	if err := p.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := p.Publish(ctx, msgs[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("publish after close: %v, want ErrClosed", err)
	}
	c, _ := k.Consumer(cfg.FlowsTopic, testenv.Name(t, "g"))
	defer c.Close()
	last := map[string]int{}
	for i := range n {
		m, err := c.Fetch(ctx)
		if err != nil {
			t.Fatalf("fetch %d of %d: %v", i, n, err)
		}
		if want := (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: m.Key}, 0, 1, 2, 3); m.Partition != want {
			t.Errorf("key %s in partition %d, want %d", m.Key, m.Partition, want)
		}
		v, _ := strconv.Atoi(strings.Fields(string(m.Value))[0])
		if prev, ok := last[string(m.Key)]; ok && v <= prev {
			t.Errorf("key %s: %d after %d", m.Key, v, prev)
		}
		last[string(m.Key)] = v
		if at := time.UnixMilli(m.Time); at.Before(before) || at.After(time.Now()) {
			t.Errorf("message time %s, want the time of publishing", at)
		}
	}
	if len(last) != keys {
		t.Errorf("%d keys arrived, want %d", len(last), keys)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if m, err := c.Fetch(short); err == nil {
		t.Errorf("message beyond the %d published: %s", n, m.Key)
	}
}

// TestTransientErrors: what EnsureTopic tries again (a broker that just
// restarted drops the connection or is not yet ready) and what it reports
// at once (a request the brokers will refuse however often it is sent).
func TestTransientErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("cannot create topic x: %w", io.ErrUnexpectedEOF), true},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{fmt.Errorf("cannot create topic x: %w", kafka.NotController), true},
		{fmt.Errorf("cannot create topic x: %w", kafka.LeaderNotAvailable), true},
		{fmt.Errorf("cannot create topic x: %w", kafka.InvalidReplicationFactor), false},
		{fmt.Errorf("cannot create topic x: %w", kafka.TopicAuthorizationFailed), false},
		{errors.New("cannot create topic x: something else"), false},
	} {
		if got := transient(c.err); got != c.want {
			t.Errorf("transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
