package bus

import (
	"context"
	"sync"
)

// Memory is the in-process bus of `wormsign run` without brokers and of
// `wormsign replay`. Each consumer group of a topic gets its own bounded
// queue; Publish blocks while a queue is full, which is the back-pressure the
// collector turns into counted drops at the UDP edge. Consumers must exist
// before messages are published: there is no retention to read back from.
type Memory struct {
	mu       sync.Mutex
	queueLen int
	topics   map[string]*memoryTopic
}

type memoryTopic struct {
	groups map[string]*memoryQueue
	closed chan struct{}
	once   sync.Once
}

type memoryQueue struct {
	ch     chan Message
	offset int64
}

// NewMemory returns an in-process bus whose queues hold queueLen messages.
func NewMemory(queueLen int) *Memory {
	return &Memory{queueLen: queueLen, topics: map[string]*memoryTopic{}}
}

func (m *Memory) topic(name string) *memoryTopic {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[name]
	if t == nil {
		t = &memoryTopic{groups: map[string]*memoryQueue{}, closed: make(chan struct{})}
		m.topics[name] = t
	}
	return t
}

type memoryProducer struct {
	bus   *Memory
	topic *memoryTopic
}

// Producer returns a producer for topic.
func (m *Memory) Producer(topic string) (Producer, error) {
	return &memoryProducer{bus: m, topic: m.topic(topic)}, nil
}

func (p *memoryProducer) Publish(ctx context.Context, msgs ...Message) error {
	p.bus.mu.Lock()
	groups := make([]*memoryQueue, 0, len(p.topic.groups))
	for _, q := range p.topic.groups {
		groups = append(groups, q)
	}
	p.bus.mu.Unlock()
	for _, q := range groups {
		for _, msg := range msgs {
			select {
			case q.ch <- msg:
			case <-ctx.Done():
				return ctx.Err()
			case <-p.topic.closed:
				return ErrClosed
			}
		}
	}
	return nil
}

// Partitions is 1: the in-process bus keeps one queue per group.
func (p *memoryProducer) Partitions(context.Context) (int, error) { return 1, nil }

func (p *memoryProducer) Close() error { return nil }

type memoryConsumer struct {
	topic *memoryTopic
	q     *memoryQueue
}

// Consumer joins group on topic; every group sees every message.
func (m *Memory) Consumer(topic, group string) (Consumer, error) {
	t := m.topic(topic)
	m.mu.Lock()
	defer m.mu.Unlock()
	q := t.groups[group]
	if q == nil {
		q = &memoryQueue{ch: make(chan Message, m.queueLen)}
		t.groups[group] = q
	}
	return &memoryConsumer{topic: t, q: q}, nil
}

func (c *memoryConsumer) Fetch(ctx context.Context) (Message, error) {
	// Messages queued before the topic closed are still delivered: that is
	// how replay drains the pipeline stage by stage.
	select {
	case msg := <-c.q.ch:
		return c.number(msg), nil
	default:
	}
	select {
	case msg := <-c.q.ch:
		return c.number(msg), nil
	case <-ctx.Done():
		return Message{}, ctx.Err()
	case <-c.topic.closed:
		select {
		case msg := <-c.q.ch:
			return c.number(msg), nil
		default:
			return Message{}, ErrClosed
		}
	}
}

// number gives the message its offset; one reader per group in the
// embedded mode, so it needs no lock.
func (c *memoryConsumer) number(msg Message) Message {
	msg.Offset = c.q.offset
	c.q.offset++
	return msg
}

// Commit is a no-op: the in-process bus keeps nothing across restarts.
func (c *memoryConsumer) Commit(context.Context, ...Message) error { return nil }
func (c *memoryConsumer) Close() error                             { return nil }

// Durable is false: the queues live in this process only.
func (m *Memory) Durable() bool { return false }

// CloseTopic ends a topic: its producers fail with ErrClosed and its
// consumers get ErrClosed once they have read what was queued.
func (m *Memory) CloseTopic(name string) {
	t := m.topic(name)
	t.once.Do(func() { close(t.closed) })
}

// Close closes every topic.
func (m *Memory) Close() error {
	m.mu.Lock()
	names := make([]string, 0, len(m.topics))
	for name := range m.topics {
		names = append(names, name)
	}
	m.mu.Unlock()
	for _, name := range names {
		m.CloseTopic(name)
	}
	return nil
}
