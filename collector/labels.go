package collector

import (
	"net/netip"
	"sync"
)

// exporterLabels gives the exporter label of the per-exporter metrics:
// the address for the first max addresses seen, "other" for the rest, so
// that datagrams from spoofed sources (NetFlow v5 and sFlow keep no
// state to refuse) cannot grow the metrics without bound. It also saves
// formatting the address of every datagram.
type exporterLabels struct {
	max    int
	mu     sync.RWMutex
	labels map[netip.Addr]string
}

func newExporterLabels(max int) *exporterLabels {
	return &exporterLabels{max: max, labels: map[netip.Addr]string{}}
}

func (l *exporterLabels) label(a netip.Addr) string {
	l.mu.RLock()
	s, ok := l.labels[a]
	l.mu.RUnlock()
	if ok {
		return s
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.labels[a]; ok {
		return s
	}
	if len(l.labels) >= l.max {
		return "other"
	}
	s = a.String()
	l.labels[a] = s
	return s
}
