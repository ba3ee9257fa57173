package containment

// RADIUS Change-of-Authorization (RFC 5176): the optional action that has
// the BNG restrict the customer's session itself, wherever the customer
// connects, rather than an edge filter on an address.
//
// What is sent. An entry of a customer (Entry.Customer: identity named
// the customer behind the incident) that goes on the list (ChangeAdd,
// active) sends, for each RADIUS session of the customer on the entry's
// prefix (identity's holdings now), a CoA-Request with the action's
// attributes (containment.coa.block_smtp, walled or quarantine), or with
// containment.coa.disconnect a Disconnect-Request, to the session's NAS.
// One that comes off (ChangeRelease, or ChangeHold: a hold lifts an
// active block) sends a CoA-Request with containment.coa.release; a
// release never disconnects. Entries without a customer, and every change
// in dry_run, send nothing.
//
// Moves. When a customer's address changes, Policy.Follow releases the
// entry on the old prefix ("address reassigned") and adds it on the new
// one ("follows customer ..."). The release sends nothing: the session
// that held the old prefix is over, the prefix may be someone else's by
// now, and a release sent to the customer's current session would undo
// the restriction the add on the new prefix brings. (Requests only ever
// go to the customer's sessions on the entry's own prefix, of which it
// holds none by then; the note makes the rule explicit.) The add on the new
// prefix sends the restriction to the new session, as a CoA-Request even
// with disconnect set: that session began after the block, and
// disconnecting it would disconnect every reconnection. A customer who
// reconnects on the same prefix makes no change to the list at all; the
// sender notices the new session (on identity's word, and at every tick)
// and sends it the restriction the same way.
//
// Session identification (RFC 5176 §3): Acct-Session-Id, NAS-IP-Address
// (NAS-IPv6-Address for an IPv6 NAS), NAS-Identifier when the NAS sent
// one, and Framed-IP-Address or Framed-IPv6-Prefix, the holding's prefix.
// User-Name is left out although §3 recommends it: the binding's customer
// is whatever identity.radius.id_attribute names (User-Name, Class or
// Chargeable-User-Identity) and the binding does not say which, and a
// User-Name that is not the session's makes the NAS match no session and
// NAK; Acct-Session-Id with the NAS names the session exactly.
//
// Several instances. On Kafka every instance records the changes its
// timers make (grace ends, expiries, follows), so each sends their
// requests: the NAS gets the same CoA-Request from each, which is safe to
// repeat; a second Disconnect-Request finds no session and is NAKed.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2866"
	"layeh.com/radius/rfc2869"
	"layeh.com/radius/rfc3162"
	"layeh.com/radius/rfc3576"
	// RFC 5176's Error-Cause values (407, 508) join RFC 3576's names.
	_ "layeh.com/radius/rfc5176"

	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/lograte"
)

// CoAConfiguration is the RADIUS CoA / Disconnect action.
type CoAConfiguration struct {
	// Enabled sends the requests; off by default.
	Enabled bool `yaml:"enabled"`
	// Port is the NASes' Dynamic Authorization port (RFC 5176: 3799).
	Port int `yaml:"port"`
	// Secret is the secret shared with the NASes; SecretFile holds it
	// instead (read at start by the configuration loader).
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
	// Timeout is how long one try waits for the answer; Retries how many
	// times a request is sent again after the first.
	Timeout time.Duration `yaml:"timeout"`
	Retries int           `yaml:"retries"`
	// Disconnect sends a Disconnect-Request instead of a CoA-Request when
	// an entry goes on the list: for BNGs whose RADIUS server applies the
	// restriction when the customer logs in again. A release, and the
	// restriction of a session that began after the block, are always a
	// CoA-Request.
	Disconnect bool `yaml:"disconnect"`
	// BlockSMTP, Walled, Quarantine and Release are the attributes of each
	// action's CoA-Request, "Name=value" (coaAttributes lists the names).
	// The defaults name filters no BNG has until its operator defines
	// them: set what yours knows. An empty list sends no CoA-Request for
	// that action (a Disconnect-Request carries no attributes and is still
	// sent).
	BlockSMTP  []string `yaml:"block_smtp"`
	Walled     []string `yaml:"walled"`
	Quarantine []string `yaml:"quarantine"`
	Release    []string `yaml:"release"`
}

