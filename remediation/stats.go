package remediation

import (
	"slices"
	"sort"
	"time"
)

// States lists every case state, in the ladder's order.
var States = []string{StateOpen, StateNotified, StateWalled, StateBlocked, StateReleased, StateClosed, StateFalsePositive}

// Stats are the abuse desk's measures over the cases in memory.
type Stats struct {
	Cases   int            `json:"cases"`
	ByState map[string]int `json:"by_state"`
	// Times in seconds: median and 90th percentile from open to the first
	// notice, and from the first notice to the release.
	OpenToNotice    Quantiles `json:"open_to_notice"`
	NoticeToRelease Quantiles `json:"notice_to_release"`
	// Walled and Blocked count the cases that reached the step.
	Walled          int `json:"walled"`
	Blocked         int `json:"blocked"`
	SelfReleases    int `json:"self_releases"`
	RepeatOffenders int `json:"repeat_offenders"`
	// FalsePositives per alert kind; Precision per kind is the share of
	// that kind's ended cases that were not marked false positives.
	FalsePositives map[string]int     `json:"false_positives"`
	Precision      map[string]float64 `json:"precision"`
	// Days are the cases opened, notified and released per UTC day, the
	// last 30 days with any.
	Days []DayCount `json:"days"`
}

// Quantiles of a duration, in seconds; N the count.
type Quantiles struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
}

// DayCount is a day of the desk's work.
type DayCount struct {
	Day      string `json:"day"`
	Opened   int    `json:"opened"`
	Notified int    `json:"notified"`
	Released int    `json:"released"`
}

func quantiles(v []float64) Quantiles {
	if len(v) == 0 {
		return Quantiles{}
	}
	sort.Float64s(v)
	at := func(q float64) float64 { return v[min(int(q*float64(len(v))), len(v)-1)] }
	return Quantiles{N: len(v), Median: at(0.5), P90: at(0.9)}
}

// Stats computes the desk's measures.
func (c *Component) Stats() Stats {
	c.mu.Lock()
	cases := c.book.Cases()
	c.mu.Unlock()
	return computeStats(cases)
}

func computeStats(cases []Case) Stats {
	s := Stats{Cases: len(cases), ByState: map[string]int{}, FalsePositives: map[string]int{}, Precision: map[string]float64{}}
	var toNotice, toRelease []float64
	ended := map[string]int{}
	days := map[string]*DayCount{}
	day := func(t time.Time) *DayCount {
		k := t.UTC().Format("2006-01-02")
		if days[k] == nil {
			days[k] = &DayCount{Day: k}
		}
		return days[k]
	}
	for _, cs := range cases {
		s.ByState[cs.State]++
		day(cs.Opened).Opened++
		if !cs.NotifiedAt.IsZero() {
			toNotice = append(toNotice, cs.NotifiedAt.Sub(cs.Opened).Seconds())
			day(cs.NotifiedAt).Notified++
			if !cs.ReleasedAt.IsZero() && cs.ReleasedBy != ActorPolicy {
				toRelease = append(toRelease, cs.ReleasedAt.Sub(cs.NotifiedAt).Seconds())
			}
		}
		if !cs.ReleasedAt.IsZero() {
			day(cs.ReleasedAt).Released++
		}
		if !cs.WalledAt.IsZero() {
			s.Walled++
		}
		if !cs.BlockedAt.IsZero() {
			s.Blocked++
		}
		s.SelfReleases += len(cs.SelfReleases)
		if cs.Reopens > 0 {
			s.RepeatOffenders++
		}
		if cs.ended() {
			for _, k := range cs.Kinds {
				ended[k]++
				if cs.State == StateFalsePositive {
					s.FalsePositives[k]++
				}
			}
		}
	}
	for k, n := range ended {
		s.Precision[k] = 1 - float64(s.FalsePositives[k])/float64(n)
	}
	s.OpenToNotice, s.NoticeToRelease = quantiles(toNotice), quantiles(toRelease)
	keys := make([]string, 0, len(days))
	for k := range days {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) > 30 {
		keys = keys[len(keys)-30:]
	}
	for _, k := range keys {
		s.Days = append(s.Days, *days[k])
	}
	return s
}
