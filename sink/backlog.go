package sink

import (
	"context"
	"sync"

	"github.com/wormsign/wormsign/bus"
)

// backlog stands between the in-process bus and a webhook target. The
// in-process bus blocks its producer while any group's queue is full, so a
// target down for an hour would stall the detector; the backlog keeps
// reading into memory instead, up to max alerts, then drops the oldest
// (counted). With Kafka no backlog is needed: the broker keeps the alerts.
type backlog struct {
	consumer bus.Consumer
	max      int
	onDrop   func()

	mu     sync.Mutex
	items  []bus.Message
	err    error // why the input ended, once it has
	notify chan struct{}
}

func newBacklog(ctx context.Context, consumer bus.Consumer, max int, onDrop func()) *backlog {
	b := &backlog{consumer: consumer, max: max, onDrop: onDrop, notify: make(chan struct{}, 1)}
	go b.fill(ctx)
	return b
}

func (b *backlog) fill(ctx context.Context) {
	for {
		msg, err := b.consumer.Fetch(ctx)
		b.mu.Lock()
		if err != nil {
			b.err = err
		} else {
			if len(b.items) >= b.max {
				b.items = b.items[1:]
				b.onDrop()
			}
			b.items = append(b.items, msg)
		}
		b.mu.Unlock()
		select {
		case b.notify <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// Fetch returns the oldest alert held, or the input's end once all are
// delivered.
func (b *backlog) Fetch(ctx context.Context) (bus.Message, error) {
	for {
		b.mu.Lock()
		if len(b.items) > 0 {
			msg := b.items[0]
			b.items = b.items[1:]
			b.mu.Unlock()
			return msg, nil
		}
		err := b.err
		b.mu.Unlock()
		if err != nil {
			return bus.Message{}, err
		}
		select {
		case <-b.notify:
		case <-ctx.Done():
			return bus.Message{}, ctx.Err()
		}
	}
}

func (b *backlog) Commit(ctx context.Context, msgs ...bus.Message) error {
	return b.consumer.Commit(ctx, msgs...)
}

func (b *backlog) Close() error { return b.consumer.Close() }
