package identity

// The DHCP lease endpoint, POST /api/v1/identity/leases: a DHCP server's
// lease script (deploy/identity/wormsign-lease, run by Kea's run_script
// hook or dnsmasq's --dhcp-script) reports each lease event, and the
// endpoint records it as a binding of the leased address.
//
// Request: "Authorization: Bearer <identity.dhcp.token>", and a body of
// at most 16 KiB, either a JSON object (Content-Type application/json)
// or the same fields form-encoded (application/x-www-form-urlencoded,
// each field at most once; what the script sends, since curl's
// --data-urlencode escapes any value safely):
//
//	event      bound | renew | release | expire (required)
//	address    the leased address, e.g. 203.0.113.7 (required)
//	mac        the client's hardware address
//	client_id  the client identifier (DHCP option 61), hex
//	hostname   the client's host name (logged only)
//	lease_end  when the lease ends, Unix seconds; 0 or absent: unknown
//	           (the binding then lasts until a release or expire)
//	server     the DHCP server's address (the binding's NAS) or name
//	time       when the event happened, Unix seconds; absent: now
//
// Unknown fields, a bad address, MAC or client id, or a time more than
// leaseMaxSkew ahead of the clock are refused with 400.
//
// The customer is named by the client id (falling back to the MAC) when
// identity.dhcp.customer is client_id, by the MAC when it is mac. Both are
// normalised to lowercase hex octets joined by colons ("02:00:5e:00:53:01",
// a client id "01:02:00:5e:00:53:01"), and in that form looked up in the
// static map (Dependencies.StaticID: the client id first, then the MAC):
// the first id the map names is the customer, else the client id or MAC
// itself. The client id or MAC is the binding's Session.
//
// bound and renew record a holding of the address (/32, /128) by the
// customer, ending at lease_end; a report for an address the same client
// already holds continues that holding (same start) rather than starting
// another. release and expire end the current holding of the address if
// it is the client's customer's; an expire ends it at the lease's end
// when that came first (a server reclaims expired leases late).
//
// Answers: 204 recorded; 200 with a text body when there was nothing to
// record (a release or expire of an address the customer does not hold:
// the DHCP server is not at fault, and retrying would not help); 400,
// 401, 405, 413, 415 refused (do not retry); 503 with Retry-After when
// the binding could not be recorded (Kafka down): retry. Errors are
// {"error": "..."} in JSON (httpserver.Error), as every API's.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/lograte"
)

// The lease endpoint's bounds.
const (
	leaseBodyLimit = 16 << 10
	// leaseMaxSkew is how far ahead of this clock a report's time may be
	// (the DHCP server's clock may run a little ahead); a holding that
	// starts in the future would hide the address's present holder.
	leaseMaxSkew = 10 * time.Minute
	// leaseRecordTimeout bounds one Record (a Kafka outage): the script
	// gets 503 and retries.
	leaseRecordTimeout = 5 * time.Second
	// leaseMaxSeconds is the last second of year 9999: later times are
	// nonsense, and would overflow as milliseconds.
	leaseMaxSeconds = 253402300799
	maxHostname     = 255
	maxServer       = 255
	maxMAC          = 16 // chaddr
	maxClientID     = 255
)

// Lease events.
const (
	LeaseBound   = "bound"
	LeaseRenew   = "renew"
	LeaseRelease = "release"
	LeaseExpire  = "expire"
)

// Reasons of leasesRefused.
const (
	refuseToken     = "token"
	refuseMethod    = "method"
	refuseMediaType = "media_type"
	refuseTooLarge  = "too_large"
	refuseMalformed = "malformed"
	refuseInvalid   = "invalid"
	// not_held is answered 200: a release or expire of an address the
	// customer does not hold records nothing.
	refuseNotHeld = "not_held"
)