// DefaultCoAConfiguration returns the defaults documented in the README.
func DefaultCoAConfiguration() CoAConfiguration {
	return CoAConfiguration{
		Port:       3799,
		Timeout:    3 * time.Second,
		Retries:    2,
		BlockSMTP:  []string{"Filter-Id=wormsign-block-smtp"},
		Walled:     []string{"Filter-Id=wormsign-walled"},
		Quarantine: []string{"Filter-Id=wormsign-quarantine"},
		Release:    []string{"Filter-Id=wormsign-release"},
	}
}

// coaMaxRetries bounds containment.coa.retries: a NAS that answers none of
// eleven tries is down, and more only hold a worker.
const coaMaxRetries = 10

func (c CoAConfiguration) validate(key string) error {
	switch {
	case c.Enabled && c.Secret == "":
		return fmt.Errorf("%s.secret (or secret_file): required with %s.enabled", key, key)
	case c.Port < 1 || c.Port > 65535:
		return fmt.Errorf("%s.port: %d, want 1..65535", key, c.Port)
	case c.Timeout <= 0:
		return fmt.Errorf("%s.timeout: %s, want > 0", key, c.Timeout)
	case c.Retries < 0 || c.Retries > coaMaxRetries:
		return fmt.Errorf("%s.retries: %d, want 0..%d", key, c.Retries, coaMaxRetries)
	}
	for name, list := range map[string][]string{"block_smtp": c.BlockSMTP, "walled": c.Walled, "quarantine": c.Quarantine, "release": c.Release} {
		if _, err := parseCoAAttributes(key+"."+name, list); err != nil {
			return err
		}
	}
	return nil
}

// coaAttribute is an attribute an operator may name in an action's list:
// the authorization attributes of RFC 2865 that a CoA-Request may carry
// (RFC 5176 §3.6, note 3), and RFC 2869's Acct-Interim-Interval.
type coaAttribute struct {
	name  string
	typ   radius.Type
	value func(string) (radius.Attribute, error)
	// multi: RFC 5176 §3.6 allows more than one in a CoA-Request.
	multi bool
}

var coaAttributes = []coaAttribute{
	{"Filter-Id", rfc2865.FilterID_Type, coaText, true},
	{"Reply-Message", rfc2865.ReplyMessage_Type, coaText, true},
	{"Class", rfc2865.Class_Type, coaOctets, true},
	{"Session-Timeout", rfc2865.SessionTimeout_Type, coaInteger, false},
	{"Idle-Timeout", rfc2865.IdleTimeout_Type, coaInteger, false},
	{"Termination-Action", rfc2865.TerminationAction_Type, coaTerminationAction, false},
	{"Acct-Interim-Interval", rfc2869.AcctInterimInterval_Type, coaInteger, false},
}

// coaIdentification are the NAS and session identification attributes
// (RFC 5176 §3): wormsign sets them from the session, and they must not
// be used to change authorization (§3.6, note 1).
var coaIdentification = []string{"User-Name", "NAS-IP-Address", "NAS-IPv6-Address", "NAS-Identifier", "NAS-Port",
	"NAS-Port-Id", "Framed-IP-Address", "Framed-IPv6-Prefix", "Framed-Interface-Id", "Called-Station-Id",
	"Calling-Station-Id", "Acct-Session-Id", "Acct-Multi-Session-Id", "Chargeable-User-Identity", "Event-Timestamp"}

func coaText(s string) (radius.Attribute, error) {
	if s == "" {
		return nil, errors.New("empty value")
	}
	if !utf8.ValidString(s) {
		return nil, errors.New("not UTF-8 text")
	}
	return radius.NewString(s)
}

