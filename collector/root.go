// Package collector is the collector component: it reads NetFlow v5/v9,
// IPFIX and sFlow v5 datagrams from UDP sockets, decodes them with
// collector/decode, queues the flows and publishes them on the flows
// topic (schemas/flow.proto, v2): records of many subscribers' flows, each
// subscriber's partition chosen by its key (bus.PartitionOf).
package collector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
)

// Dependencies of the collector.
type Dependencies struct {
	Logger   *slog.Logger
	Registry prometheus.Registerer
	Bus      bus.Bus
	Topic    string
	// Subscribers picks the Kafka key of a flow: its subscriber
	// (network.Subscribers has the rule).
	Subscribers network.Subscribers
	// Identity, when set, tells who held a subscriber's address at a
	// flow's time: the flow then carries the customer and is keyed by it
	// (identity.Key), so that a customer's flows share one partition
	// whichever addresses it held; a CGNAT public address resolves to the
	// inside address behind its port block.
	Identity *identity.Table
	// NAT, when set, turns the NAT logging records the decoder finds
	// (RFC 8158) into port-block bindings.
	NAT *identity.CGNAT
	// RecordBytes bounds one flows record; cmd sets it from
	// kafka.batch_bytes. 0: maxRecordBytes.
	RecordBytes int
}

// maxRecordBytes is the size a flows record is cut at: some thousands of
// flows, so that what a consumer pays per record is spread thin, yet far
// below the brokers' message.max.bytes (1 MiB by default) and small
// enough that a detector's or sink's unit of work and commit stays short.
const maxRecordBytes = 256 << 10

// Component is the collector.
type Component struct {
	config    Configuration
	deps      Dependencies
	exporters *network.Set // nil: every exporter is accepted
	metrics   *metrics
	decoder   *decode.Decoder
	labels    *exporterLabels
	// origin tells this collector's publishers apart on the bus: a random
	// instance number in the upper bits, the publisher in the low 16. Each
	// publisher writes its flows in order; the detector keeps a watermark
	// per origin and exporter.
	origin      uint64
	unpublished unpublishedBatches
	producer    bus.Producer
	// partitions is the flows topic's partition count, which the
	// collector chooses partitions by; refreshed while it runs, as
	// partitions may be added.
	partitions  atomic.Int32
	recordBytes int

	conns   []*net.UDPConn
	queue   chan []flow.Flow
	readers sync.WaitGroup
	flushed chan struct{}
	// saverDone stops the periodic template saver, refreshDone the
	// partition count's refresh.
	saverStop   chan struct{}
	saverDone   chan struct{}
	refreshStop chan struct{}
	refreshDone chan struct{}
	// queued counts flows from Ingest until their write to the bus.
	queued         atomic.Int64
	maxQueuedFlows int64
	// stopping tells Ingest callers that the queue is about to close.
	mu       sync.RWMutex
	stopping bool
}

// New prepares a collector; it opens nothing until Start.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	producer, err := deps.Bus.Producer(deps.Topic)
	if err != nil {
		return nil, fmt.Errorf("cannot create flows producer: %w", err)
	}
	var exporters *network.Set
	if len(config.Exporters) > 0 {
		exporters = network.NewSet(config.Exporters...)
	}
	recordBytes := maxRecordBytes
	if deps.RecordBytes > 0 {
		// Room for the record's own framing within a produce request.
		recordBytes = min(recordBytes, max(deps.RecordBytes-512, 512))
	}
	decoder := decode.New(config.Decode)
	m := newMetrics(deps.Registry)
	registerDecoder(deps.Registry, decoder)
	return &Component{
		exporters:   exporters,
		config:      config,
		deps:        deps,
		metrics:     m,
		decoder:     decoder,
		labels:      newExporterLabels(config.Decode.MaxExporters),
		origin:      rand.Uint64()<<16 | 1<<16,
		producer:    producer,
		recordBytes: recordBytes,
		queue:       make(chan []flow.Flow, config.QueueSize),
		flushed:     make(chan struct{}),
		// About 32 flows per queued datagram (NetFlow v9/IPFIX carry
		// 20-40), plus what the publishers hold.
		maxQueuedFlows: int64(config.QueueSize)*32 + int64(2*config.Publishers*config.BatchFlows),
	}, nil
}