// LeaseReport is the body of POST /api/v1/identity/leases.
type LeaseReport struct {
	Event    string `json:"event"`
	Address  string `json:"address"`
	MAC      string `json:"mac,omitempty"`
	ClientID string `json:"client_id,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	LeaseEnd int64  `json:"lease_end,omitempty"`
	Server   string `json:"server,omitempty"`
	Time     int64  `json:"time,omitempty"`
}

// leaseHandler serves the lease endpoint.
type leaseHandler struct {
	config DHCPConfiguration
	// token is the SHA-256 of the configured token: comparing hashes of
	// equal length in constant time tells nothing of the token, not even
	// its length.
	token    [32]byte
	rec      Recorder
	table    *Table
	staticID func(key string) string
	metrics  *metrics
	logger   *slog.Logger
	now      func() time.Time
	logs     lograte.Limiter
	// mu makes a report's look at the table and its record one step: Kea
	// runs its hook scripts concurrently, and two reports of one lease
	// deciding on a start each would make two holdings.
	mu sync.Mutex
}

func newLeaseHandler(cfg DHCPConfiguration, rec Recorder, table *Table, staticID func(string) string, m *metrics, logger *slog.Logger, now func() time.Time) *leaseHandler {
	if logger == nil {
		logger = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	// Zero counters are exported, so that a dashboard sees every series.
	for _, ev := range []string{LeaseBound, LeaseRenew, LeaseRelease, LeaseExpire} {
		m.leases.WithLabelValues(ev)
	}
	for _, r := range []string{refuseToken, refuseMethod, refuseMediaType, refuseTooLarge, refuseMalformed, refuseInvalid, refuseNotHeld} {
		m.leasesRefused.WithLabelValues(r)
	}
	return &leaseHandler{
		config: cfg, token: sha256.Sum256([]byte(cfg.Token)), rec: rec, table: table, staticID: staticID,
		metrics: m, logger: logger.With("source", SourceDHCP), now: now,
	}
}

// lease is a validated report.
type lease struct {
	event    string
	prefix   netip.Prefix
	session  string // the normalised client id or MAC
	customer string
	server   netip.Addr
	endMs    int64 // 0: unknown
	atMs     int64
	hostname string
}

func (h *leaseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The token first: nothing else is told to whoever lacks it.
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="wormsign"`)
		h.refuse(w, r, refuseToken, http.StatusUnauthorized, "missing or wrong bearer token")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.refuse(w, r, refuseMethod, http.StatusMethodNotAllowed, "use POST")
		return
	}
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mediaType != "application/json" && mediaType != "application/x-www-form-urlencoded" {
		h.refuse(w, r, refuseMediaType, http.StatusUnsupportedMediaType, "want application/json or application/x-www-form-urlencoded")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, leaseBodyLimit))
	if err != nil {
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			h.refuse(w, r, refuseTooLarge, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", leaseBodyLimit))
			return
		}
		h.refuse(w, r, refuseMalformed, http.StatusBadRequest, "cannot read body: "+err.Error())
		return
	}
	var rep LeaseReport
	if mediaType == "application/json" {
		err = decodeLeaseJSON(body, &rep)
	} else {
		err = decodeLeaseForm(body, &rep)
	}
	if err != nil {
		h.refuse(w, r, refuseMalformed, http.StatusBadRequest, err.Error())
		return
	}
	l, err := h.validate(&rep)
	if err != nil {
		h.refuse(w, r, refuseInvalid, http.StatusBadRequest, err.Error())
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.binding(l)
	if !ok {
		h.metrics.leasesRefused.WithLabelValues(refuseNotHeld).Inc()
		h.logger.Debug("lease end of an address the customer does not hold", "event", l.event, "address", l.prefix.Addr(), "customer", l.customer)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "nothing recorded: the address is not held by this customer\n")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), leaseRecordTimeout)
	defer cancel()
	if _, err := h.rec.Record(ctx, b); err != nil {
		h.metrics.recordErrors.Inc()
		h.logLimited("record", "cannot record lease", "event", l.event, "address", l.prefix.Addr(), "error", err)
		httpserver.Unavailable(w, time.Second, "cannot record the binding now, retry")
		return
	}
	h.metrics.leases.WithLabelValues(l.event).Inc()
	h.logger.Debug("lease recorded", "event", l.event, "address", l.prefix.Addr(), "customer", l.customer,
		"session", l.session, "hostname", l.hostname)
	w.WriteHeader(http.StatusNoContent)
}

func (h *leaseHandler) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

// refuse counts and answers a refused report, {"error": msg} as every
// API answers errors; the answer is what the script logs.
func (h *leaseHandler) refuse(w http.ResponseWriter, r *http.Request, reason string, status int, msg string) {
	h.metrics.leasesRefused.WithLabelValues(reason).Inc()
	h.logLimited(reason, "lease report refused", "reason", reason, "from", r.RemoteAddr, "error", msg)
	httpserver.WriteError(w, status, msg)
}