// coaOctets reads "0x" followed by hex as those octets (FreeRADIUS's
// syntax for octets), anything else as its text.
func coaOctets(s string) (radius.Attribute, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%q: 0x must be followed by hex octets", s)
		}
		return radius.NewBytes(b)
	}
	return coaText(s)
}

func coaInteger(s string) (radius.Attribute, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%q is not a number of 0..4294967295", s)
	}
	return radius.NewInteger(uint32(n)), nil
}

func coaTerminationAction(s string) (radius.Attribute, error) {
	for v, name := range rfc2865.TerminationAction_Strings {
		if strings.EqualFold(s, name) {
			return radius.NewInteger(uint32(v)), nil
		}
	}
	a, err := coaInteger(s)
	if err != nil {
		return nil, fmt.Errorf("%q: want Default, RADIUS-Request or a number", s)
	}
	return a, nil
}

// parseCoAAttributes reads an action's "Name=value" list (names in any
// case, spaces around = allowed, a value in double quotes kept as quoted);
// errors name the key and the entry.
func parseCoAAttributes(key string, list []string) (radius.Attributes, error) {
	var out radius.Attributes
	seen := map[radius.Type]bool{}
	for i, item := range list {
		k := fmt.Sprintf("%s[%d]", key, i)
		name, value, ok := strings.Cut(item, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" {
			return nil, fmt.Errorf("%s: %q, want Name=value", k, item)
		}
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			u, err := strconv.Unquote(value)
			if err != nil {
				return nil, fmt.Errorf("%s: %q: bad quoted value: %w", k, item, err)
			}
			value = u
		}
		i := slices.IndexFunc(coaAttributes, func(a coaAttribute) bool { return strings.EqualFold(a.name, name) })
		if i < 0 {
			if slices.ContainsFunc(coaIdentification, func(n string) bool { return strings.EqualFold(n, name) }) {
				return nil, fmt.Errorf("%s: %s identifies the session; wormsign sets it from the session itself", k, name)
			}
			names := make([]string, len(coaAttributes))
			for j, a := range coaAttributes {
				names[j] = a.name
			}
			return nil, fmt.Errorf("%s: unknown attribute %q, want one of %s", k, name, strings.Join(names, ", "))
		}
		def := coaAttributes[i]
		if seen[def.typ] && !def.multi {
			return nil, fmt.Errorf("%s: %s given twice; a CoA-Request carries at most one", k, def.name)
		}
		seen[def.typ] = true
		a, err := def.value(value)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", k, def.name, err)
		}
		out.Add(def.typ, a)
	}
	return out, nil
}

// Results of wormsign_containment_coa_requests_total.
const (
	coaACK     = "ack"
	coaNAK     = "nak"
	coaTimeout = "timeout"
	coaError   = "error"
	coaDropped = "dropped"
)

// Notes of Policy.Follow and Policy.place that the sender tells moves by
// (policy.go writes them; TestCoAFollowsCustomer breaks if they change).
const (
	noteReassigned = "address reassigned"
	noteFollows    = "follows customer "
)

// The sender's bounds.
const (
	// coaWorkers send in parallel, so that one NAS that does not answer
	// holds up only the sessions that hash to its worker. Each takes the
	// requests of its sessions in order: a release never overtakes the
	// add it undoes.
	coaWorkers = 4
	// coaQueue is each worker's backlog; past it a request is dropped and
	// counted.
	coaQueue = 256
	// coaStateKeep is how long the sender remembers a prefix no longer on
	// the list (what it sent there, and the change's Seq, so that a change
	// recorded late is not sent after a later one).
	coaStateKeep = 10 * time.Minute
)

// coaSender turns changes of the list into CoA and Disconnect requests.
type coaSender struct {
	config  CoAConfiguration
	secret  []byte
	attrs   map[string]radius.Attributes // by action, and "release"
	metrics *metrics
	logger  *slog.Logger
	now     func() time.Time
	seed    maphash.Seed
	// holdings are a customer's holdings at a time (identity.Table);
	// nil without identity, when nothing can be sent.
	holdings func(customer string, t time.Time) []identity.Binding

	mu     sync.Mutex
	states map[netip.Prefix]*coaState
	logs   lograte.Limiter

	queues []chan coaJob
	ctx    context.Context
	wg     sync.WaitGroup
}