// Start learns the flows topic's partitions, loads saved templates, opens
// the UDP sockets and starts reading and publishing.
func (c *Component) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	n, err := c.producer.Partitions(ctx)
	cancel()
	if err != nil {
		return fmt.Errorf("cannot start the collector: %w", err)
	}
	c.partitions.Store(int32(n))
	if path := c.config.TemplateFile; path != "" {
		n, err := c.decoder.LoadTemplates(path, time.Now().UnixMilli())
		if err != nil {
			// A damaged file must not keep the collector down: templates
			// come again from the exporters within minutes.
			c.deps.Logger.Warn("cannot load saved templates", "file", path, "error", err)
		} else {
			c.deps.Logger.Info("loaded saved templates", "file", path, "templates", n)
		}
	}
	for _, spec := range []struct {
		family string
		addrs  []string
	}{{decode.FamilyNetFlow, c.config.NetFlowListen}, {decode.FamilySFlow, c.config.SFlowListen}} {
		for _, addr := range spec.addrs {
			for i := range c.config.SocketsPerListener {
				conn, err := c.listen(addr)
				if err != nil {
					c.closeConns()
					return err
				}
				if i == 0 {
					// Port 0 picks a port: the other sockets share it.
					addr = conn.LocalAddr().String()
					c.deps.Logger.Info("collector listening", "protocol", spec.family, "addr", addr,
						"sockets", c.config.SocketsPerListener)
				}
				c.conns = append(c.conns, conn)
				c.readers.Add(1)
				go c.read(spec.family, conn)
			}
		}
	}
	c.refreshStop, c.refreshDone = make(chan struct{}), make(chan struct{})
	go c.refreshPartitions()
	go c.publish()
	if c.config.TemplateFile != "" {
		c.saverStop, c.saverDone = make(chan struct{}), make(chan struct{})
		go c.saveTemplates()
	}
	return nil
}

// partitionsRefresh is how often the collector looks for partitions added
// to the flows topic. A subscriber whose partition changes then starts
// over on its new partition's detector, as it would with any producer.
const partitionsRefresh = 30 * time.Second

func (c *Component) refreshPartitions() {
	defer close(c.refreshDone)
	tick := time.NewTicker(partitionsRefresh)
	defer tick.Stop()
	for {
		select {
		case <-c.refreshStop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		n, err := c.producer.Partitions(ctx)
		cancel()
		switch {
		case err != nil:
			c.deps.Logger.Warn("cannot refresh the flows topic's partitions, keeping the count", "partitions", c.partitions.Load(), "error", err)
		case int32(n) != c.partitions.Load():
			c.deps.Logger.Info("flows topic partitions changed", "from", c.partitions.Load(), "to", n)
			c.partitions.Store(int32(n))
		}
	}
}

func (c *Component) saveTemplates() {
	defer close(c.saverDone)
	tick := time.NewTicker(c.config.TemplateSaveInterval)
	defer tick.Stop()
	for {
		select {
		case <-c.saverStop:
			c.saveTemplatesOnce()
			return
		case <-tick.C:
			c.saveTemplatesOnce()
		}
	}
}

func (c *Component) saveTemplatesOnce() {
	if err := c.decoder.SaveTemplates(c.config.TemplateFile); err != nil {
		c.metrics.templateSaves.WithLabelValues("error").Inc()
		c.deps.Logger.Warn("cannot save templates", "file", c.config.TemplateFile, "error", err)
		return
	}
	c.metrics.templateSaves.WithLabelValues("ok").Inc()
}

func (c *Component) listen(addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		var serr error
		err := raw.Control(func(fd uintptr) {
			// Several collectors (or sockets) may share a port; the kernel
			// spreads exporters across them.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on UDP %s: %w", addr, err)
	}
	conn := pc.(*net.UDPConn)
	if c.config.ReceiveBuffer > 0 {
		c.setReceiveBuffer(conn, addr)
	}
	return conn, nil
}

// setReceiveBuffer sizes the socket's receive buffer, the room for bursts
// while a reader is busy. SO_RCVBUF is capped by net.core.rmem_max;
// SO_RCVBUFFORCE is not, where the process has CAP_NET_ADMIN.
func (c *Component) setReceiveBuffer(conn *net.UDPConn, addr string) {
	raw, err := conn.SyscallConn()
	if err != nil {
		c.deps.Logger.Warn("cannot set receive buffer", "addr", addr, "error", err)
		return
	}
	var got int
	var forceErr, getErr error
	raw.Control(func(fd uintptr) {
		forceErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, c.config.ReceiveBuffer)
	})
	if forceErr != nil {
		if err := conn.SetReadBuffer(c.config.ReceiveBuffer); err != nil {
			c.deps.Logger.Warn("cannot set receive buffer", "addr", addr, "error", err)
			return
		}
	}
	raw.Control(func(fd uintptr) {
		got, getErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	// Linux reports twice the size set, counting its bookkeeping.
	if getErr == nil && got/2 < c.config.ReceiveBuffer {
		c.deps.Logger.Warn("receive buffer smaller than collector.receive_buffer; raise net.core.rmem_max",
			"addr", addr, "bytes", got/2, "wanted", c.config.ReceiveBuffer)
	}
}

// Addrs returns the bound UDP addresses, netflow family first.
func (c *Component) Addrs() []net.Addr {
	out := make([]net.Addr, len(c.conns))
	for i, conn := range c.conns {
		out[i] = conn.LocalAddr()
	}
	return out
}

// receiveBatch is how many datagrams one system call may return, and
// datagramSize each one's buffer: the largest UDP payload, so that no
// export datagram is cut short.
const (
	receiveBatch = 16
	datagramSize = 65536
)

// batchReader is what x/net's ipv4 and ipv6 packet connections share:
// recvmmsg on Linux, a loop of single reads elsewhere.
type batchReader interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

// read receives the socket's datagrams in batches: a burst of exports
// costs one system call per receiveBatch datagrams rather than one each,
// and one clock reading.
func (c *Component) read(family string, conn *net.UDPConn) {
	defer c.readers.Done()
	msgs := make([]ipv4.Message, receiveBatch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, datagramSize)}
	}
	var reader batchReader = ipv4.NewPacketConn(conn)
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		reader = ipv6.NewPacketConn(conn) // also a dual-stack socket's IPv4 senders
	}
	for {
		n, err := reader.ReadBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.deps.Logger.Warn("udp read failed", "error", err)
			continue
		}
		c.metrics.receiveBatch.Observe(float64(n))
		now := time.Now().UnixMilli()
		for i := range msgs[:n] {
			m := &msgs[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			c.Ingest(family, ua.AddrPort(), m.Buffers[0][:m.N], now, false)
		}
	}
}

