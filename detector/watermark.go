package detector

import (
	"math"
	"net/netip"

	"github.com/wormsign/wormsign/flow"
)

// A source is one ordered stream of flows into a partition: one exporter
// and observation domain as written by one collector publisher (Origin).
// Each source's flows arrive roughly in end-time order, but sources run at
// their own pace: the collector's publishers write concurrently, a
// restarted collector replays behind the others, exporters lag. The
// partition's watermark is therefore the slowest active source's progress
// (as Flink and Beam combine their inputs' watermarks), never the newest
// flow seen: one source running ahead must not make another's flows late.
type sourceKey struct {
	origin   uint64
	exporter netip.Addr
	domain   uint32
}

type source struct {
	maxEndMs int64 // newest flow end seen from the source
	// lagMs is how long before the collector received them the source's
	// newest flows ended: hours for an exporter whose clock is wrong,
	// seconds for any other, however far behind it runs.
	lagMs int64
	// progressMs is how far the source has come: the newest progress
	// its messages announced (bus.Message.LowMs) or, without that, its
	// newest flow end. The watermark is the least progress.
	progressMs int64
	lastWallMs int64 // wall clock when the partition last had one of its flows
	// joined tells that the source has once been within the allowed
	// lateness of the watermark. A source seen for the first time behind
	// it (an exporter or publisher that started late, a collector
	// restarted behind the others) is catching up: its flows are not late
	// while it does, and it holds the watermark where it is.
	joined bool
}

// maxSources bounds the sources a partition tracks; beyond it, new ones
// share one entry (they then hold the watermark back together).
const maxSources = 4096

// observeSource records a flow of the source and moves the watermark to
// the slowest active source. A source is active while one of its flows
// reached the partition within source_idle_timeout of wall clock (as
// Flink's idleness, processing time: a source that lags in event time but
// keeps sending must keep holding the others back). Sources idle ten times
// that long are forgotten. Holding the watermark back never changes what
// the engine decides, only when timers fire (see ProcessFrom), so a replay
// at full speed, where no source idles, gives the alerts of the live run.
func (e *Engine) observeSource(origin uint64, lowMs int64, f *flow.Flow) *source {
	key := sourceKey{origin, f.Exporter, f.ObservationDomain}
	// The flows of a message share their source: look it up once.
	s := e.lastSource
	if s == nil || key != e.lastKey {
		s = e.sources[key]
	}
	added := false
	if s == nil {
		if len(e.sources) >= maxSources {
			key = sourceKey{}
			s = e.sources[key]
		}
		if s == nil {
			s = &source{}
			e.sources[key] = s
			added = true
		}
	}
	progress := lowMs
	if progress <= 0 {
		progress = f.EndMs
	}
	advanced := progress > s.progressMs
	s.progressMs = max(s.progressMs, progress)
	s.maxEndMs = max(s.maxEndMs, f.EndMs)
	wasBroken := s.lagMs > e.keepMs
	wasIdle := e.wallMs-s.lastWallMs > e.config.SourceIdleTimeout.Milliseconds()
	if f.TimeReceivedMs > 0 && f.EndMs == s.maxEndMs {
		s.lagMs = f.TimeReceivedMs - f.EndMs
	}
	s.lastWallMs = e.wallMs
	e.lastKey, e.lastSource = key, s
	// The minimum can only rise when the slowest source advances, and a
	// source only joins or leaves the minimum when it is new, comes back
	// from idle, its clock turns broken or sane, or (idle) as the wall
	// clock moves on: rescan then. A slowest source still at or below
	// the runner-up stays the slowest, and the watermark follows it
	// without a scan of every source (with one exporter: on every flow).
	switch {
	case added || e.slowest == nil || wasIdle || wasBroken != (s.lagMs > e.keepMs) || e.wallMs-e.scannedAtMs >= 1000:
		e.rescanSources()
	case advanced && s == e.slowest && s.progressMs <= e.runnerUpMs:
		e.watermark = max(e.watermark, s.progressMs)
	case advanced && s == e.slowest:
		e.rescanSources()
	}
	return s
}

// SetWallClock tells the engine the time on the wall, Unix ms, which
// decides only which sources are idle. The engine reads no clock itself;
// without a call every source stays active.
func (e *Engine) SetWallClock(ms int64) {
	e.wallMs = ms
	if e.wallMs-e.scannedAtMs >= 1000 {
		e.rescanSources()
	}
}

func (e *Engine) rescanSources() {
	e.scannedAtMs = e.wallMs
	idleMs := e.config.SourceIdleTimeout.Milliseconds()
	var slowest *source
	runnerUpMs := int64(math.MaxInt64)
	for k, s := range e.sources {
		idle := e.wallMs - s.lastWallMs
		if idle > idleMs {
			if idle > 10*idleMs {
				delete(e.sources, k)
				if s == e.lastSource {
					e.lastSource = nil
				}
			}
			continue
		}
		if s.lagMs > e.keepMs {
			// Its flows end longer before they are received than any
			// window lasts: a broken exporter clock must not stall event
			// time for everyone. (A source merely behind the others, or
			// a capture with hours of silence, is not that.)
			continue
		}
		switch {
		case slowest == nil:
			slowest = s
		case s.progressMs < slowest.progressMs:
			runnerUpMs = slowest.progressMs
			slowest = s
		default:
			runnerUpMs = min(runnerUpMs, s.progressMs)
		}
	}
	e.slowest, e.runnerUpMs = slowest, runnerUpMs
	if slowest != nil && slowest.progressMs > e.watermark {
		e.watermark = slowest.progressMs
	}
}

// late tells whether a flow of the source is too old to be accounted:
// older than the watermark minus the allowed lateness, unless its source
// is still catching up (and then within the longest window).
func (e *Engine) late(s *source, endMs int64) bool {
	lateness := e.config.AllowedLateness.Milliseconds()
	if !s.joined {
		if s.progressMs >= e.watermark-lateness {
			s.joined = true
		} else {
			return endMs < e.watermark-e.keepMs
		}
	}
	return endMs < e.watermark-lateness
}

// Sources is the number of sources the partition tracks.
func (e *Engine) Sources() int { return len(e.sources) }