// coaState is what the sender last did for a prefix.
type coaState struct {
	seq        uint64 // of the latest change of the prefix sent or seen
	restricted bool   // the restriction went out (and no release since)
	action     string
	sessions   []string // coaSessionKey of the sessions it went to
	at         time.Time
}

// coaJob is one request to send.
type coaJob struct {
	code    radius.Code
	action  string // block_smtp, walled, quarantine, release
	holding identity.Binding
	attrs   radius.Attributes
}

func newCoASender(cfg CoAConfiguration, m *metrics, logger *slog.Logger, now func() time.Time) (*coaSender, error) {
	s := &coaSender{config: cfg, secret: []byte(cfg.Secret), attrs: map[string]radius.Attributes{}, metrics: m,
		logger: logger.With("action", "coa"), now: now, seed: maphash.MakeSeed(), states: map[netip.Prefix]*coaState{}}
	for name, list := range map[string][]string{ActionBlockSMTP: cfg.BlockSMTP, ActionWalled: cfg.Walled, ActionQuarantine: cfg.Quarantine, "release": cfg.Release} {
		a, err := parseCoAAttributes("containment.coa."+name, list)
		if err != nil {
			return nil, err
		}
		s.attrs[name] = a
	}
	for range coaWorkers {
		s.queues = append(s.queues, make(chan coaJob, coaQueue))
	}
	// Zero counters are exported, so that a dashboard sees every series.
	for _, typ := range []string{"coa", "disconnect"} {
		for _, r := range []string{coaACK, coaNAK, coaTimeout, coaError, coaDropped} {
			m.coaRequests.WithLabelValues(typ, r)
		}
	}
	return s, nil
}

// start runs the workers until ctx ends; requests still queued then are
// not sent.
func (s *coaSender) start(ctx context.Context) {
	s.ctx = ctx
	if s.holdings == nil {
		s.logger.Warn("containment.coa.enabled without identity: no RADIUS session is known, so no request is sent (enable identity.radius)")
	}
	for _, q := range s.queues {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.work(q) }()
	}
}

// wait returns once the workers ended (ctx ended).
func (s *coaSender) wait() { s.wg.Wait() }

