package identity

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/retry"
)

// NATRecord is one binding a carrier-grade NAT logged (RFC 8158): a port
// block, an address or a single session allocated (Create) or released.
type NATRecord struct {
	Exporter netip.Addr
	TimeMs   int64
	Create   bool
	Inside   netip.Addr
	Outside  netip.Addr
	// PortLo and PortHi are the outside ports bound, inclusive.
	PortLo, PortHi uint16
}

// CGNAT records a NAT's port blocks as bindings, so that a flow seen with
// a public address and port resolves to the inside address behind it at
// the flow's time. The collector offers records as it decodes them; they
// are recorded in batches by a goroutine of its own, so that a slow bus
// never holds up the UDP readers (a full queue drops and counts).
type CGNAT struct {
	config CGNATConfiguration
	store  *Store
	logger *slog.Logger
	queue  chan NATRecord

	offered, dropped, recorded prometheus.Counter
	cancel                     context.CancelFunc
	wg                         sync.WaitGroup
}

// natQueue bounds the records waiting to be recorded.
const natQueue = 16384

// NewCGNAT prepares the recorder; it starts nothing.
func NewCGNAT(config CGNATConfiguration, store *Store, logger *slog.Logger, reg prometheus.Registerer) *CGNAT {
	if logger == nil {
		logger = slog.Default()
	}
	n := &CGNAT{config: config, store: store, logger: logger, queue: make(chan NATRecord, natQueue),
		offered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_nat_records_total", Help: "NAT logging records that name a binding, offered by the collector."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_nat_records_dropped_total", Help: "NAT logging records dropped: the queue to the bindings was full."}),
		recorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_identity_nat_bindings_recorded_total", Help: "Port-block bindings recorded from NAT logging records."}),
	}
	if reg != nil {
		reg.MustRegister(n.offered, n.dropped, n.recorded)
	}
	return n
}

// Offer queues r without blocking; false when the queue is full.
func (n *CGNAT) Offer(r NATRecord) bool {
	n.offered.Inc()
	select {
	case n.queue <- r:
		return true
	default:
		n.dropped.Inc()
		return false
	}
}

// Start records queued records until Stop.
func (n *CGNAT) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.run(ctx) }()
}

// Stop records what is queued (for a few seconds at most) and stops.
func (n *CGNAT) Stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.wg.Wait()
}

func (n *CGNAT) run(ctx context.Context) {
	batch := make([]Binding, 0, 256)
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		err := retry.Do(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
			_, err := n.store.Record(ctx, batch...)
			return err
		}, func(err error, wait time.Duration) {
			n.logger.Warn("cannot record NAT bindings, retrying", "error", err, "retry_in", wait)
		})
		if err == nil {
			n.recorded.Add(float64(len(batch)))
		}
		batch = batch[:0]
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-n.queue:
			if b, ok := n.binding(r, batch); ok {
				batch = append(batch, b)
			}
			if len(batch) == cap(batch) {
				flush(ctx)
			}
		case <-tick.C:
			flush(ctx)
		case <-ctx.Done():
			drain, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for {
				select {
				case r := <-n.queue:
					if b, ok := n.binding(r, batch); ok {
						batch = append(batch, b)
					}
					continue
				default:
				}
				break
			}
			flush(drain)
			cancel()
			return
		}
	}
}

// binding turns r into the record of its port block: a new holding, or
// the end of the one r releases (found in the table, or earlier in the
// batch not yet recorded).
func (n *CGNAT) binding(r NATRecord, pending []Binding) (Binding, bool) {
	r.Outside, r.Inside = r.Outside.Unmap(), r.Inside.Unmap()
	if !r.Outside.IsValid() || !r.Inside.IsValid() || r.TimeMs <= 0 || r.PortLo > r.PortHi {
		return Binding{}, false
	}
	pfx := netip.PrefixFrom(r.Outside, r.Outside.BitLen())
	if r.Create {
		b := Binding{Source: SourceCGNAT, Prefix: pfx, PortLo: r.PortLo, PortHi: r.PortHi, Inside: r.Inside,
			Session: r.Exporter.String() + "/" + strconv.Itoa(int(r.PortLo)), NAS: r.Exporter,
			StartMs: r.TimeMs, UpdatedMs: r.TimeMs}
		if n.config.BlockTimeout > 0 {
			b.ExpiresMs = r.TimeMs + n.config.BlockTimeout.Milliseconds()
		}
		// The same block logged again (a NAT's periodic refresh, a
		// retransmission) renews the holding rather than starting one.
		if open, ok := n.open(pfx, r, pending); ok {
			open.ExpiresMs, open.UpdatedMs = b.ExpiresMs, r.TimeMs
			return open, true
		}
		return b, true
	}
	open, ok := n.open(pfx, r, pending)
	if !ok {
		return Binding{}, false // released what was never seen: nothing to end
	}
	open.EndMs, open.EndReason, open.UpdatedMs = max(r.TimeMs, open.StartMs), EndRelease, max(r.TimeMs, open.UpdatedMs)
	return open, true
}

// open finds the holding of r's block by r's inside address, open at r's
// time.
func (n *CGNAT) open(pfx netip.Prefix, r NATRecord, pending []Binding) (Binding, bool) {
	for i := len(pending) - 1; i >= 0; i-- {
		b := pending[i]
		if b.Prefix == pfx && b.PortLo == r.PortLo && b.Inside == r.Inside {
			return b, b.EndMs == 0
		}
	}
	return n.store.Table().openBlock(pfx.Addr(), r.PortLo, r.Inside, r.TimeMs)
}
