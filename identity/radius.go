package identity

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2866"
	"layeh.com/radius/rfc2869"
	"layeh.com/radius/rfc3162"
	"layeh.com/radius/rfc4372"
	"layeh.com/radius/rfc4818"
	"layeh.com/radius/rfc6911"

	"github.com/wormsign/wormsign/lograte"
)

// The accounting listener's bounds.
const (
	// radiusWorkers handle requests in parallel. Each takes the requests
	// of the NASes that hash to it, one at a time in arrival order, so
	// that a session's Start, Interim-Updates and Stop, and its NAS's
	// Accounting-On, are applied in the order the NAS sent them.
	radiusWorkers = 4
	// radiusQueue is each worker's backlog; past it a request is
	// dropped (counted as overload) and the NAS retransmits it.
	radiusQueue = 256
	// radiusRecordTimeout bounds one Record (a Kafka outage): the NAS
	// gets no answer and retransmits.
	radiusRecordTimeout = 5 * time.Second
	// A retransmission (same source, identifier and authenticator) seen
	// within radiusDupWindow of an answered request is answered again
	// without recording; each worker remembers radiusDupEntries.
	radiusDupWindow  = 10 * time.Second
	radiusDupEntries = 4096
	// radiusMinIPv6Prefix is the shortest IPv6 prefix a customer can
	// hold: an ISP's own allocation is /32 or longer, so a shorter one
	// is a NAS fault that would hand a customer everyone's addresses.
	radiusMinIPv6Prefix = 32
)

// Reasons of radiusDropped.
const (
	radiusDropUnknownClient    = "unknown_client"
	radiusDropBadAuthenticator = "bad_authenticator"
	radiusDropMalformed        = "malformed"
	radiusDropNotAccounting    = "not_accounting"
	radiusDropOverload         = "overload"
	// no_customer and no_address are answered (a NAS would retransmit
	// them forever) but record nothing.
	radiusDropNoCustomer = "no_customer"
	radiusDropNoAddress  = "no_address"
)

// radiusServer is the RADIUS accounting listener (RFC 2866): it turns a
// NAS's Start, Interim-Update and Stop into bindings of the session's
// addresses (RFC 2865 Framed-IP-Address, RFC 3162 Framed-IPv6-Prefix,
// RFC 4818 Delegated-IPv6-Prefix, RFC 6911 Framed-IPv6-Address), and an
// Accounting-On or -Off into the end of every session of that NAS. A
// request is answered only once its bindings are recorded, so that the
// NAS retransmits what could not be.
type radiusServer struct {
	config  RADIUSConfiguration
	secret  []byte
	idType  radius.Type
	rec     Recorder
	table   *Table
	metrics *metrics
	logger  *slog.Logger
	now     func() time.Time
	seed    maphash.Seed
	logs    lograte.Limiter

	conn    *net.UDPConn
	workers []*radiusWorker
	ctx     context.Context
	cancel  context.CancelFunc
	reader  sync.WaitGroup
	pool    sync.WaitGroup
	stop    sync.Once
}

// radiusWorker handles the requests of some NASes, one at a time.
type radiusWorker struct {
	queue chan *radiusRequest
	seen  radiusDupCache
}

// radiusRequest is an authentic, parsed Accounting-Request.
type radiusRequest struct {
	packet *radius.Packet
	src    netip.AddrPort
	// nas is who sent it: NAS-IP-Address, else NAS-IPv6-Address, else
	// the packet's source (a proxy in between keeps NAS-IP-Address).
	nas netip.Addr
	// at is when it was received.
	at time.Time
}