// record sends what changes call for. It is called on the decision path:
// it looks sessions up and queues, and never waits for the network.
func (s *coaSender) record(changes []Change) {
	if s.holdings == nil {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range changes {
		e := ch.Entry
		if ch.DryRun || e.Customer == "" || identity.IsKey(e.Prefix.Addr()) {
			continue
		}
		st := s.states[e.Prefix]
		if st != nil && e.Seq < st.seq {
			// Two goroutines recorded changes of the prefix and the
			// later one got here first: this one is over.
			continue
		}
		next := &coaState{seq: e.Seq, action: e.Action, at: now}
		s.states[e.Prefix] = next
		switch {
		case ch.Type == ChangeAdd && e.State == StateActive:
			next.restricted = true
			code := radius.CodeCoARequest
			if s.config.Disconnect && !strings.HasPrefix(ch.Note, noteFollows) {
				code = radius.CodeDisconnectRequest
			}
			for _, h := range s.sessions(e, now) {
				next.sessions = append(next.sessions, coaSessionKey(h))
				s.enqueue(coaJob{code: code, action: e.Action, holding: h, attrs: s.attrs[e.Action]})
			}
		case ch.Type == ChangeRelease || ch.Type == ChangeHold:
			// Without a record of its own (a restart, or another
			// instance's add), an entry that was ever active (Since) may
			// be restricted at the NAS.
			wasRestricted := !e.Since.IsZero()
			if st != nil {
				wasRestricted = st.restricted
			}
			if !wasRestricted || ch.Note == noteReassigned {
				continue
			}
			for _, h := range s.sessions(e, now) {
				s.enqueue(coaJob{code: radius.CodeCoARequest, action: "release", holding: h, attrs: s.attrs["release"]})
			}
		case st != nil:
			// Extend, schedule, refuse: nothing changes at the NAS.
			next.restricted, next.action, next.sessions = st.restricted, st.action, st.sessions
		}
	}
}

// sync sends the restriction of active entries to sessions of their
// customers that began after it was sent: a customer who reconnects on the
// same prefix changes nothing on the list. entries are active entries of
// customers; all says they are all of them, and what the sender remembers
// of prefixes no longer among them is forgotten after coaStateKeep. The
// first time it sees an entry it did not record (after a restart, or
// another instance's), it takes the sessions as they are: the add was
// sent when it was recorded.
func (s *coaSender) sync(entries []Entry, all bool) {
	if s.holdings == nil {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	live := map[netip.Prefix]bool{}
	for _, e := range entries {
		live[e.Prefix] = true
		st := s.states[e.Prefix]
		if st != nil && e.Seq < st.seq {
			continue // a snapshot older than the latest change recorded
		}
		sessions := s.sessions(e, now)
		keys := make([]string, len(sessions))
		for i, h := range sessions {
			keys[i] = coaSessionKey(h)
		}
		if st == nil || !st.restricted || st.action != e.Action {
			s.states[e.Prefix] = &coaState{seq: e.Seq, restricted: true, action: e.Action, sessions: keys, at: now}
			continue
		}
		for i, h := range sessions {
			if !slices.Contains(st.sessions, keys[i]) {
				s.enqueue(coaJob{code: radius.CodeCoARequest, action: e.Action, holding: h, attrs: s.attrs[e.Action]})
			}
		}
		st.seq, st.sessions, st.at = e.Seq, keys, now
	}
	if all {
		for pfx, st := range s.states {
			if !live[pfx] && now.Sub(st.at) > coaStateKeep {
				delete(s.states, pfx)
			}
		}
	}
}

// sessions are the RADIUS holdings of e's customer on e's prefix now:
// the sessions the entry restricts. A customer's other prefixes have
// entries of their own, which send to theirs.
func (s *coaSender) sessions(e Entry, now time.Time) []identity.Binding {
	var out []identity.Binding
	for _, b := range s.holdings(e.Customer, now) {
		if b.Source == identity.SourceRADIUS && b.Prefix == e.Prefix && b.NAS.IsValid() {
			out = append(out, b)
		}
	}
	return out
}

// coaSessionKey names a session: its NAS, Acct-Session-Id and start (a
// NAS may use a session id again after a restart).
func coaSessionKey(b identity.Binding) string {
	return b.NAS.String() + "|" + b.Session + "|" + strconv.FormatInt(b.StartMs, 10)
}

func coaType(code radius.Code) string {
	if code == radius.CodeDisconnectRequest {
		return "disconnect"
	}
	return "coa"
}

// enqueue hands j to the worker of its session, or drops it when that
// worker's backlog is full. Called with s.mu held, so that requests of a
// session are queued in the order of their changes.
func (s *coaSender) enqueue(j coaJob) {
	if j.code == radius.CodeCoARequest && len(j.attrs) == 0 {
		return // the action's list is empty: nothing to change
	}
	h := j.holding
	q := s.queues[maphash.String(s.seed, h.NAS.String()+"|"+h.Session)%uint64(len(s.queues))]
	select {
	case q <- j:
	default:
		s.metrics.coaRequests.WithLabelValues(coaType(j.code), coaDropped).Inc()
		s.logLimited(coaDropped, "coa backlog full: request dropped", s.jobAttrs(j)...)
	}
}

func (s *coaSender) work(q chan coaJob) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case j := <-q:
			s.send(j)
		}
	}
}

