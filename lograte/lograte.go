// Package lograte keeps hostile input from flooding the log: a listener
// that logs each bad packet or request would let anyone fill the disk.
package lograte

import (
	"sync"
	"time"
)

// DefaultEvery is how often a Limiter with no Every lets a message of one
// kind through.
const DefaultEvery = 10 * time.Second

// Limiter lets one message of a kind through every Every (DefaultEvery
// when zero) and counts those it held back. The zero value is ready.
type Limiter struct {
	Every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// Allow tells whether a message of kind may be logged at now, and how many
// of its kind were held back since the last one.
func (l *Limiter) Allow(kind string, now time.Time) (heldBack int, ok bool) {
	every := l.Every
	if every <= 0 {
		every = DefaultEvery
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.held = map[string]time.Time{}, map[string]int{}
	}
	if t, seen := l.last[kind]; seen && now.Sub(t) < every && now.Sub(t) >= 0 {
		l.held[kind]++
		return 0, false
	}
	n := l.held[kind]
	l.last[kind], l.held[kind] = now, 0
	return n, true
}