func newRADIUSServer(cfg RADIUSConfiguration, rec Recorder, table *Table, m *metrics, logger *slog.Logger, now func() time.Time) *radiusServer {
	if logger == nil {
		logger = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	cfg.InterimMisses = max(cfg.InterimMisses, 1)
	s := &radiusServer{
		config: cfg, secret: []byte(cfg.Secret), idType: radiusIDAttribute(cfg.IDAttribute),
		rec: rec, table: table, metrics: m, logger: logger.With("source", SourceRADIUS), now: now,
		seed: maphash.MakeSeed(),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for range radiusWorkers {
		s.workers = append(s.workers, &radiusWorker{queue: make(chan *radiusRequest, radiusQueue)})
	}
	// Zero counters are exported, so that a dashboard sees every series.
	for _, st := range []string{"start", "interim", "stop", "accounting_on", "accounting_off", "other"} {
		m.radiusRequests.WithLabelValues(st)
	}
	for _, r := range []string{radiusDropUnknownClient, radiusDropBadAuthenticator, radiusDropMalformed, radiusDropNotAccounting, radiusDropOverload, radiusDropNoCustomer, radiusDropNoAddress} {
		m.radiusDropped.WithLabelValues(r)
	}
	return s
}

// radiusIDAttribute is the attribute type that
// identity.radius.id_attribute names, in any case (User-Name when empty;
// Configuration.Validate refuses others).
func radiusIDAttribute(name string) radius.Type {
	switch {
	case strings.EqualFold(name, AttributeClass):
		return rfc2865.Class_Type
	case strings.EqualFold(name, AttributeCUI):
		return rfc4372.ChargeableUserIdentity_Type
	}
	return rfc2865.UserName_Type
}

// Start opens the listener.
func (s *radiusServer) Start() error {
	addr, err := net.ResolveUDPAddr("udp", s.config.Listen)
	if err != nil {
		return fmt.Errorf("cannot resolve identity.radius.listen %q: %w", s.config.Listen, err)
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen for RADIUS accounting on %s: %w", s.config.Listen, err)
	}
	// A NAS that restarts sends every session's Start at once.
	if err := conn.SetReadBuffer(4 << 20); err != nil {
		s.logger.Warn("cannot set receive buffer", "addr", s.config.Listen, "error", err)
	}
	s.conn = conn
	for _, w := range s.workers {
		s.pool.Add(1)
		go func() { defer s.pool.Done(); s.work(w) }()
	}
	s.reader.Add(1)
	go func() { defer s.reader.Done(); s.read() }()
	s.logger.Info("radius accounting listening", "addr", conn.LocalAddr().String())
	return nil
}

// Addr is the address listened on (the port chosen for ":0").
func (s *radiusServer) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Stop closes the listener and waits for the requests under way; those
// still queued are dropped unanswered (their NAS retransmits them to the
// next instance).
func (s *radiusServer) Stop() {
	s.stop.Do(func() {
		s.cancel()
		if s.conn == nil {
			return
		}
		s.conn.Close()
		s.reader.Wait()
		for _, w := range s.workers {
			close(w.queue)
		}
		s.pool.Wait()
	})
}

func (s *radiusServer) read() {
	buf := make([]byte, radius.MaxPacketLength+1)
	for {
		n, src, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.logLimited("read", "udp read failed", "error", err)
			continue
		}
		req, ok := s.admit(buf[:n], src, s.now())
		if !ok {
			continue
		}
		w := s.workers[maphash.Comparable(s.seed, req.nas)%uint64(len(s.workers))]
		select {
		case w.queue <- req:
		default:
			s.drop(radiusDropOverload, req.src, "radius workers busy; the NAS will retransmit")
		}
	}
}

func (s *radiusServer) work(w *radiusWorker) {
	for req := range w.queue {
		if s.ctx.Err() != nil {
			continue
		}
		if resp := s.handle(w, req); resp != nil {
			if _, err := s.conn.WriteToUDPAddrPort(resp, req.src); err != nil && s.ctx.Err() == nil {
				s.logLimited("write", "cannot answer radius request", "nas", req.src.String(), "error", err)
			}
		}
	}
}

// admit checks what can be checked before a worker takes the packet: its
// source, its header, its code, its Request Authenticator (RFC 2866 §3)
// and its attributes' framing. It counts every packet it refuses.
func (s *radiusServer) admit(b []byte, src netip.AddrPort, at time.Time) (*radiusRequest, bool) {
	from := src.Addr().Unmap()
	if !s.allowed(from) {
		s.drop(radiusDropUnknownClient, src, "radius packet from an address not in identity.radius.clients")
		return nil, false
	}
	if len(b) < 20 {
		s.drop(radiusDropMalformed, src, "radius packet shorter than its header")
		return nil, false
	}
	// Octets past Length are padding (RFC 2865 §3): they are neither
	// attributes nor part of the authenticator.
	length := int(b[2])<<8 | int(b[3])
	if length < 20 || length > radius.MaxPacketLength || length > len(b) {
		s.drop(radiusDropMalformed, src, "radius packet length field out of range", "length", length, "received", len(b))
		return nil, false
	}
	b = b[:length]
	if radius.Code(b[0]) != radius.CodeAccountingRequest {
		s.drop(radiusDropNotAccounting, src, "radius packet is not an Accounting-Request", "code", radius.Code(b[0]).String())
		return nil, false
	}
	if !radius.IsAuthenticRequest(b, s.secret) {
		s.drop(radiusDropBadAuthenticator, src, "radius request authenticator does not match the shared secret")
		return nil, false
	}
	p, err := radius.Parse(b, s.secret)
	if err != nil {
		s.drop(radiusDropMalformed, src, "cannot parse radius attributes", "error", err)
		return nil, false
	}
	return &radiusRequest{packet: p, src: src, nas: radiusNAS(p, from), at: at}, true
}

func (s *radiusServer) allowed(a netip.Addr) bool {
	for _, p := range s.config.Clients {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func radiusNAS(p *radius.Packet, src netip.Addr) netip.Addr {
	if a, ok := p.Lookup(rfc2865.NASIPAddress_Type); ok && len(a) == 4 {
		return netip.AddrFrom4([4]byte(a))
	}
	if a, ok := p.Lookup(rfc3162.NASIPv6Address_Type); ok && len(a) == 16 {
		return netip.AddrFrom16([16]byte(a)).Unmap()
	}
	return src
}

// handle records what req says and returns the Accounting-Response to
// send, or nil when the NAS must retransmit (or is not to be answered).
func (s *radiusServer) handle(w *radiusWorker, req *radiusRequest) []byte {
	p := req.packet
	key := radiusDupKey{src: req.src, id: p.Identifier, auth: p.Authenticator}
	if resp, ok := w.seen.get(key, req.at); ok {
		return resp
	}
	st, err := rfc2866.AcctStatusType_Lookup(p)
	if err != nil {
		s.drop(radiusDropMalformed, req.src, "radius request without a readable Acct-Status-Type", "error", err)
		return nil
	}
	label := radiusStatusLabel(st)
	bs, reason, err := s.bindings(req, st)
	switch {
	case err != nil:
		s.drop(reason, req.src, "cannot read radius request", "status", label, "error", err)
		return nil
	case reason != "":
		s.drop(reason, req.src, "radius request records nothing", "status", label, "session", radiusText(rfc2866.AcctSessionID_Get(p)))
	}
	if len(bs) > 0 {
		ctx, cancel := context.WithTimeout(s.ctx, radiusRecordTimeout)
		_, err := s.rec.Record(ctx, bs...)
		cancel()
		if err != nil {
			s.metrics.recordErrors.Inc()
			s.logLimited("record", "cannot record radius bindings; the NAS will retransmit", "nas", req.nas.String(), "status", label, "error", err)
			return nil
		}
	}
	resp, err := s.response(p)
	if err != nil {
		// Unreachable with a parsed request; counted rather than
		// answered with something the NAS would refuse.
		s.drop(radiusDropMalformed, req.src, "cannot encode radius response", "error", err)
		return nil
	}
	s.metrics.radiusRequests.WithLabelValues(label).Inc()
	w.seen.put(key, resp, req.at)
	return resp
}

// response is the Accounting-Response to p, with p's Proxy-State
// attributes in their order (RFC 2865 §5.33), which a proxy in between
// matches its requests by.
func (s *radiusServer) response(p *radius.Packet) ([]byte, error) {
	r := p.Response(radius.CodeAccountingResponse)
	for _, avp := range p.Attributes {
		if avp.Type == rfc2865.ProxyState_Type {
			r.Add(avp.Type, avp.Attribute)
		}
	}
	return r.Encode()
}

func radiusStatusLabel(st rfc2866.AcctStatusType) string {
	switch st {
	case rfc2866.AcctStatusType_Value_Start:
		return "start"
	case rfc2866.AcctStatusType_Value_InterimUpdate:
		return "interim"
	case rfc2866.AcctStatusType_Value_Stop:
		return "stop"
	case rfc2866.AcctStatusType_Value_AccountingOn:
		return "accounting_on"
	case rfc2866.AcctStatusType_Value_AccountingOff:
		return "accounting_off"
	}
	return "other"
}

// bindings are the records req makes, or the drop reason it makes none
// for: malformed (not answered, err says why), no_customer or no_address
// (answered). Other status types (tunnel accounting, Failed) record
// nothing.
func (s *radiusServer) bindings(req *radiusRequest, st rfc2866.AcctStatusType) ([]Binding, string, error) {
	p := req.packet
	ev := radiusEventTime(p, req.at)
	switch st {
	case rfc2866.AcctStatusType_Value_AccountingOn, rfc2866.AcctStatusType_Value_AccountingOff:
		return s.restart(req.nas, ev), "", nil
	case rfc2866.AcctStatusType_Value_Start, rfc2866.AcctStatusType_Value_InterimUpdate, rfc2866.AcctStatusType_Value_Stop:
	default:
		return nil, "", nil
	}
	customer := s.customer(p)
	if customer == "" {
		return nil, radiusDropNoCustomer, nil
	}
	prefixes, err := radiusPrefixes(p)
	if err != nil {
		return nil, radiusDropMalformed, err
	}
	if len(prefixes) == 0 {
		return nil, radiusDropNoAddress, nil
	}
	base := Binding{
		Customer:      customer,
		Source:        SourceRADIUS,
		Session:       radiusText(rfc2866.AcctSessionID_Get(p)),
		NAS:           req.nas,
		NASIdentifier: radiusText(rfc2865.NASIdentifier_Get(p)),
		StartMs:       ev,
		UpdatedMs:     ev,
	}
	if st != rfc2866.AcctStatusType_Value_Start {
		// A session time reaching back before 1970 is nonsense: the
		// event time is all that is known.
		if d, err := rfc2866.AcctSessionTime_Lookup(p); err == nil && ev-int64(d)*1000 > 0 {
			base.StartMs = ev - int64(d)*1000
		}
	}
	if st == rfc2866.AcctStatusType_Value_Stop {
		base.EndMs, base.EndReason = ev, EndStop
	} else if interval := s.interval(p); interval > 0 {
		base.ExpiresMs = ev + int64(s.config.InterimMisses)*interval.Milliseconds()
	}
	var out []Binding
	for _, pfx := range prefixes {
		b := base
		b.Prefix = pfx
		if s.continues(&b, st) {
			out = append(out, b)
		}
	}
	return out, "", nil
}

// continues makes b a record of the holding the table already has of its
// session, if any: an Interim-Update's or Stop's start, computed from
// Acct-Session-Time, can be seconds off the Start's (the NAS's clock,
// Acct-Delay-Time's rounding), and a record with another start would be
// a second holding that ends the first as reassigned. It returns false
// when there is nothing to record: the session already stopped.
func (s *radiusServer) continues(b *Binding, st rfc2866.AcctStatusType) bool {
	var prev *Binding
	for _, h := range s.table.Address(b.Prefix.Addr()) {
		if h.Prefix == b.Prefix && h.Source == SourceRADIUS && h.Customer == b.Customer && h.Session == b.Session &&
			(prev == nil || h.StartMs > prev.StartMs) {
			prev = &h
		}
	}
	switch {
	case prev == nil:
		return true
	case st == rfc2866.AcctStatusType_Value_Start && prev.EndMs != 0:
		// A Start after the session id's last holding ended (a NAS
		// whose session ids came round again): a new holding.
		return true
	case st != rfc2866.AcctStatusType_Value_Start && prev.EndReason == EndStop:
		// A retransmitted Stop, or an Interim-Update overtaken by the
		// Stop: the session is over.
		return false
	}
	// The same session going on. After an Accounting-On or someone
	// else's start, a later word from the session is proof it lasted:
	// the table takes it over the end it had (it keeps the later of two
	// records by UpdatedMs, and ends it again at a later holder's start).
	b.StartMs = prev.StartMs
	if b.EndMs != 0 && b.EndMs < b.StartMs {
		b.EndMs = b.StartMs
	}
	return true
}

// restart ends every holding nas reported that lasts at ev: the NAS
// restarted (Accounting-On) or is going down (Accounting-Off), and its
// sessions with it. Holdings that began or were renewed after ev belong
// to the NAS's next life and stay.
func (s *radiusServer) restart(nas netip.Addr, ev int64) []Binding {
	var out []Binding
	for _, b := range s.table.OpenFrom(nas, SourceRADIUS, ev) {
		if b.StartMs > ev || b.UpdatedMs > ev {
			continue
		}
		b.EndMs, b.EndReason, b.UpdatedMs = ev, EndNASRestart, ev
		out = append(out, b)
	}
	return out
}

// radiusEventTime is when the event happened (Unix ms): Event-Timestamp
// (RFC 2869 §5.3) when sent, else the receive time less Acct-Delay-Time
// (RFC 2866 §5.2), the seconds the NAS spent trying to send it.
func radiusEventTime(p *radius.Packet, at time.Time) int64 {
	if a, ok := p.Lookup(rfc2869.EventTimestamp_Type); ok {
		if t, err := radius.Date(a); err == nil && t.Unix() > 0 {
			return t.UnixMilli()
		}
	}
	ms := at.UnixMilli()
	if d, err := rfc2866.AcctDelayTime_Lookup(p); err == nil && ms-int64(d)*1000 > 0 {
		ms -= int64(d) * 1000
	}
	return ms
}

// interval is the session's interim interval: Acct-Interim-Interval when
// the NAS sends it, else identity.radius.default_interim (0: none).
func (s *radiusServer) interval(p *radius.Packet) time.Duration {
	if v, err := rfc2869.AcctInterimInterval_Lookup(p); err == nil && v > 0 {
		return time.Duration(v) * time.Second
	}
	return s.config.DefaultInterim
}

// customer is the id attribute's value; "" when absent. A
// Chargeable-User-Identity of one NUL octet means "none yet" (RFC 4372
// §2.1).
func (s *radiusServer) customer(p *radius.Packet) string {
	a, ok := p.Lookup(s.idType)
	if !ok || len(a) == 0 || (s.idType == rfc4372.ChargeableUserIdentity_Type && len(a) == 1 && a[0] == 0) {
		return ""
	}
	return radiusText(a)
}

// radiusText is a string attribute as a binding keeps it: as sent when it is
// UTF-8, else in hex ("0x..."), since JSON (the topic, the state file)
// would change the invalid octets and the record read back would no
// longer be the same holding.
func radiusText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return "0x" + hex.EncodeToString(b)
}

// radiusPrefixes are the addresses and prefixes p assigns, in attribute order.
// An address attribute that cannot be read makes the request malformed.
// Framed-IP-Address 255.255.255.255 and 255.255.255.254 (RFC 2865
// §5.8: the user or the NAS is to choose) and 0.0.0.0 are no address yet.
func radiusPrefixes(p *radius.Packet) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, avp := range p.Attributes {
		var pfx netip.Prefix
		switch avp.Type {
		case rfc2865.FramedIPAddress_Type:
			if len(avp.Attribute) != 4 {
				return nil, fmt.Errorf("framed-ip-address of %d octets", len(avp.Attribute))
			}
			a := netip.AddrFrom4([4]byte(avp.Attribute))
			if a.IsUnspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || a == netip.AddrFrom4([4]byte{255, 255, 255, 254}) {
				continue
			}
			pfx = netip.PrefixFrom(a, 32)
		case rfc6911.FramedIPv6Address_Type:
			if len(avp.Attribute) != 16 {
				return nil, fmt.Errorf("framed-ipv6-address of %d octets", len(avp.Attribute))
			}
			a := netip.AddrFrom16([16]byte(avp.Attribute))
			if a.IsUnspecified() || a.Is4In6() {
				return nil, fmt.Errorf("framed-ipv6-address %s", a)
			}
			pfx = netip.PrefixFrom(a, 128)
		case rfc3162.FramedIPv6Prefix_Type, rfc4818.DelegatedIPv6Prefix_Type:
			var err error
			if pfx, err = radiusIPv6Prefix(avp.Attribute); err != nil {
				return nil, err
			}
		default:
			continue
		}
		if !slices.Contains(out, pfx) {
			out = append(out, pfx)
		}
	}
	return out, nil
}

// radiusIPv6Prefix reads an RFC 3162 §2.3 prefix: a reserved octet, the length,
// then up to 16 octets of prefix. Bits past the length must be zero; some
// NASes send the whole address, so they are masked rather than refused.
func radiusIPv6Prefix(a []byte) (netip.Prefix, error) {
	if len(a) < 2 || len(a) > 18 {
		return netip.Prefix{}, fmt.Errorf("ipv6 prefix attribute of %d octets", len(a))
	}
	bits := int(a[1])
	if bits < radiusMinIPv6Prefix || bits > 128 || len(a)-2 < (bits+7)/8 {
		return netip.Prefix{}, fmt.Errorf("ipv6 prefix length /%d with %d octets of prefix", bits, len(a)-2)
	}
	var b [16]byte
	copy(b[:], a[2:])
	addr := netip.AddrFrom16(b)
	if addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("ipv6 prefix %s is an IPv4-mapped address", addr)
	}
	return netip.PrefixFrom(addr, bits).Masked(), nil
}