func (h *leaseHandler) logLimited(kind, msg string, args ...any) {
	if n, ok := h.logs.Allow(kind, h.now()); ok {
		if n > 0 {
			args = append(args, "suppressed", n)
		}
		h.logger.Warn(msg, args...)
	}
}

func decodeLeaseJSON(body []byte, rep *LeaseReport) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(rep); err != nil {
		return fmt.Errorf("cannot read lease report: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("cannot read lease report: data after the object")
	}
	return nil
}

// decodeLeaseForm reads the form-encoded report: the same fields, each at
// most once; an empty value is an absent field.
func decodeLeaseForm(body []byte, rep *LeaseReport) error {
	values, err := url.ParseQuery(string(body))
	if err != nil {
		return fmt.Errorf("cannot read lease report: %w", err)
	}
	for name, vs := range values {
		if len(vs) != 1 {
			return fmt.Errorf("cannot read lease report: field %q given %d times", name, len(vs))
		}
		v := vs[0]
		var err error
		switch name {
		case "event":
			rep.Event = v
		case "address":
			rep.Address = v
		case "mac":
			rep.MAC = v
		case "client_id":
			rep.ClientID = v
		case "hostname":
			rep.Hostname = v
		case "server":
			rep.Server = v
		case "lease_end":
			rep.LeaseEnd, err = formInt(v)
		case "time":
			rep.Time, err = formInt(v)
		default:
			return fmt.Errorf("cannot read lease report: unknown field %q", name)
		}
		if err != nil {
			return fmt.Errorf("cannot read lease report: field %s: %w", name, err)
		}
	}
	return nil
}

func formInt(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	return strconv.ParseInt(v, 10, 64)
}

// validate checks a report and names its customer.
func (h *leaseHandler) validate(rep *LeaseReport) (lease, error) {
	l := lease{event: rep.Event, hostname: rep.Hostname}
	switch rep.Event {
	case LeaseBound, LeaseRenew, LeaseRelease, LeaseExpire:
	default:
		return l, fmt.Errorf("event %q: want bound, renew, release or expire", rep.Event)
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(rep.Address))
	if err != nil {
		return l, fmt.Errorf("address: %w", err)
	}
	addr = addr.Unmap()
	if addr.Zone() != "" || addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast() ||
		addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return l, fmt.Errorf("address %s: not a subscriber's address", addr)
	}
	l.prefix = netip.PrefixFrom(addr, addr.BitLen())
	mac, err := hexID(rep.MAC, maxMAC)
	if err != nil {
		return l, fmt.Errorf("mac: %w", err)
	}
	clientID, err := hexID(rep.ClientID, maxClientID)
	if err != nil {
		return l, fmt.Errorf("client_id: %w", err)
	}
	keys := make([]string, 0, 2)
	if h.config.Customer == "client_id" && clientID != "" {
		keys = append(keys, clientID)
	}
	if mac != "" {
		keys = append(keys, mac)
	}
	if len(keys) == 0 {
		return l, fmt.Errorf("no customer: identity.dhcp.customer is %s and the report names no client", h.config.Customer)
	}
	l.session, l.customer = keys[0], keys[0]
	if h.staticID != nil {
		for _, k := range keys {
			if id := h.staticID(k); id != "" {
				l.customer = id
				break
			}
		}
	}
	if len(rep.Hostname) > maxHostname {
		return l, fmt.Errorf("hostname: longer than %d bytes", maxHostname)
	}
	if len(rep.Server) > maxServer {
		return l, fmt.Errorf("server: longer than %d bytes", maxServer)
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(rep.Server)); err == nil && !a.IsUnspecified() {
		l.server = a.Unmap()
	}
	now := h.now()
	switch {
	case rep.Time < 0 || rep.Time > leaseMaxSeconds:
		return l, fmt.Errorf("time %d: out of range", rep.Time)
	case rep.Time == 0:
		l.atMs = now.UnixMilli()
	default:
		l.atMs = rep.Time * 1000
	}
	if l.atMs > now.Add(leaseMaxSkew).UnixMilli() {
		return l, fmt.Errorf("time %d: more than %s ahead of this server's clock", rep.Time, leaseMaxSkew)
	}
	if rep.LeaseEnd < 0 || rep.LeaseEnd > leaseMaxSeconds {
		return l, fmt.Errorf("lease_end %d: out of range", rep.LeaseEnd)
	}
	l.endMs = rep.LeaseEnd * 1000
	if (l.event == LeaseBound || l.event == LeaseRenew) && l.endMs != 0 && l.endMs <= l.atMs {
		return l, fmt.Errorf("lease_end %d: not after the event's time %d", rep.LeaseEnd, l.atMs/1000)
	}
	return l, nil
}

