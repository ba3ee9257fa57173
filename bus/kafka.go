package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/wormsign/wormsign/internal/tlsconfig"
	"github.com/wormsign/wormsign/retry"
)

// Kafka is the bus on Apache Kafka brokers.
type Kafka struct {
	config Configuration
	// client and the producers share a transport of this bus: the
	// transport refreshes its metadata cache when it creates a topic, so
	// a producer on it finds the topics NewKafka created at once (on
	// transports of their own the producers' first writes failed with
	// "Unknown Topic Or Partition"). Not kafka-go's process-wide default
	// transport: after a broker restarted, a bus made anew on it got
	// "unexpected EOF" to every CreateTopics for more than its 10 s
	// connect timeout (TestKafkaClusterConsumerBrokerKilled, made right
	// after TestKafkaClusterBrokerKilled had restarted a broker).
	client *kafka.Client
	// transport carries kafka.tls and kafka.sasl, when set, for the
	// client and the producers.
	transport *kafka.Transport
	// dialer carries them for readers, consumer groups and the
	// connections to partition leaders.
	dialer *kafka.Dialer
}

// mechanism is kafka-go's SASL mechanism for kafka.sasl, nil without.
func (c Configuration) mechanism() (sasl.Mechanism, error) {
	switch c.SASL.Mechanism {
	case "":
		return nil, nil
	case "PLAIN":
		return plain.Mechanism{Username: c.SASL.Username, Password: c.SASL.Password}, nil
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		algo := scram.SHA256
		if c.SASL.Mechanism == "SCRAM-SHA-512" {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, c.SASL.Username, c.SASL.Password)
		if err != nil {
			// Never wrap the library's error: it could quote the password.
			return nil, fmt.Errorf("kafka.sasl.password: cannot be used for %s", c.SASL.Mechanism)
		}
		return m, nil
	}
	return nil, fmt.Errorf("kafka.sasl.mechanism: %q, want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASL.Mechanism)
}

// explain adds to err the key it is about: kafka.sasl.* when the brokers
// refused the credentials, kafka.tls.* when the handshake failed.
func (c Configuration) explain(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	switch {
	case errors.Is(err, kafka.SASLAuthenticationFailed), strings.Contains(msg, "SASL Authentication Failed"):
		return "; check kafka.sasl.username and kafka.sasl.password (the brokers refused them)"
	case errors.Is(err, kafka.UnsupportedSASLMechanism), errors.Is(err, kafka.IllegalSASLState):
		return "; check kafka.sasl.mechanism (the brokers do not accept " + c.SASL.Mechanism + " here)"
	}
	if c.TLS.Enabled {
		if why := tlsconfig.Explain("kafka.tls", err); why != "" {
			return "; " + why
		}
	}
	if !c.TLS.Enabled && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		return "; the brokers closed the connection: do they want kafka.tls or kafka.sasl?"
	}
	return ""
}

