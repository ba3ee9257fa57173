package console

import (
	"container/list"
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

// memoryStore is the console's history without ClickHouse: the incidents
// of the alerts topic and per-subscriber minute counters of the flows
// topic, both bounded. It is what `wormsign run` on its embedded default
// shows; it starts empty on every start, as the in-process bus does.
type memoryStore struct {
	config      Configuration
	subscribers network.Subscribers

	mu        sync.Mutex
	incidents map[string]*memIncident
	acks      map[string][]Ack
	subs      map[netip.Addr]*list.Element // of *memSubscriber, most recent first
	lru       *list.List
}

type memIncident struct {
	events []alert.Alert
	last   time.Time // window end of the latest event
}

type memSubscriber struct {
	ip      netip.Addr
	minutes map[int64]*memMinute // by Unix minute
	lastMin int64
}

type memMinute struct {
	flows, smtpFlows uint64
	bytes, packets   uint64 // scaled by sampling, as flows_1m
	dsts, smtpDsts   map[netip.Addr]struct{}
	dstsOver         uint64 // beyond the set's cap: lower bound
	smtpOver         uint64
}

func newMemoryStore(config Configuration, subscribers network.Subscribers) *memoryStore {
	return &memoryStore{
		config: config, subscribers: subscribers,
		incidents: map[string]*memIncident{}, acks: map[string][]Ack{},
		subs: map[netip.Addr]*list.Element{}, lru: list.New(),
	}
}

func (s *memoryStore) incidentCount() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.incidents)
}

func (s *memoryStore) subscriberCount() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// addAlert records one alert event.
func (s *memoryStore) addAlert(a alert.Alert) {
	normalise(&a)
	s.mu.Lock()
	defer s.mu.Unlock()
	inc := s.incidents[a.ID]
	if inc == nil {
		inc = &memIncident{}
		s.incidents[a.ID] = inc
	}
	inc.events = append(inc.events, a)
	if a.WindowEnd.After(inc.last) {
		inc.last = a.WindowEnd
	}
	if len(s.incidents) > s.config.MaxIncidents {
		s.evictIncident()
	}
}

// evictIncident forgets the resolved incident that ended first, or the
// oldest open one when none is resolved.
func (s *memoryStore) evictIncident() {
	var victim string
	var vResolved bool
	var vLast time.Time
	for id, inc := range s.incidents {
		resolved := inc.events[len(inc.events)-1].State == alert.StateResolved
		if victim == "" || resolved && !vResolved || resolved == vResolved && inc.last.Before(vLast) {
			victim, vResolved, vLast = id, resolved, inc.last
		}
	}
	delete(s.incidents, victim)
	delete(s.acks, victim)
}

// addFlows counts flows into their subscriber's minute.
func (s *memoryStore) addFlows(flows []flow.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range flows {
		f := &flows[i]
		ip := s.subscribers.Key(f.SrcAddr, f.DstAddr).Unmap()
		if !ip.IsValid() {
			continue
		}
		min := f.EndMs / 60000
		sub := s.subscriber(ip)
		if min > sub.lastMin {
			sub.lastMin = min
			horizon := min - int64(s.config.History/time.Minute)
			for m := range sub.minutes {
				if m <= horizon {
					delete(sub.minutes, m)
				}
			}
		}
		mm := sub.minutes[min]
		if mm == nil {
			mm = &memMinute{dsts: map[netip.Addr]struct{}{}, smtpDsts: map[netip.Addr]struct{}{}}
			sub.minutes[min] = mm
		}
		scale := f.Scale()
		mm.flows += scale
		mm.bytes = flow.SaturatingAdd(mm.bytes, f.ScaledBytes())
		mm.packets = flow.SaturatingAdd(mm.packets, flow.SaturatingMul(f.Packets, scale))
		dst := f.DstAddr.Unmap()
		addCapped(mm.dsts, &mm.dstsOver, dst, s.config.MaxMinuteDestinations)
		if f.Proto == 6 && f.DstPort == 25 {
			mm.smtpFlows += scale
			addCapped(mm.smtpDsts, &mm.smtpOver, dst, s.config.MaxMinuteDestinations)
		}
	}
}

func addCapped(set map[netip.Addr]struct{}, over *uint64, a netip.Addr, max int) {
	if _, ok := set[a]; ok {
		return
	}
	if len(set) < max {
		set[a] = struct{}{}
		return
	}
	*over++
}

// subscriber returns ip's counters, made most recent; the least recent
// subscriber is forgotten beyond MaxSubscribers.
func (s *memoryStore) subscriber(ip netip.Addr) *memSubscriber {
	if e, ok := s.subs[ip]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*memSubscriber)
	}
	sub := &memSubscriber{ip: ip, minutes: map[int64]*memMinute{}}
	s.subs[ip] = s.lru.PushFront(sub)
	if s.lru.Len() > s.config.MaxSubscribers {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.subs, old.Value.(*memSubscriber).ip)
	}
	return sub
}