// binding is the record a lease event makes; false when there is nothing
// to record.
func (h *leaseHandler) binding(l lease) (Binding, bool) {
	if l.event == LeaseBound || l.event == LeaseRenew {
		b := Binding{
			Customer: l.customer, Prefix: l.prefix, Source: SourceDHCP, Session: l.session, NAS: l.server,
			StartMs: l.atMs, ExpiresMs: l.endMs, UpdatedMs: l.atMs,
		}
		// A renewal, or a bound the server reports again (a client's
		// INIT-REBOOT, dnsmasq's restart), continues the holding: a
		// record with another start would be a second holding that ends
		// the first as reassigned.
		if cur, ok := h.table.Holding(l.prefix, l.atMs); ok &&
			cur.Source == SourceDHCP && cur.Customer == l.customer && cur.Session == l.session {
			b.StartMs = cur.StartMs
		}
		return b, true
	}
	cur, ok := h.current(l.prefix, l.atMs)
	if !ok || cur.Source != SourceDHCP || cur.Customer != l.customer || cur.EndMs != 0 || cur.UpdatedMs > l.atMs {
		// Someone else's address by now, already ended, or renewed
		// after this event (a report that came late).
		return Binding{}, false
	}
	b := cur
	b.EndMs, b.UpdatedMs = l.atMs, l.atMs
	b.EndReason = EndRelease
	if l.event == LeaseExpire {
		b.EndReason = EndExpired
		if cur.ExpiresMs != 0 && cur.ExpiresMs < b.EndMs {
			b.EndMs = cur.ExpiresMs
		}
	}
	b.EndMs = max(b.EndMs, b.StartMs)
	return b, true
}

// current is the latest holding of exactly p that started by t, ended
// or not: Table.Holding would miss a lease that has run out by the time
// its server reports the expiry.
func (h *leaseHandler) current(p netip.Prefix, tMs int64) (Binding, bool) {
	var cur Binding
	found := false
	for _, b := range h.table.Address(p.Addr()) {
		if b.Prefix == p && b.Source != SourceCGNAT && b.StartMs <= tMs && (!found || b.StartMs >= cur.StartMs) {
			cur, found = b, true
		}
	}
	return cur, found
}

// hexID normalises a MAC or client id to lowercase hex octets joined by
// colons, whichever form the server wrote: colon- or dash-separated
// octets (leading zeros optional, as dhclient writes them), dotted groups
// (0200.5e00.5301) or bare hex. "" stays "".
func hexID(s string, maxOctets int) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	var raw []byte
	if strings.ContainsAny(s, ":-") {
		for part := range strings.SplitSeq(strings.ReplaceAll(s, "-", ":"), ":") {
			if len(part) == 0 || len(part) > 2 {
				return "", fmt.Errorf("%q: not hex octets", s)
			}
			v, err := strconv.ParseUint(part, 16, 8)
			if err != nil {
				return "", fmt.Errorf("%q: not hex octets", s)
			}
			raw = append(raw, byte(v))
		}
	} else {
		var err error
		if raw, err = hex.DecodeString(strings.ReplaceAll(s, ".", "")); err != nil {
			return "", fmt.Errorf("%q: not hex octets", s)
		}
	}
	if len(raw) == 0 || len(raw) > maxOctets {
		return "", fmt.Errorf("%q: want 1 to %d octets", s, maxOctets)
	}
	var out strings.Builder
	for i, c := range raw {
		if i > 0 {
			out.WriteByte(':')
		}
		out.WriteString(hex.EncodeToString([]byte{c}))
	}
	return out.String(), nil
}