// Ingest decodes one datagram and queues its flows. With block false (live
// UDP) a full queue drops the datagram's flows and counts them; with block
// true (replay) it waits, since a file can always be read more slowly.
// It reports how many flows were queued.
func (c *Component) Ingest(family string, from netip.AddrPort, payload []byte, receivedMs int64, block bool) int {
	addr := from.Addr().Unmap()
	if !c.allowed(addr) {
		c.metrics.dropped.WithLabelValues("exporter_not_allowed").Inc()
		return 0
	}
	var rep decode.Report
	buf := datagramFlows.Get().(*[]flow.Flow)
	flows, err := c.decoder.DecodeReport(family, from, payload, receivedMs, (*buf)[:0], &rep)
	// Beyond collector.max_exporters addresses, exporters share one label
	// so that spoofed sources cannot grow the metrics without bound.
	exporter := c.labels.label(addr)
	c.metrics.datagrams.WithLabelValues(exporter, rep.Protocol).Inc()
	c.metrics.report(exporter, &rep)
	if err != nil {
		kind := "other"
		var de *decode.DecodeError
		if errors.As(err, &de) {
			kind = de.Kind
		}
		c.metrics.decodeErrors.WithLabelValues(exporter, rep.Protocol, kind).Inc()
		recycle(flows)
		return 0
	}
	if c.deps.NAT != nil {
		for i := range rep.NAT {
			if r, ok := natRecord(&rep.NAT[i]); ok {
				c.deps.NAT.Offer(r)
			}
		}
	}
	if len(flows) == 0 {
		recycle(flows)
		return 0
	}
	c.metrics.flows.WithLabelValues(exporter, rep.Protocol).Add(float64(len(flows)))
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.stopping {
		c.metrics.dropped.WithLabelValues("stopping").Add(float64(len(flows)))
		recycle(flows)
		return 0
	}
	n := int64(len(flows))
	if block {
		c.queued.Add(n)
		c.queue <- flows
	} else {
		// The queue counts datagrams; flows are bounded too, as a
		// datagram of tiny records can carry thousands. An empty queue
		// always takes a datagram, so that big ones still get through.
		if q := c.queued.Add(n); q > n && q > c.maxQueuedFlows {
			c.queued.Add(-n)
			c.metrics.dropped.WithLabelValues("queue_full").Add(float64(n))
			recycle(flows)
			return 0
		}
		select {
		case c.queue <- flows:
		default:
			c.queued.Add(-n)
			c.metrics.dropped.WithLabelValues("queue_full").Add(float64(n))
			recycle(flows)
			return 0
		}
	}
	c.metrics.queueFlows.Add(float64(n))
	return len(flows)
}