func (s *memoryStore) Events(_ context.Context, since time.Time) ([]alert.Alert, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []alert.Alert
	for _, inc := range s.incidents {
		if inc.last.Before(since) {
			continue
		}
		out = append(out, inc.events...)
	}
	return out, nil
}

func (s *memoryStore) IncidentEvents(_ context.Context, id string) ([]alert.Alert, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc := s.incidents[id]
	if inc == nil {
		return nil, errNotFound
	}
	return append([]alert.Alert(nil), inc.events...), nil
}

func (s *memoryStore) Acks(_ context.Context, ids []string) (map[string][]Ack, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]Ack{}
	for _, id := range ids {
		if acks := s.acks[id]; len(acks) > 0 {
			out[id] = append([]Ack(nil), acks...)
		}
	}
	return out, nil
}

func (s *memoryStore) AddAck(_ context.Context, id string, ack Ack) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.incidents[id] == nil {
		return errNotFound
	}
	s.acks[id] = append(s.acks[id], ack)
	return nil
}

func (s *memoryStore) Series(_ context.Context, ip netip.Addr, from, to time.Time) ([]Point, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.subs[s.subscribers.Subscriber(ip)]
	if !ok {
		return nil, nil
	}
	sub := e.Value.(*memSubscriber)
	var out []Point
	for m, mm := range sub.minutes {
		t := time.Unix(m*60, 0).UTC()
		if t.Before(from) || !t.Before(to) {
			continue
		}
		out = append(out, Point{
			Minute: t, Flows: mm.flows, SMTPFlows: mm.smtpFlows,
			Destinations:     uint64(len(mm.dsts)) + mm.dstsOver,
			SMTPDestinations: uint64(len(mm.smtpDsts)) + mm.smtpOver,
			Bytes:            mm.bytes, Packets: mm.packets,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Minute.Before(out[j].Minute) })
	return out, nil
}

func (s *memoryStore) Top(_ context.Context, kind string, from time.Time, limit int) ([]TopTalker, error) {
	by, ok := topKinds[kind]
	if !ok {
		return nil, fmt.Errorf("no top list of %q", kind)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fromMin := from.Unix() / 60
	type ranked struct {
		t   TopTalker
		sub *memSubscriber
	}
	var all []ranked
	for ip, e := range s.subs {
		sub := e.Value.(*memSubscriber)
		t := TopTalker{SubscriberIP: s.subscribers.Label(ip)}
		for m, mm := range sub.minutes {
			if m < fromMin {
				continue
			}
			t.Flows += mm.flows
			t.SMTPFlows += mm.smtpFlows
			t.Bytes = flow.SaturatingAdd(t.Bytes, mm.bytes)
			t.Packets = flow.SaturatingAdd(t.Packets, mm.packets)
		}
		if t.Flows == 0 || kind == "smtp" && t.SMTPFlows == 0 {
			continue
		}
		// Distinct counts are unions over the minutes: counted for every
		// subscriber only where the list ranks by one.
		switch kind {
		case "smtp":
			t.SMTPDestinations = sub.distinct(fromMin, true)
		case "destinations":
			t.Destinations = sub.distinct(fromMin, false)
		}
		if topValue(&t, by[0]) == 0 {
			continue
		}
		all = append(all, ranked{t, sub})
	}
	sort.Slice(all, func(i, j int) bool { return topBefore(&all[i].t, &all[j].t, kind) })
	if len(all) > limit {
		all = all[:limit]
	}
	out := make([]TopTalker, len(all))
	for i := range all {
		out[i] = all[i].t
		sub := all[i].sub
		if kind != "destinations" {
			out[i].Destinations = sub.distinct(fromMin, false)
		}
		if kind != "smtp" && out[i].SMTPFlows > 0 {
			out[i].SMTPDestinations = sub.distinct(fromMin, true)
		}
	}
	return out, nil
}

// distinct counts the subscriber's distinct destinations (TCP/25 ones
// with smtp) from minute fromMin on; beyond a minute's cap, a lower bound.
func (sub *memSubscriber) distinct(fromMin int64, smtp bool) uint64 {
	dsts := map[netip.Addr]struct{}{}
	var over uint64
	for m, mm := range sub.minutes {
		if m < fromMin {
			continue
		}
		set, o := mm.dsts, mm.dstsOver
		if smtp {
			set, o = mm.smtpDsts, mm.smtpOver
		}
		for d := range set {
			dsts[d] = struct{}{}
		}
		over = max(over, o)
	}
	return uint64(len(dsts)) + over
}