// NewKafka checks that the brokers answer and creates the flows and alerts
// topics when they are missing.
func NewKafka(ctx context.Context, config Configuration) (*Kafka, error) {
	if len(config.Brokers) == 0 {
		return nil, errors.New("kafka.brokers is empty")
	}
	tlsConfig, err := config.TLS.Build("kafka.tls")
	if err != nil {
		return nil, err
	}
	mechanism, err := config.mechanism()
	if err != nil {
		return nil, err
	}
	k := &Kafka{
		config: config,
		dialer: &kafka.Dialer{Timeout: config.ConnectTimeout, DualStack: true, TLS: tlsConfig, SASLMechanism: mechanism},
	}
	k.transport = &kafka.Transport{DialTimeout: config.ConnectTimeout, TLS: tlsConfig, SASL: mechanism}
	k.client = &kafka.Client{Addr: kafka.TCP(config.Brokers...), Timeout: config.ConnectTimeout, Transport: k.transport}
	ctx, cancel := context.WithTimeout(ctx, config.ConnectTimeout)
	defer cancel()
	if _, err := k.client.Metadata(ctx, &kafka.MetadataRequest{}); err != nil {
		// kafka-go's transport retries a failed handshake until the
		// deadline and reports the deadline; one direct connection tells
		// what went wrong.
		if why := config.explain(err); why == "" && ctx.Err() != nil {
			if conn, derr := k.dialer.DialContext(context.WithoutCancel(ctx), "tcp", config.Brokers[0]); derr != nil {
				err = fmt.Errorf("%w (%v)", err, derr)
			} else {
				conn.Close()
			}
		}
		return nil, fmt.Errorf("cannot reach Kafka brokers %s (kafka.brokers): %w%s",
			strings.Join(config.Brokers, ","), err, config.explain(err))
	}
	for _, topic := range []string{config.FlowsTopic, config.AlertsTopic} {
		if err := k.ensureTopic(ctx, topic); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *Kafka) ensureTopic(ctx context.Context, topic string) error {
	return k.EnsureTopic(ctx, topic, k.config.Partitions, nil)
}

// minInsyncReplicas is the topic setting that EnsureTopic sets from
// kafka.min_insync_replicas.
const minInsyncReplicas = "min.insync.replicas"

func compressionCodec(name string) (compress.Compression, error) {
	switch name {
	case "", "none":
		return 0, nil
	case "lz4":
		return kafka.Lz4, nil
	case "snappy":
		return kafka.Snappy, nil
	case "zstd":
		return kafka.Zstd, nil
	case "gzip":
		return kafka.Gzip, nil
	}
	return 0, fmt.Errorf("unknown codec %q (none, lz4, snappy, zstd, gzip)", name)
}

type kafkaConsumer struct{ r *kafka.Reader }

// Consumer joins group on topic. A new group starts at the oldest retained
// message so that a sink started after the collector misses nothing.
func (k *Kafka) Consumer(topic, group string) (Consumer, error) {
	return &kafkaConsumer{r: k.reader(topic, group, kafka.FirstOffset)}, nil
}

// Tail reads topic from its end as the only member of group, which should
// be unique to the reader: nothing is committed, so a restart starts at the
// end again. The console reads live alerts this way, every instance all of
// them.
func (k *Kafka) Tail(topic, group string) (Consumer, error) {
	return &kafkaConsumer{r: k.reader(topic, group, kafka.LastOffset)}, nil
}

// reader is a group member on topic that commits only when told to (after
// the work succeeded) and starts at start when the group has no offset.
func (k *Kafka) reader(topic, group string, start int64) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:        k.config.Brokers,
		Dialer:         k.dialer,
		GroupID:        group,
		Topic:          topic,
		MinBytes:       1,
		MaxBytes:       16 << 20,
		MaxWait:        250 * time.Millisecond,
		StartOffset:    start,
		CommitInterval: 0, // commit synchronously, after the work succeeded
		// Not kafka-go's default of 30 s: the partitions of a stage that
		// died go to the others, or back to it when systemd restarts it,
		// within 10 s.
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		HeartbeatInterval: time.Second,
	})
}

func (c *kafkaConsumer) Fetch(ctx context.Context) (Message, error) {
	m, err := c.r.FetchMessage(ctx)
	if err != nil {
		// kafka-go reports a closed reader as io.EOF.
		if errors.Is(err, io.EOF) {
			return Message{}, ErrClosed
		}
		return Message{}, err
	}
	return fromKafka(m), nil
}

func (c *kafkaConsumer) Commit(ctx context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	// Only the highest offset per partition matters to Kafka.
	last := map[int]int64{}
	for _, m := range msgs {
		if o, ok := last[m.Partition]; !ok || m.Offset > o {
			last[m.Partition] = m.Offset
		}
	}
	out := make([]kafka.Message, 0, len(last))
	for p, o := range last {
		out = append(out, kafka.Message{Topic: c.r.Config().Topic, Partition: p, Offset: o})
	}
	if err := c.r.CommitMessages(ctx, out...); err != nil {
		return fmt.Errorf("cannot commit offsets on %s: %w", c.r.Config().Topic, err)
	}
	return nil
}

func (c *kafkaConsumer) Close() error { return c.r.Close() }

// Durable is true: Kafka keeps the messages and the committed offsets.
func (k *Kafka) Durable() bool { return true }

// CloseTopic does nothing: a Kafka topic has no end (see Bus).
func (k *Kafka) CloseTopic(string) {}

// Close does nothing: producers and consumers are closed by the stages
// that made them, and the admin client's connections belong to the
// transport (see Kafka.client), which the producers still use.
func (k *Kafka) Close() error { return nil }

// Ping asks the brokers for metadata; /readyz uses it.
func (k *Kafka) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, k.config.ConnectTimeout)
	defer cancel()
	if _, err := k.client.Metadata(ctx, &kafka.MetadataRequest{}); err != nil {
		return fmt.Errorf("kafka brokers do not answer: %w", err)
	}
	return nil
}