// recycle returns a datagram's flow slice for the next datagram.
func recycle(flows []flow.Flow) {
	flows = flows[:0]
	datagramFlows.Put(&flows)
}

func (c *Component) allowed(a netip.Addr) bool {
	return c.exporters == nil || c.exporters.Contains(a)
}

// shardBatch is the flows of one publisher shard, already encoded: a
// flow is appended to enc as its FlowBatch element when it arrives, the
// elements of one subscriber key are chained through spans, and the keys
// of one partition through keys, so that gathering allocates nothing per
// key and holds no pointers for the garbage collector to scan (a decoded
// flow's addresses hold some).
type shardBatch struct {
	enc   []byte
	spans []flowSpan
	// keys holds each subscriber key of the batch in order of its first
	// flow, with its first and last flow; index4 finds an IPv4 key's
	// entry by its four bytes, index another's by its 16-byte form. Both
	// hash and compare faster than netip.Addr, and a 32-bit key takes
	// the map's fast path (the 16-byte map was a ninth of the collector's
	// time at 500k flows/s, perf).
	keys   []batchKey
	index4 map[uint32]int32
	index  map[[16]byte]int32
	// parts holds each partition of the batch in order of its first key,
	// with its first and last key; partIndex finds it.
	parts     []batchPartition
	partIndex map[int32]int32
	low       int64 // oldest flow end, 0 when none has one
	// id and progress are set at hand-off: progress is the collector's,
	// stamped on the batch's records (bus.Message.LowMs).
	id       uint64
	progress int64
}

// flowSpan is one flow's bytes in shardBatch.enc and the index of the
// next flow of its key (-1 for none).
type flowSpan struct {
	start, end int
	next       int32
}

type batchKey struct {
	addr        netip.Addr
	first, last int32
	next        int32 // the next key of the partition, -1 for none
}

type batchPartition struct {
	partition   int32
	first, last int32 // keys
}

var shardBatches = sync.Pool{New: func() any {
	return &shardBatch{index4: map[uint32]int32{}, index: map[[16]byte]int32{}, partIndex: map[int32]int32{}}
}}

func (b *shardBatch) flows() int { return len(b.spans) }

func (b *shardBatch) add(key netip.Addr, k16 [16]byte, partition int32, f *flow.Flow) {
	if f.EndMs > 0 && (b.low == 0 || f.EndMs < b.low) {
		b.low = f.EndMs
	}
	i := int32(len(b.spans))
	start := len(b.enc)
	b.enc = flow.AppendBatchFlow(b.enc, f)
	b.spans = append(b.spans, flowSpan{start: start, end: len(b.enc), next: -1})
	is4 := key.Is4()
	var k int32
	var ok bool
	if is4 {
		k, ok = b.index4[binary.BigEndian.Uint32(k16[12:])]
	} else {
		k, ok = b.index[k16]
	}
	if ok {
		e := &b.keys[k]
		b.spans[e.last].next = i
		e.last = i
		return
	}
	k = int32(len(b.keys))
	if is4 {
		b.index4[binary.BigEndian.Uint32(k16[12:])] = k
	} else {
		b.index[k16] = k
	}
	b.keys = append(b.keys, batchKey{addr: key, first: i, last: i, next: -1})
	if p, ok := b.partIndex[partition]; ok {
		e := &b.parts[p]
		b.keys[e.last].next = k
		e.last = k
		return
	}
	b.partIndex[partition] = int32(len(b.parts))
	b.parts = append(b.parts, batchPartition{partition: partition, first: k, last: k})
}

func (b *shardBatch) reset() {
	b.enc, b.spans, b.keys, b.parts, b.low = b.enc[:0], b.spans[:0], b.keys[:0], b.parts[:0], 0
	clear(b.index4)
	clear(b.index)
	clear(b.partIndex)
}

// datagramFlows recycles the slices Ingest decodes into.
var datagramFlows = sync.Pool{New: func() any { s := make([]flow.Flow, 0, 64); return &s }}