// send makes one request and counts its result.
func (s *coaSender) send(j coaJob) {
	typ := coaType(j.code)
	wire, err := s.packet(j).Encode()
	if err != nil {
		s.metrics.coaRequests.WithLabelValues(typ, coaError).Inc()
		s.logLimited(coaError, "cannot encode coa request", append(s.jobAttrs(j), "error", err)...)
		return
	}
	resp, err := s.exchange(wire, netip.AddrPortFrom(j.holding.NAS, uint16(s.config.Port)))
	switch {
	case s.ctx.Err() != nil:
		// Stopping: neither an answer nor its absence says anything.
	case errors.Is(err, errCoATimeout):
		s.metrics.coaRequests.WithLabelValues(typ, coaTimeout).Inc()
		s.logLimited(coaTimeout, "no answer from the NAS to the request", append(s.jobAttrs(j), "tries", s.config.Retries+1)...)
	case err != nil:
		s.metrics.coaRequests.WithLabelValues(typ, coaError).Inc()
		s.logLimited(coaError, "coa request failed", append(s.jobAttrs(j), "error", err)...)
	case resp.Code == radius.CodeCoAACK || resp.Code == radius.CodeDisconnectACK:
		s.metrics.coaRequests.WithLabelValues(typ, coaACK).Inc()
		s.logger.Debug("coa request acknowledged", s.jobAttrs(j)...)
	default:
		cause := coaErrorCause(resp)
		s.metrics.coaRequests.WithLabelValues(typ, coaNAK).Inc()
		s.metrics.coaNAKs.WithLabelValues(typ, cause).Inc()
		s.logLimited(coaNAK, "the NAS refused the request", append(s.jobAttrs(j), "answer", resp.Code.String(), "error_cause", cause)...)
	}
}

func (s *coaSender) jobAttrs(j coaJob) []any {
	return []any{"type", coaType(j.code), "for", j.action, "customer", j.holding.Customer, "prefix", j.holding.Prefix,
		"nas", j.holding.NAS, "session", j.holding.Session}
}

// packet is the request of j: the session's identification, the action's
// attributes (a Disconnect-Request must carry identification only, RFC
// 5176 §3) and Event-Timestamp. Retries send the same packet: a NAS tells
// a retransmission by its Identifier and authenticator.
func (s *coaSender) packet(j coaJob) *radius.Packet {
	h := j.holding
	p := radius.New(j.code, s.secret)
	if h.NAS.Is4() {
		p.Add(rfc2865.NASIPAddress_Type, radius.Attribute(h.NAS.AsSlice()))
	} else {
		p.Add(rfc3162.NASIPv6Address_Type, radius.Attribute(h.NAS.AsSlice()))
	}
	if h.NASIdentifier != "" {
		p.Add(rfc2865.NASIdentifier_Type, radius.Attribute(radiusOctets(h.NASIdentifier)))
	}
	if h.Session != "" {
		p.Add(rfc2866.AcctSessionID_Type, radius.Attribute(radiusOctets(h.Session)))
	}
	// The table of RFC 5176 §3.6 lists no Framed-IP-Address in a
	// Disconnect-Request, but its note 1 and §3 make it a session
	// identification attribute, which a Disconnect-Request carries; BNGs
	// take it. An IPv6 holding is sent as Framed-IPv6-Prefix whichever
	// attribute the NAS assigned it by (the binding does not keep it).
	if h.Prefix.Addr().Is4() {
		p.Add(rfc2865.FramedIPAddress_Type, radius.Attribute(h.Prefix.Addr().AsSlice()))
	} else {
		a := h.Prefix.Masked().Addr().As16()
		p.Add(rfc3162.FramedIPv6Prefix_Type, append(radius.Attribute{0, byte(h.Prefix.Bits())}, a[:(h.Prefix.Bits()+7)/8]...))
	}
	if j.code == radius.CodeCoARequest {
		p.Attributes = append(p.Attributes, j.attrs...)
	}
	if ts, err := radius.NewDate(s.now()); err == nil {
		p.Add(rfc2869.EventTimestamp_Type, ts)
	}
	return p
}

// radiusOctets undoes identity's radiusText: a value that was not UTF-8
// is kept as "0x" and its hex, which decodes to octets that are not UTF-8
// either; any other value is its own text.
func radiusOctets(s string) []byte {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		if b, err := hex.DecodeString(h); err == nil && !utf8.Valid(b) {
			return b
		}
	}
	return []byte(s)
}

