package containment

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Formats of the block list export.
var Formats = []string{"json", "plain", "nftables", "ipset", "exabgp", "exabgp-conf"}

// ValidFormat tells whether f is one of Formats.
func ValidFormat(f string) bool {
	for _, x := range Formats {
		if x == f {
			return true
		}
	}
	return false
}

// ContentType of a format.
func ContentType(format string) string {
	if format == "json" {
		return "application/json"
	}
	return "text/plain; charset=utf-8"
}

// List is the block list as exported at one time.
type List struct {
	GeneratedAt time.Time
	DryRun      bool
	// Active entries (exported), and those pending, held or waiting for
	// the customer's address (shown in JSON only).
	Active, Waiting []Entry
}

// MakeList splits entries at now: active and not expired are exported;
// with dry_run nothing is.
func MakeList(entries []Entry, now time.Time, dryRun bool) List {
	l := List{GeneratedAt: now.UTC(), DryRun: dryRun}
	for _, e := range entries {
		switch {
		case e.State == StateActive && e.Expires.After(now) && !dryRun:
			l.Active = append(l.Active, e)
		case e.State == StatePending || e.State == StateHeld || e.State == StateUnbound || (dryRun && e.State == StateActive && e.Expires.After(now)):
			l.Waiting = append(l.Waiting, e)
		}
	}
	return l
}

// timeout is the time left of e at the list's time, in whole seconds, at
// least 1.
func (l List) timeout(e Entry) int64 {
	return max(1, int64(math.Ceil(e.Expires.Sub(l.GeneratedAt).Seconds())))
}

// Write renders the list in format for an export target.
func (l List) Write(w io.Writer, format string, cfg Configuration) error {
	switch format {
	case "json":
		return l.writeJSON(w)
	case "plain":
		for _, e := range l.Active {
			if _, err := fmt.Fprintln(w, entryText(e)); err != nil {
				return err
			}
		}
		return nil
	case "nftables":
		return l.writeNftables(w, cfg)
	case "ipset":
		return l.writeIpset(w, cfg)
	case "exabgp":
		return l.writeExaBGP(w, false)
	case "exabgp-conf":
		return l.writeExaBGP(w, true)
	}
	return fmt.Errorf("%w: unknown format %q, want one of %s", ErrBadInput, format, strings.Join(Formats, ", "))
}

// entryText is an address for a single host, else the prefix.
func entryText(e Entry) string {
	if e.Prefix.IsSingleIP() {
		return e.Prefix.Addr().String()
	}
	return e.Prefix.String()
}

// JSONEntry is one entry in the json export.
type JSONEntry struct {
	IP             string    `json:"ip"`
	State          string    `json:"state"`
	Action         string    `json:"action"`
	SubscriberID   string    `json:"subscriber_id"`
	IncidentID     string    `json:"incident_id"`
	Kind           string    `json:"kind"`
	Actor          string    `json:"actor"`
	Note           string    `json:"note,omitempty"`
	Since          time.Time `json:"since,omitzero"`
	Expires        time.Time `json:"expires,omitzero"`
	TimeoutSeconds int64     `json:"timeout_seconds,omitempty"`
	BlockAt        time.Time `json:"block_at,omitzero"`
	HeldUntil      time.Time `json:"held_until,omitzero"`
}

// JSONList is the json export.
type JSONList struct {
	GeneratedAt time.Time   `json:"generated_at"`
	DryRun      bool        `json:"dry_run"`
	Entries     []JSONEntry `json:"entries"`
	// Waiting holds pending (grace running) and held entries, and with
	// dry_run what would be on the list.
	Waiting []JSONEntry `json:"waiting"`
}

func (l List) jsonEntry(e Entry) JSONEntry {
	j := JSONEntry{IP: entryText(e), State: e.State, Action: e.Action, SubscriberID: e.SubscriberID,
		IncidentID: e.IncidentID, Kind: e.Kind, Actor: e.Actor, Note: e.Note, Since: e.Since,
		BlockAt: e.BlockAt, HeldUntil: e.HeldUntil}
	if e.State == StateActive {
		j.Expires, j.TimeoutSeconds = e.Expires, l.timeout(e)
	}
	return j
}

