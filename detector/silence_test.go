package detector

import (
	"testing"
	"time"

	"github.com/wormsign/wormsign/flow"
)

// TestSilenceIsNotABrokenClock: after hours without traffic, the publisher
// that writes first runs ahead of the others by a whole batch; the others
// must keep holding the watermark back (their clocks are fine: their flows
// are received when they end), or their flows of that batch come late.
func TestSilenceIsNotABrokenClock(t *testing.T) {
	e := NewEngine(testConfig())
	feed := func(origin uint64, lowMin float64, endMins ...float64) {
		for _, m := range endMins {
			f := smtpFlow(user, int(m), at(m), flow.TCPSyn|flow.TCPAck)
			f.TimeReceivedMs = at(m) + 1000
			e.ProcessFrom(origin, at(lowMin), &f)
		}
	}
	for o := uint64(1); o <= 3; o++ {
		feed(o, 0, 0, 1)
	}
	silence := float64(9 * 60) // minutes
	// Publisher 1 writes two batches after the silence before the others
	// write their first.
	feed(1, silence, silence, silence+10, silence+29)
	feed(1, silence+30, silence+30, silence+59)
	feed(2, silence, silence, silence+15, silence+29)
	feed(3, silence, silence+1, silence+20)
	if got := e.Stats().LateFlows; got != 0 {
		t.Errorf("%d late flows after a silence of %s", got, time.Duration(silence)*time.Minute)
	}
}
