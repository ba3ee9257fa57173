package lograte

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1_700_000_000, 0)
	if _, ok := l.Allow("bad", t0); !ok {
		t.Fatal("the first message was held back")
	}
	for i := range 3 {
		if _, ok := l.Allow("bad", t0.Add(time.Duration(i+1)*time.Second)); ok {
			t.Fatalf("message %d within DefaultEvery let through", i+2)
		}
	}
	if _, ok := l.Allow("other", t0.Add(time.Second)); !ok {
		t.Error("another kind was held back")
	}
	n, ok := l.Allow("bad", t0.Add(DefaultEvery))
	if !ok || n != 3 {
		t.Errorf("after DefaultEvery: ok=%v held=%d, want through with 3 held back", ok, n)
	}
}