func (l List) writeJSON(w io.Writer) error {
	out := JSONList{GeneratedAt: l.GeneratedAt, DryRun: l.DryRun, Entries: []JSONEntry{}, Waiting: []JSONEntry{}}
	for _, e := range l.Active {
		out.Entries = append(out.Entries, l.jsonEntry(e))
	}
	for _, e := range l.Waiting {
		out.Waiting = append(out.Waiting, l.jsonEntry(e))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// setName is the set an entry goes into, in nftables and ipset alike.
func setName(e Entry) string {
	name := "smtp_block"
	if e.Action == ActionQuarantine {
		name = "quarantine"
	}
	if e.Prefix.Addr().Is6() {
		name += "6"
	}
	return name
}

var setNames = []string{"smtp_block", "smtp_block6", "quarantine", "quarantine6"}

// writeNftables writes a script for `nft -f`: the first two lines make sure
// the table exists and delete it, the rest defines it anew, and nft applies
// the whole file in one transaction, so the swap is atomic and loading it
// twice is harmless.
func (l List) writeNftables(w io.Writer, cfg Configuration) error {
	t := cfg.Nftables.Table
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	if l.DryRun {
		b.WriteString("# containment.dry_run: the sets are left empty\n")
	}
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\ntable inet %s {\n", t, t, t)
	elements := map[string][]string{}
	for _, e := range l.Active {
		n := setName(e)
		elements[n] = append(elements[n], fmt.Sprintf("%s timeout %ds", entryText(e), l.timeout(e)))
	}
	for _, n := range setNames {
		typ := "ipv4_addr"
		if strings.HasSuffix(n, "6") {
			typ = "ipv6_addr"
		}
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\tflags interval, timeout\n", n, typ)
		if len(elements[n]) > 0 {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(elements[n], ",\n\t\t\t"))
		}
		b.WriteString("\t}\n")
	}
	iif := ""
	if len(cfg.Nftables.Interfaces) > 0 {
		quoted := make([]string, len(cfg.Nftables.Interfaces))
		for i, n := range cfg.Nftables.Interfaces {
			quoted[i] = `"` + n + `"`
		}
		iif = "iifname { " + strings.Join(quoted, ", ") + " } "
	}
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
	for _, fam := range []struct{ ip, sfx string }{{"ip", ""}, {"ip6", "6"}} {
		fmt.Fprintf(&b, "\t\t%s%s saddr @smtp_block%s tcp dport 25 drop\n", iif, fam.ip, fam.sfx)
		fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s meta l4proto { tcp, udp } th dport 53 accept\n", iif, fam.ip, fam.sfx)
		for _, a := range cfg.QuarantineAllow {
			fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s %s dport %d accept\n", iif, fam.ip, fam.sfx, a.Proto, a.Port)
		}
		fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s drop\n", iif, fam.ip, fam.sfx)
	}
	b.WriteString("\t}\n}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// writeIpset writes input for `ipset restore`: each set is created when
// missing (-exist), flushed and filled, each address with its time left.
// hash:ip holds addresses; an IPv4 prefix is added as its range (ipset
// expands it), an IPv6 prefix other than /128 cannot be and is left out
// with a comment.
func (l List) writeIpset(w io.Writer, cfg Configuration) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	def := int64(cfg.Duration.Seconds())
	for _, n := range setNames {
		fam := "inet"
		if strings.HasSuffix(n, "6") {
			fam = "inet6"
		}
		fmt.Fprintf(&b, "create %s hash:ip family %s timeout %d maxelem %d -exist\nflush %s\n", n, fam, def, max(65536, cfg.MaxEntries), n)
	}
	for _, e := range l.Active {
		if e.Prefix.Addr().Is6() && !e.Prefix.IsSingleIP() {
			fmt.Fprintf(&b, "# left out %s: hash:ip holds single IPv6 addresses\n", e.Prefix)
			continue
		}
		fmt.Fprintf(&b, "add %s %s timeout %d -exist\n", setName(e), entryText(e), l.timeout(e))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeExaBGP writes BGP FlowSpec discard routes: as commands for ExaBGP's
// API (announce flow route { ... }), or as a flow { } block for its
// configuration. block_smtp matches the source, TCP and destination port
// 25; quarantine matches the source alone (FlowSpec cannot say "all but
// DNS": a quarantined subscriber loses DNS too on FlowSpec routers).
func (l List) writeExaBGP(w io.Writer, conf bool) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	if conf {
		b.WriteString("flow {\n")
	}
	for _, e := range l.Active {
		match := fmt.Sprintf("source %s; protocol tcp; destination-port =25;", e.Prefix)
		if e.Action == ActionQuarantine {
			match = fmt.Sprintf("source %s;", e.Prefix)
		}
		if e.Prefix.Addr().Is6() {
			// IPv6 FlowSpec source takes an offset: /len/0.
			match = strings.Replace(match, e.Prefix.String(), e.Prefix.String()+"/0", 1)
		}
		if conf {
			name := "wormsign-" + strings.NewReplacer(".", "-", ":", "-", "/", "-").Replace(e.Prefix.String())
			fmt.Fprintf(&b, "\troute %s {\n\t\tmatch { %s }\n\t\tthen { discard; }\n\t}\n", name, match)
		} else {
			fmt.Fprintf(&b, "announce flow route { match { %s } then { discard; } }\n", match)
		}
	}
	if conf {
		b.WriteString("}\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
