package console

import (
	"context"
	"errors"
	"net/netip"
	"sort"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// Ack is an acknowledgement of an incident by a NOC engineer.
type Ack struct {
	By   string    `json:"by"`
	Note string    `json:"note"`
	At   time.Time `json:"at"`
}

// Incident is the latest event of an incident, in the alert JSON contract,
// plus its latest acknowledgement (null when none).
type Incident struct {
	alert.Alert
	Ack *Ack `json:"ack"`
}

// Point is one minute of a subscriber's traffic.
type Point struct {
	Minute           time.Time `json:"minute"`
	Flows            uint64    `json:"flows"`
	SMTPFlows        uint64    `json:"smtp_flows"`
	Destinations     uint64    `json:"destinations"`
	SMTPDestinations uint64    `json:"smtp_destinations"`
	// Bytes and Packets are scaled by sampling, as flows are.
	Bytes   uint64 `json:"bytes"`
	Packets uint64 `json:"packets"`
}

// Talker is one subscriber of the top TCP/25 list (GET /api/v1/top/smtp).
type Talker struct {
	SubscriberIP     string `json:"subscriber_ip"`
	SMTPDestinations uint64 `json:"smtp_destinations"`
	SMTPFlows        uint64 `json:"smtp_flows"`
	Flows            uint64 `json:"flows"`
}

// TopTalker is one subscriber of a top list (GET /api/v1/top): its
// traffic since the list's start, all of it whatever the list ranks by.
type TopTalker struct {
	SubscriberIP     string `json:"subscriber_ip"`
	Flows            uint64 `json:"flows"`
	Bytes            uint64 `json:"bytes"`
	Packets          uint64 `json:"packets"`
	Destinations     uint64 `json:"destinations"`
	SMTPFlows        uint64 `json:"smtp_flows"`
	SMTPDestinations uint64 `json:"smtp_destinations"`
}

// topKinds are what a top list ranks by: the figure, then the one that
// breaks its ties (the subscriber's label breaks the rest).
var topKinds = map[string][2]string{
	"smtp":         {"smtp_destinations", "smtp_flows"},
	"flows":        {"flows", "bytes"},
	"destinations": {"destinations", "flows"},
	"bytes":        {"bytes", "packets"},
	"packets":      {"packets", "bytes"},
}

// topValue is one figure of a talker, by its JSON name.
func topValue(t *TopTalker, name string) uint64 {
	switch name {
	case "flows":
		return t.Flows
	case "bytes":
		return t.Bytes
	case "packets":
		return t.Packets
	case "destinations":
		return t.Destinations
	case "smtp_flows":
		return t.SMTPFlows
	}
	return t.SMTPDestinations
}

// topBefore is the order of the top list of kind.
func topBefore(a, b *TopTalker, kind string) bool {
	for _, k := range topKinds[kind] {
		if va, vb := topValue(a, k), topValue(b, k); va != vb {
			return va > vb
		}
	}
	return a.SubscriberIP < b.SubscriberIP
}

// errNotFound is what a store answers for an unknown incident.
var errNotFound = errors.New("not found")

// Store is where the console reads history: ClickHouse in a Kafka +
// ClickHouse deployment, memory in the embedded one.
type Store interface {
	// Events returns every event of the incidents that have an event
	// whose window ends at or after since, in no particular order.
	Events(ctx context.Context, since time.Time) ([]alert.Alert, error)
	// IncidentEvents returns the events of one incident (errNotFound if
	// none).
	IncidentEvents(ctx context.Context, id string) ([]alert.Alert, error)
	// Acks returns the acknowledgements of the given incidents, oldest
	// first.
	Acks(ctx context.Context, ids []string) (map[string][]Ack, error)
	// AddAck records an acknowledgement.
	AddAck(ctx context.Context, id string, ack Ack) error
	// Series returns a subscriber's minutes in [from, to), oldest first,
	// minutes without traffic left out.
	Series(ctx context.Context, ip netip.Addr, from, to time.Time) ([]Point, error)
	// Top returns the subscribers that rank highest since from by kind
	// (a key of topKinds), in topBefore's order, leaving out those whose
	// figure is zero (kind smtp: those without TCP/25 flows).
	Top(ctx context.Context, kind string, from time.Time, limit int) ([]TopTalker, error)
}

// stateRank orders the events of one incident that end together.
func stateRank(s string) int {
	switch s {
	case alert.StateOpen:
		return 0
	case alert.StateUpdate:
		return 1
	}
	return 2
}

// sortEvents puts an incident's events oldest first.
func sortEvents(events []alert.Alert) {
	sort.SliceStable(events, func(i, j int) bool {
		a, b := &events[i], &events[j]
		if !a.WindowEnd.Equal(b.WindowEnd) {
			return a.WindowEnd.Before(b.WindowEnd)
		}
		if ra, rb := stateRank(a.State), stateRank(b.State); ra != rb {
			return ra < rb
		}
		return a.DistinctDsts < b.DistinctDsts
	})
}

// latest reduces events to the latest event of each incident.
func latest(events []alert.Alert) map[string]alert.Alert {
	byID := map[string][]alert.Alert{}
	for _, e := range events {
		byID[e.ID] = append(byID[e.ID], e)
	}
	out := make(map[string]alert.Alert, len(byID))
	for id, evs := range byID {
		sortEvents(evs)
		out[id] = evs[len(evs)-1]
	}
	return out
}

// isOpen tells whether an incident (its latest event) is still open.
func isOpen(a *alert.Alert) bool { return a.State != alert.StateResolved }

// before is the order of the incident list: open incidents first, by score
// highest first; then resolved ones, the most recently ended first; the id
// breaks ties, so the order is total and a cursor names a place in it.
func before(a, b *alert.Alert) bool {
	if oa, ob := isOpen(a), isOpen(b); oa != ob {
		return oa
	}
	if isOpen(a) {
		if a.Score != b.Score {
			return a.Score > b.Score
		}
	} else if !a.WindowEnd.Equal(b.WindowEnd) {
		return a.WindowEnd.After(b.WindowEnd)
	}
	return a.ID < b.ID
}

// normalise puts an event's times in UTC and its sample list never nil, as
// the alert JSON has them.
func normalise(a *alert.Alert) {
	for _, t := range []*time.Time{&a.WindowStart, &a.WindowEnd, &a.FirstSeen, &a.LastSeen} {
		*t = t.UTC()
	}
	if a.Evidence.SampleDsts == nil {
		a.Evidence.SampleDsts = []string{}
	}
}