// DeleteTopics removes topics, for tests and benchmarks that make their
// own and should not leave them on a shared broker.
func (k *Kafka) DeleteTopics(ctx context.Context, topics ...string) error {
	resp, err := k.client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("cannot delete topics %s: %w", strings.Join(topics, ","), err)
	}
	for t, err := range resp.Errors {
		if err != nil {
			return fmt.Errorf("cannot delete topic %s: %w", t, err)
		}
	}
	return nil
}

// EnsureTopic creates topic when it is missing, with kafka.replication_factor
// replicas, min.insync.replicas from Configuration.MinInsync and the given
// topic configuration (e.g. cleanup.policy=compact); an existing topic is
// left as it is.
func (k *Kafka) EnsureTopic(ctx context.Context, topic string, partitions int, configs map[string]string) error {
	tc := kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: k.config.ReplicationFactor}
	if _, ok := configs[minInsyncReplicas]; !ok {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: minInsyncReplicas, ConfigValue: strconv.Itoa(k.config.MinInsync())})
	}
	for name, value := range configs {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: name, ConfigValue: value})
	}
	// A broker that just restarted, or a controller that moves, can drop
	// the request or answer that it cannot yet: tried again for up to
	// the connect timeout.
	ctx, cancel := context.WithTimeout(ctx, k.config.ConnectTimeout)
	defer cancel()
	return retry.Do(ctx, retry.Backoff{Min: 200 * time.Millisecond, Max: 2 * time.Second}, func(ctx context.Context) error {
		resp, err := k.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{tc}})
		if err == nil {
			if err = resp.Errors[topic]; errors.Is(err, kafka.TopicAlreadyExists) {
				err = nil
			}
		}
		if err != nil {
			err = fmt.Errorf("cannot create topic %s: %w", topic, err)
			if !transient(err) {
				return retry.Permanent(err)
			}
		}
		return err
	}, nil)
}

// transient tells an error worth another try: the connection dropped or
// timed out, or Kafka said the condition is temporary.
func transient(err error) bool {
	var netErr net.Error
	var kafkaErr kafka.Error
	switch {
	case errors.As(err, &kafkaErr):
		// Before net.Error: kafka.Error has the methods of one.
		return kafkaErr.Temporary()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &netErr):
		// net.Error takes in the dial's and the socket's errors
		// (net.OpError, and a bare syscall.Errno such as ECONNREFUSED).
		return true
	}
	return false
}

// Follow calls fn for every message of topic, partition by partition in
// order, from the oldest retained on, and then for each new one until ctx
// ends, without a consumer group: every caller reads everything. caughtUp
// (may be nil) is called once every partition has been read up to where
// it ended when Follow was called. fn is never called concurrently.
func (k *Kafka) Follow(ctx context.Context, topic string, fn func(Message) error, caughtUp func()) error {
	meta, err := k.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("cannot list partitions of %s: %w", topic, err)
	}
	var mu sync.Mutex
	var pending int
	var once sync.Once
	done := func() {
		if caughtUp != nil {
			once.Do(caughtUp)
		}
	}
	type part struct {
		id         int
		first, end int64
	}
	var parts []part
	for _, t := range meta.Topics {
		if t.Error != nil {
			return fmt.Errorf("cannot list partitions of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			var conn *kafka.Conn
			for _, b := range k.config.Brokers {
				if conn, err = k.dialer.DialLeader(ctx, "tcp", b, topic, p.ID); err == nil {
					break
				}
			}
			if err != nil {
				return fmt.Errorf("cannot reach the leader of %s/%d: %w", topic, p.ID, err)
			}
			first, end, err := conn.ReadOffsets()
			conn.Close()
			if err != nil {
				return fmt.Errorf("cannot find offsets in %s/%d: %w", topic, p.ID, err)
			}
			parts = append(parts, part{p.ID, first, end})
			if end > first {
				pending++
			}
		}
	}
	if pending == 0 {
		done()
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(parts))
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers: k.config.Brokers, Dialer: k.dialer, Topic: topic, Partition: p.id,
				MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond,
			})
			defer r.Close()
			if err := r.SetOffset(p.first); err != nil {
				errs <- fmt.Errorf("cannot seek %s/%d: %w", topic, p.id, err)
				return
			}
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("cannot read %s/%d: %w", topic, p.id, err)
					}
					return
				}
				mu.Lock()
				err = fn(fromKafka(m))
				if m.Offset == p.end-1 {
					if pending--; pending == 0 {
						done()
					}
				}
				mu.Unlock()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
