package detector

import "time"

// Clock is the wall clock as the detector sees it: the time, and a tick
// once a second of it. Event time never comes from it; only what happens
// without traffic does (idle sources, idle partitions).
type Clock interface {
	Now() time.Time
	// Ticker returns the ticks and a function that stops them.
	Ticker() (<-chan time.Time, func())
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) Ticker() (<-chan time.Time, func()) {
	t := time.NewTicker(time.Second)
	return t.C, t.Stop
}
