package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/retry"
)

// flakyFetcher fails before every second message, then ends.
type flakyFetcher struct {
	msgs   []Message
	failed bool
}

func (f *flakyFetcher) Fetch(context.Context) (Message, error) {
	if len(f.msgs) == 0 {
		return Message{}, ErrClosed
	}
	if !f.failed && f.msgs[0].Offset%2 == 1 {
		f.failed = true
		return Message{}, errors.New("group coordinator moved")
	}
	f.failed = false
	m := f.msgs[0]
	f.msgs = f.msgs[1:]
	return m, nil
}

func TestFeedWaitsOutErrorsUntilTheEnd(t *testing.T) {
	f := &flakyFetcher{}
	for i := range 5 {
		f.msgs = append(f.msgs, Message{Offset: int64(i)})
	}
	out := make(chan Message)
	var waits []time.Duration
	go Feed(context.Background(), f, retry.Backoff{Min: time.Millisecond, Max: time.Millisecond},
		func(err error, wait time.Duration) { waits = append(waits, wait) }, out)
	var got []int64
	for m := range out { // Feed closes out at the end of the input
		got = append(got, m.Offset)
	}
	if diff := cmp.Diff([]int64{0, 1, 2, 3, 4}, got); diff != "" {
		t.Errorf("offsets (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]time.Duration{time.Millisecond, time.Millisecond}, waits); diff != "" {
		t.Errorf("waits after failed fetches (-want +got):\n%s", diff)
	}
}

func TestFeedStopsWithContext(t *testing.T) {
	m := NewMemory(4)
	c, _ := m.Consumer("t", "g")
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Message)
	done := make(chan struct{})
	go func() {
		Feed(ctx, c, retry.Backoff{Min: time.Millisecond}, nil, out)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Feed did not end with its context")
	}
	if _, ok := <-out; ok {
		t.Error("out not closed")
	}
}

// Memory is not durable; CloseTopic lets its consumers drain what is
// queued, then ends their input.
func TestMemoryCloseTopicDrains(t *testing.T) {
	m := NewMemory(4)
	if m.Durable() {
		t.Error("in-process bus claims to be durable")
	}
	c, _ := m.Consumer("t", "g")
	p, _ := m.Producer("t")
	if err := p.Publish(context.Background(), Message{Value: []byte("a")}, Message{Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	m.CloseTopic("t")
	var got []string
	for {
		msg, err := FetchRetrying(context.Background(), c, retry.Backoff{}, func(err error, _ time.Duration) {
			t.Errorf("fetch error %v", err)
		})
		if errors.Is(err, ErrClosed) {
			break
		}
		got = append(got, string(msg.Value))
	}
	if diff := cmp.Diff([]string{"a", "b"}, got); diff != "" {
		t.Errorf("drained (-want +got):\n%s", diff)
	}
}
