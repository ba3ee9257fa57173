// Package identity tells who held an address at a time: the customer of a
// RADIUS accounting session, of a DHCP lease, or, behind a carrier-grade
// NAT, of the inside address a port block belonged to. The collector
// resolves every flow with it before keying it, so that a customer's flows
// stay in one partition across address changes; the detector names the
// customer in its alerts; containment blocks the customer's address of
// the moment, not an address someone else holds by then.
//
// A Binding is one holding: an address or prefix (or a CGNAT port block)
// held from a start to an end. Bindings are the records of the compacted
// topic identity.topic (one key per address and port block, the latest
// record wins), and the rows of ClickHouse subscriber_bindings. Every
// instance applies the same records in the same order to its own Table,
// so every instance resolves an address the same way.
package identity

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
)

// Sources of bindings.
const (
	SourceRADIUS = "radius"
	SourceDHCP   = "dhcp"
	SourceCGNAT  = "cgnat"
	// SourceStatic is the static CSV map (detector.subscriber_map), the
	// fallback when no dynamic source knows an address.
	SourceStatic = "static"
)

// Binding is one holding of an address or prefix by a customer, or, for
// SourceCGNAT, of a port block of a public address by an inside address.
type Binding struct {
	// Customer is the customer id (User-Name, Class, a DHCP client id or
	// MAC mapped through the static map). Empty for a CGNAT port block,
	// whose holder is Inside.
	Customer string `json:"customer,omitempty"`
	// Prefix is the address (/32, /128) or prefix held; for a port block
	// the public address.
	Prefix netip.Prefix `json:"prefix"`
	// PortLo and PortHi bound a CGNAT port block (inclusive).
	PortLo uint16 `json:"port_lo,omitempty"`
	PortHi uint16 `json:"port_hi,omitempty"`
	// Inside is the inside address a port block was allocated to.
	Inside netip.Addr `json:"inside,omitzero"`
	Source string     `json:"source"`
	// Session is the source's name for the holding: Acct-Session-Id, the
	// DHCP client id or MAC, the NAT's exporter and event.
	Session string `json:"session,omitempty"`
	// NAS is who reported it: the RADIUS NAS (NAS-IP-Address, else the
	// packet's source), the DHCP server, the NAT exporter.
	NAS netip.Addr `json:"nas,omitzero"`
	// NASIdentifier is RADIUS NAS-Identifier, when sent.
	NASIdentifier string `json:"nas_identifier,omitempty"`
	// StartMs is when the holding began; EndMs when it ended (0 while it
	// lasts). An open holding ends at ExpiresMs unless the source renews
	// it (three missed interim updates, the lease's end); 0 is never.
	StartMs   int64 `json:"start_ms"`
	EndMs     int64 `json:"end_ms,omitempty"`
	ExpiresMs int64 `json:"expires_ms,omitempty"`
	// UpdatedMs is when the source last spoke of it.
	UpdatedMs int64 `json:"updated_ms"`
	// EndReason says why it ended: stop, release, expired, reassigned
	// (someone else started on the address), nas_restart.
	EndReason string `json:"end_reason,omitempty"`
}

// End reasons.
const (
	EndStop       = "stop"
	EndRelease    = "release"
	EndExpired    = "expired"
	EndReassigned = "reassigned"
	EndNASRestart = "nas_restart"
)

// Holds tells whether b covers time t (Unix ms): from its start, until its
// end or, while open, its expiry.
func (b *Binding) Holds(t int64) bool {
	if t < b.StartMs {
		return false
	}
	if b.EndMs > 0 {
		return t < b.EndMs
	}
	return b.ExpiresMs == 0 || t < b.ExpiresMs
}

// Open tells whether b still lasts at t: not ended, not expired.
func (b *Binding) Open(t int64) bool { return b.EndMs == 0 && (b.ExpiresMs == 0 || t < b.ExpiresMs) }

// EndAt is when b ended or will end at the latest: its end, else its
// expiry, else never (0).
func (b *Binding) EndAt() int64 {
	if b.EndMs > 0 {
		return b.EndMs
	}
	return b.ExpiresMs
}

// same tells whether b and o are records of one holding.
func (b *Binding) same(o *Binding) bool {
	return b.Prefix == o.Prefix && b.PortLo == o.PortLo && b.Customer == o.Customer &&
		b.Inside == o.Inside && b.Session == o.Session && b.Source == o.Source && b.StartMs == o.StartMs
}

// TopicKey is the binding's key on the compacted topic: its address and
// port block, so that the latest record of an address survives
// compaction.
func (b *Binding) TopicKey() []byte {
	k := b.Prefix.String()
	if b.Source == SourceCGNAT {
		k += ":" + strconv.Itoa(int(b.PortLo))
	}
	return []byte(k)
}

// Validate refuses a binding no lookup could use.
func (b *Binding) Validate() error {
	switch {
	case !b.Prefix.IsValid():
		return fmt.Errorf("binding without a valid prefix")
	case b.Source == SourceCGNAT && (!b.Inside.IsValid() || b.PortLo > b.PortHi):
		return fmt.Errorf("port block %s:%d-%d without an inside address or with an empty range", b.Prefix, b.PortLo, b.PortHi)
	case b.Source != SourceCGNAT && b.Customer == "":
		return fmt.Errorf("binding of %s without a customer", b.Prefix)
	case b.StartMs <= 0:
		return fmt.Errorf("binding of %s without a start", b.Prefix)
	case b.EndMs != 0 && b.EndMs < b.StartMs:
		return fmt.Errorf("binding of %s ends before it starts", b.Prefix)
	}
	return nil
}

// Marshal is the topic record and state file line of b.
func (b *Binding) Marshal() ([]byte, error) { return json.Marshal(b) }

// Unmarshal reads a record written by Marshal and validates it.
func Unmarshal(data []byte) (Binding, error) {
	var b Binding
	if err := json.Unmarshal(data, &b); err != nil {
		return Binding{}, fmt.Errorf("cannot read binding: %w", err)
	}
	b.Prefix = b.Prefix.Masked()
	if err := b.Validate(); err != nil {
		return Binding{}, err
	}
	return b, nil
}

// Resolution is what a flow's address resolved to.
type Resolution struct {
	// Customer who held the address at the time, "" when no source knows.
	Customer string
	// Inside is the inside address behind a CGNAT port block, when the
	// address was a public one; invalid otherwise.
	Inside netip.Addr
	// Binding is the customer's binding (of Inside behind a CGNAT).
	Binding Binding
}

// keyPrefix is where customer keys live: 100::/64, the IPv6 discard-only
// prefix (RFC 6666), which never appears as the source of a subscriber's
// flow.
var keyPrefix = [8]byte{0x01, 0x00}

// Key is the subscriber key of a customer: the address the detector keeps
// the customer's state under and the collector keys its flows by, so that
// one customer's flows share one partition and one state whichever
// addresses it held. It is 64 bits of SHA-256 of the id inside 100::/64;
// the detector keeps the id beside the state and treats a second id on one
// key as a collision.
func Key(customer string) netip.Addr {
	h := sha256.Sum256([]byte(customer))
	var a [16]byte
	copy(a[:8], keyPrefix[:])
	binary.BigEndian.PutUint64(a[8:], binary.BigEndian.Uint64(h[:8]))
	return netip.AddrFrom16(a)
}

// IsKey tells whether a is a customer key rather than an address.
func IsKey(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	return [8]byte(b[:8]) == keyPrefix
}