// publish gathers queued flows by partition and subscriber key into one
// pending batch per publisher shard (a partition always falls in the same
// shard) and hands a batch to its shard's publisher once it holds
// BatchFlows flows or has waited Linger. Shards publish concurrently, each in order, so Kafka's
// round trips overlap while a subscriber's flows stay in order. A shard
// whose publisher lags blocks this loop, which fills the queue, which
// drops (and counts) at the UDP edge.
func (c *Component) publish() {
	defer close(c.flushed)
	n := c.config.Publishers
	pending := make([]*shardBatch, n)
	work := make([]chan *shardBatch, n)
	var workers sync.WaitGroup
	for i := range n {
		pending[i] = shardBatches.Get().(*shardBatch)
		work[i] = make(chan *shardBatch, 1)
		workers.Add(1)
		go func() {
			defer workers.Done()
			for batch := range work[i] {
				c.publishBatch(batch, c.origin|uint64(i))
			}
		}()
	}
	handOff := func(i int) {
		if pending[i].flows() == 0 {
			return
		}
		b := pending[i]
		// The collector's progress: no flow it has yet to publish ends
		// before this, so a consumer that takes it for every publisher
		// of this collector never finds one publisher's flows late
		// because another wrote first.
		b.progress = c.unpublished.add(b)
		for j := range n {
			if low := pending[j].low; j != i && low > 0 && low < b.progress {
				b.progress = low
			}
		}
		work[i] <- b
		pending[i] = shardBatches.Get().(*shardBatch)
	}
	timer := time.NewTicker(c.config.Linger)
	defer timer.Stop()
	for {
		select {
		case flows, ok := <-c.queue:
			if !ok {
				for i := range n {
					handOff(i)
					close(work[i])
				}
				workers.Wait()
				return
			}
			partitions := int(c.partitions.Load())
			for i := range flows {
				key := c.key(&flows[i])
				k16 := key.As16()
				// A partition is always written by the same publisher, so
				// its records are in order.
				part := bus.PartitionOf(k16, partitions)
				shard := part % n
				pending[shard].add(key, k16, int32(part), &flows[i])
				if pending[shard].flows() >= c.config.BatchFlows {
					handOff(shard)
				}
			}
			recycle(flows)
		case <-timer.C:
			for i := range n {
				handOff(i)
			}
		}
	}
}

// key is the Kafka key of f: its customer's when identity knows who held
// the subscriber's address at the flow's start, else its subscriber's
// (behind a CGNAT, the inside address's). It fills f.Customer and
// f.Inside on the way.
func (c *Component) key(f *flow.Flow) netip.Addr {
	subs := c.deps.Subscribers
	sub, dir := subs.Of(f.SrcAddr, f.DstAddr)
	if dir == network.NoSubscriber {
		return subs.Subscriber(f.SrcAddr)
	}
	if c.deps.Identity == nil {
		return sub
	}
	addr, port := f.SrcAddr, f.SrcPort
	if dir == network.Inbound {
		addr, port = f.DstAddr, f.DstPort
	}
	res, ok := c.deps.Identity.Resolve(addr, port, f.Start())
	if !ok {
		return sub
	}
	if res.Inside.IsValid() {
		f.Inside, sub = res.Inside, subs.Subscriber(res.Inside)
	}
	if res.Customer != "" {
		f.Customer = res.Customer
		return identity.Key(res.Customer)
	}
	return sub
}

// natRecord is the binding a NAT event creates or ends, if any. A stepped
// port block (portRangeStepSize > 1) is taken as its whole range: the
// ports between its own belong to no one else's block of that address.
func natRecord(e *decode.NATEvent) (identity.NATRecord, bool) {
	r := identity.NATRecord{Exporter: e.Exporter, TimeMs: e.TimeMs, Inside: e.Inside, Outside: e.Outside,
		PortLo: e.PortStart, PortHi: e.PortEnd}
	switch e.Event {
	case decode.NATTranslationCreate, decode.NAT44SessionCreate, decode.NAT44BIBCreate,
		decode.NAT64SessionCreate, decode.NAT64BIBCreate, decode.PortBlockAllocation:
		r.Create = true
	case decode.NATTranslationDelete, decode.NAT44SessionDelete, decode.NAT44BIBDelete,
		decode.NAT64SessionDelete, decode.NAT64BIBDelete, decode.PortBlockDeallocation:
	case decode.AddressBindingCreate, decode.AddressBindingDelete:
		// The whole outside address is the inside one's.
		r.Create, r.PortLo, r.PortHi = e.Event == decode.AddressBindingCreate, 0, 65535
	default:
		return r, false
	}
	return r, true
}