// drop counts a refused packet and logs it, rate limited per reason.
func (s *radiusServer) drop(reason string, src netip.AddrPort, msg string, args ...any) {
	s.metrics.radiusDropped.WithLabelValues(reason).Inc()
	s.logLimited(reason, msg, append([]any{"reason", reason, "from", src.String()}, args...)...)
}

func (s *radiusServer) logLimited(kind, msg string, args ...any) {
	if n, ok := s.logs.Allow(kind, s.now()); ok {
		if n > 0 {
			args = append(args, "suppressed", n)
		}
		s.logger.Warn(msg, args...)
	}
}

// radiusDupKey names one request as its NAS sends it: a retransmission repeats
// the source, identifier and authenticator (RFC 5080 §2.2.2).
type radiusDupKey struct {
	src  netip.AddrPort
	id   byte
	auth [16]byte
}

// radiusDupCache remembers the answers of recent requests, at most
// radiusDupEntries (the oldest is forgotten first).
type radiusDupCache struct {
	answers map[radiusDupKey]radiusDupAnswer
	order   []radiusDupKey // ring, oldest at next
	next    int
}

type radiusDupAnswer struct {
	resp []byte
	at   time.Time
}

func (c *radiusDupCache) get(k radiusDupKey, now time.Time) ([]byte, bool) {
	a, ok := c.answers[k]
	if !ok || now.Sub(a.at) > radiusDupWindow || now.Before(a.at) {
		return nil, false
	}
	return a.resp, true
}

func (c *radiusDupCache) put(k radiusDupKey, resp []byte, now time.Time) {
	if c.answers == nil {
		c.answers = make(map[radiusDupKey]radiusDupAnswer, radiusDupEntries)
		c.order = make([]radiusDupKey, 0, radiusDupEntries)
	}
	if _, ok := c.answers[k]; ok {
		c.answers[k] = radiusDupAnswer{resp, now}
		return
	}
	if len(c.order) < radiusDupEntries {
		c.order = append(c.order, k)
	} else {
		delete(c.answers, c.order[c.next])
		c.order[c.next] = k
		c.next = (c.next + 1) % radiusDupEntries
	}
	c.answers[k] = radiusDupAnswer{resp, now}
}