var errCoATimeout = errors.New("no answer")

// exchange sends wire to dst and waits containment.coa.timeout for an
// authentic answer, containment.coa.retries more times. Answers that are
// not to this request (another Identifier or code) or do not authenticate
// with the secret (RFC 5176 §2.3: the Response Authenticator as in RFC
// 2866) are ignored, as if they never came; when only such answers came,
// the error says so.
func (s *coaSender) exchange(wire []byte, dst netip.AddrPort) (*radius.Packet, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return nil, fmt.Errorf("cannot open a socket to %s: %w", dst, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, radius.MaxPacketLength+1)
	bad, refused := 0, false
	for range s.config.Retries + 1 {
		deadline := time.Now().Add(s.config.Timeout)
		if _, err := conn.Write(wire); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("cannot send to %s: %w", dst, err)
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// Nothing listens on the NAS's port (ICMP port
				// unreachable): wait the try out, it may be restarting.
				refused = true
				select {
				case <-s.ctx.Done():
					return nil, s.ctx.Err()
				case <-time.After(time.Until(deadline)):
				}
				break
			}
			if err != nil {
				return nil, fmt.Errorf("cannot read from %s: %w", dst, err)
			}
			if p, ok := s.answer(buf[:n], wire); ok {
				return p, nil
			}
			bad++
		}
	}
	switch {
	case bad > 0:
		return nil, fmt.Errorf("%d answers from %s did not authenticate: is containment.coa.secret the NAS's?", bad, dst)
	case refused:
		return nil, fmt.Errorf("nothing listens on %s", dst)
	}
	return nil, errCoATimeout
}

// answer parses b when it is an authentic answer to the request wire.
func (s *coaSender) answer(b, wire []byte) (*radius.Packet, bool) {
	if len(b) < 20 {
		return nil, false
	}
	length := int(b[2])<<8 | int(b[3])
	if length < 20 || length > len(b) {
		return nil, false
	}
	b = b[:length]
	want := []radius.Code{radius.CodeCoAACK, radius.CodeCoANAK}
	if radius.Code(wire[0]) == radius.CodeDisconnectRequest {
		want = []radius.Code{radius.CodeDisconnectACK, radius.CodeDisconnectNAK}
	}
	if b[1] != wire[1] || !slices.Contains(want, radius.Code(b[0])) || !radius.IsAuthenticResponse(b, wire, s.secret) {
		return nil, false
	}
	p, err := radius.Parse(b, s.secret)
	return p, err == nil
}

// coaErrorCause is a NAK's Error-Cause (RFC 5176 §3.5) by name: "none"
// when absent, "other" for a value no RFC names (a NAS must not grow the
// metric's series).
func coaErrorCause(p *radius.Packet) string {
	a, ok := p.Lookup(rfc3576.ErrorCause_Type)
	if !ok {
		return "none"
	}
	v, err := radius.Integer(a)
	if err != nil {
		return "other"
	}
	if name, ok := rfc3576.ErrorCause_Strings[rfc3576.ErrorCause(v)]; ok {
		return name
	}
	return "other"
}

func (s *coaSender) logLimited(kind, msg string, args ...any) {
	if n, ok := s.logs.Allow(kind, time.Now()); ok {
		if n > 0 {
			args = append(args, "suppressed", n)
		}
		s.logger.Warn(msg, args...)
	}
}

// syncCoA has the sender check the sessions of customer's active entries
// (of every customer's when customer is ""). Nothing is sent in dry_run.
func (c *Component) syncCoA(customer string) {
	if c.coa == nil || c.config.DryRun {
		return
	}
	c.mu.Lock()
	var entries []Entry
	for _, e := range c.policy.Entries() {
		if e.State == StateActive && e.Customer != "" && (customer == "" || e.Customer == customer) {
			entries = append(entries, e)
		}
	}
	c.mu.Unlock()
	c.coa.sync(entries, customer == "")
}