// publishBatch writes the batch as records of the flows-v2 format: for
// each partition, its subscribers' groups in order of each one's first
// flow, in records of up to recordBytes. A subscriber with more flows
// than fit continues in the next record of the same partition.
func (c *Component) publishBatch(batch *shardBatch, origin uint64) {
	buf := make([]byte, 0, len(batch.enc)+len(batch.keys)*24)
	var msgs []bus.Message
	// Each record carries the collector's progress at hand-off rather
	// than relying on the order of the records.
	low, id := batch.progress, batch.id
	for _, part := range batch.parts {
		start := len(buf)
		seal := func() {
			if len(buf) > start {
				msgs = append(msgs, bus.Message{Partition: int(part.partition), Value: buf[start:len(buf):len(buf)], Origin: origin, LowMs: low})
				start = len(buf)
			}
		}
		for k := part.first; k >= 0; k = batch.keys[k].next {
			key := &batch.keys[k]
			for i := key.first; i >= 0; {
				// The group's flows that fit in what is left of the record,
				// or the first of them when the record is empty.
				room := c.recordBytes - (len(buf) - start) - flow.GroupHeaderSize(key.addr, c.recordBytes)
				n, j := 0, i
				for ; j >= 0; j = batch.spans[j].next {
					size := batch.spans[j].end - batch.spans[j].start
					if n+size > room && (n > 0 || len(buf) > start) {
						break
					}
					n += size
				}
				if n == 0 {
					seal()
					continue
				}
				buf = flow.AppendGroupHeader(buf, key.addr, n)
				for ; i != j; i = batch.spans[i].next {
					buf = append(buf, batch.enc[batch.spans[i].start:batch.spans[i].end]...)
				}
				if j >= 0 {
					seal()
				}
			}
		}
		seal()
	}
	flows := batch.flows()
	batch.reset()
	shardBatches.Put(batch)
	c.publishWithRetry(msgs, flows)
	c.unpublished.remove(id)
	c.queued.Add(-int64(flows))
	c.metrics.queueFlows.Sub(float64(flows))
}

// unpublishedBatches holds the oldest flow end of every batch handed to a
// publisher and not yet written to the bus.
type unpublishedBatches struct {
	mu     sync.Mutex
	nextID uint64
	lows   map[uint64]int64
}

// add records b and returns the oldest flow end of all batches unwritten.
func (u *unpublishedBatches) add(b *shardBatch) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lows == nil {
		u.lows = map[uint64]int64{}
	}
	u.nextID++
	b.id = u.nextID
	u.lows[b.id] = b.low
	oldest := b.low
	for _, low := range u.lows {
		if low > 0 && (oldest == 0 || low < oldest) {
			oldest = low
		}
	}
	return oldest
}

func (u *unpublishedBatches) remove(id uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.lows, id)
}

// publishWithRetry keeps trying: the queue in front of it is bounded, so a
// bus outage turns into counted drops at the UDP edge, not lost batches here.
func (c *Component) publishWithRetry(msgs []bus.Message, flows int) {
	began := time.Now()
	defer func() { c.metrics.publishSeconds.Observe(time.Since(began).Seconds()) }()
	err := retry.Do(context.Background(), retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
		err := c.producer.Publish(ctx, msgs...)
		if errors.Is(err, bus.ErrClosed) {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, wait time.Duration) {
		c.metrics.publishErrors.Inc()
		c.deps.Logger.Warn("cannot publish flows, retrying", "error", err, "backoff", wait)
	})
	if err != nil { // only a closed bus ends the retries
		c.metrics.dropped.WithLabelValues("bus_closed").Add(float64(flows))
		return
	}
	c.metrics.published.Add(float64(flows))
	c.metrics.records.Add(float64(len(msgs)))
}

func (c *Component) closeConns() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// Stop closes the sockets and waits until every queued flow is published.
func (c *Component) Stop() error {
	c.closeConns()
	c.readers.Wait()
	c.mu.Lock()
	c.stopping = true
	close(c.queue)
	c.mu.Unlock()
	<-c.flushed
	if c.refreshStop != nil {
		close(c.refreshStop)
		<-c.refreshDone
	}
	if c.saverStop != nil {
		close(c.saverStop)
		<-c.saverDone
	}
	return c.producer.Close()
}
