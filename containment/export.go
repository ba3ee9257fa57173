package containment

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
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
	// Released entries (kept released_retention), newest first: only in
	// the json export.
	Released []Entry
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
		return l.writeExaBGP(w, cfg, false)
	case "exabgp-conf":
		return l.writeExaBGP(w, cfg, true)
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
	// Added for the console; routers may ignore them.
	Customer   string    `json:"customer,omitempty"`
	Incidents  []string  `json:"incidents,omitempty"`
	ReleasedAt time.Time `json:"released_at,omitzero"`
	// ReleasedIncidents are incidents whose block of the prefix is over.
	ReleasedIncidents []string `json:"released_incidents,omitempty"`
}

// JSONList is the json export.
type JSONList struct {
	GeneratedAt time.Time   `json:"generated_at"`
	DryRun      bool        `json:"dry_run"`
	Entries     []JSONEntry `json:"entries"`
	// Waiting holds pending (grace running) and held entries, and with
	// dry_run what would be on the list.
	Waiting []JSONEntry `json:"waiting"`
	// Released are entries taken off the list and not yet removed
	// (containment.released_retention): never exported, for the console.
	Released []JSONEntry `json:"released"`
}

func (l List) jsonEntry(e Entry) JSONEntry {
	j := JSONEntry{IP: entryText(e), State: e.State, Action: e.Action, SubscriberID: e.SubscriberID,
		IncidentID: e.IncidentID, Kind: e.Kind, Actor: e.Actor, Note: e.Note, Since: e.Since,
		BlockAt: e.BlockAt, HeldUntil: e.HeldUntil, Customer: e.Customer, Incidents: e.incidents(),
		ReleasedAt: e.ReleasedAt, ReleasedIncidents: e.ReleasedIncidents}
	if e.State == StateActive {
		j.Expires, j.TimeoutSeconds = e.Expires, l.timeout(e)
	}
	return j
}

func (l List) writeJSON(w io.Writer) error {
	out := JSONList{GeneratedAt: l.GeneratedAt, DryRun: l.DryRun, Entries: []JSONEntry{}, Waiting: []JSONEntry{}, Released: []JSONEntry{}}
	for _, e := range l.Active {
		out.Entries = append(out.Entries, l.jsonEntry(e))
	}
	for _, e := range l.Waiting {
		out.Waiting = append(out.Waiting, l.jsonEntry(e))
	}
	for _, e := range l.Released {
		out.Released = append(out.Released, l.jsonEntry(e))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// setName is the set an entry goes into, in nftables and ipset alike.
func setName(e Entry) string {
	name := "smtp_block"
	switch e.Action {
	case ActionWalled:
		name = "walled"
	case ActionQuarantine:
		name = "quarantine"
	}
	if e.Prefix.Addr().Is6() {
		name += "6"
	}
	return name
}

var setNames = []string{"smtp_block", "smtp_block6", "walled", "walled6", "quarantine", "quarantine6"}

// walledAllow returns containment.walled.allow (remediation.allow) as
// text, IPv4 and IPv6 apart, masked and without the prefixes another one
// covers: nft refuses overlapping intervals in one set.
func walledAllow(cfg Configuration) (v4, v6 []string) {
	var all []netip.Prefix
	for _, p := range cfg.Walled.Allow {
		if p.IsValid() {
			all = append(all, p.Masked())
		}
	}
	for i, p := range all {
		covered := slices.ContainsFunc(all[:i], func(q netip.Prefix) bool { return q.Overlaps(p) && q.Bits() <= p.Bits() }) ||
			slices.ContainsFunc(all[i+1:], func(q netip.Prefix) bool { return q.Overlaps(p) && q.Bits() < p.Bits() })
		switch {
		case covered:
		case p.Addr().Is4():
			v4 = append(v4, p.String())
		default:
			v6 = append(v6, p.String())
		}
	}
	return v4, v6
}

// walledText says what a walled subscriber may still reach, for the
// exports' comments: HTTP to the notice server (remediation.notice_redirect,
// per family), DNS as quarantined ones, and the remediation sites.
func walledText(cfg Configuration) (http, dns, allow string) {
	var parts []string
	for _, fam := range []struct {
		name string
		v6   bool
	}{{"IPv4", false}, {"IPv6", true}} {
		if r, ok := cfg.Walled.redirect(fam.v6); ok {
			parts = append(parts, fam.name+" HTTP (tcp/80) redirected to the notice server "+r.String())
		} else {
			parts = append(parts, fam.name+" HTTP dropped (no "+fam.name+" address in remediation.notice_redirect)")
		}
	}
	http = strings.Join(parts, ", ")
	dns, _ = quarantineText(cfg)
	v4, v6 := walledAllow(cfg)
	if all := slices.Concat(v4, v6); len(all) > 0 {
		allow = "anything to " + strings.Join(all, ", ") + " (remediation.allow)"
	} else {
		allow = "no remediation site (remediation.allow is empty)"
	}
	return http, dns, allow
}

// discardsAll tells whether e's action drops all but what it lets through
// (quarantine, walled), rather than one port (block_smtp).
func discardsAll(e Entry) bool {
	return e.Action == ActionQuarantine || e.Action == ActionWalled
}

// resolvers returns containment.quarantine_dns as text, IPv4 and IPv6
// apart.
func resolvers(cfg Configuration) (v4, v6 []string) {
	for _, a := range cfg.QuarantineDNS {
		a = a.Unmap()
		switch {
		case !a.IsValid():
		case a.Is4():
			v4 = append(v4, a.String())
		default:
			v6 = append(v6, a.String())
		}
	}
	return v4, v6
}

// quarantineText says what a quarantined subscriber may still reach, for
// the exports' comments: DNS (only to containment.quarantine_dns, none
// when it is empty) and containment.quarantine_allow.
func quarantineText(cfg Configuration) (dns, allow string) {
	v4, v6 := resolvers(cfg)
	if all := slices.Concat(v4, v6); len(all) > 0 {
		dns = "DNS (udp/tcp 53) only to " + strings.Join(all, ", ") + " (containment.quarantine_dns)"
	} else {
		dns = "no DNS (containment.quarantine_dns is empty)"
	}
	if len(cfg.QuarantineAllow) > 0 {
		rules := make([]string, len(cfg.QuarantineAllow))
		for i, r := range cfg.QuarantineAllow {
			rules[i] = r.Proto + "/" + fmt.Sprint(r.Port)
		}
		allow = strings.Join(rules, ", ") + " (containment.quarantine_allow)"
	} else {
		allow = "no other port (containment.quarantine_allow is empty)"
	}
	return dns, allow
}

// writeNftables writes a script for `nft -f`: the first two lines make sure
// the table exists and delete it, the rest defines it anew, and nft applies
// the whole file in one transaction, so the swap is atomic and loading it
// twice is harmless. The walled garden is a forward rule set like
// quarantine's (DNS to the resolvers, the remediation sites and the
// notice server accepted, the rest dropped) and, for a family with a
// notice server, a nat prerouting chain that sends its tcp/80 there.
func (l List) writeNftables(w io.Writer, cfg Configuration) error {
	t := cfg.Nftables.Table
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	if l.DryRun {
		b.WriteString("# containment.dry_run: the sets are left empty\n")
	}
	dns, allow := quarantineText(cfg)
	wHTTP, wDNS, wAllow := walledText(cfg)
	fmt.Fprintf(&b, "# smtp_block: tcp/25 dropped\n# quarantine: %s; %s; everything else dropped\n", dns, allow)
	fmt.Fprintf(&b, "# walled: %s; %s; %s; everything else dropped\n", wHTTP, wDNS, wAllow)
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
	v4, v6 := resolvers(cfg)
	allow4, allow6 := walledAllow(cfg)
	families := []struct {
		ip, sfx string
		dns     []string
		allow   []string
		v6      bool
	}{{"ip", "", v4, allow4, false}, {"ip6", "6", v6, allow6, true}}
	for _, fam := range families {
		fmt.Fprintf(&b, "\t\t%s%s saddr @smtp_block%s tcp dport 25 drop\n", iif, fam.ip, fam.sfx)
		if len(fam.dns) > 0 {
			fmt.Fprintf(&b, "\t\t%s%s saddr @walled%s %s daddr { %s } meta l4proto { tcp, udp } th dport 53 accept\n",
				iif, fam.ip, fam.sfx, fam.ip, strings.Join(fam.dns, ", "))
		}
		if len(fam.allow) > 0 {
			fmt.Fprintf(&b, "\t\t%s%s saddr @walled%s %s daddr { %s } accept\n", iif, fam.ip, fam.sfx, fam.ip, strings.Join(fam.allow, ", "))
		}
		if r, ok := cfg.Walled.redirect(fam.v6); ok {
			// After the DNAT below: a notice server beyond the router
			// is forwarded to (one on the router itself is input).
			fmt.Fprintf(&b, "\t\t%s%s saddr @walled%s %s daddr %s tcp dport %d accept\n", iif, fam.ip, fam.sfx, fam.ip, r.Addr(), r.Port())
		}
		fmt.Fprintf(&b, "\t\t%s%s saddr @walled%s drop\n", iif, fam.ip, fam.sfx)
		// DNS only to the configured resolvers: a flood to port 53 of
		// anyone else is dropped with the rest.
		if len(fam.dns) > 0 {
			fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s %s daddr { %s } meta l4proto { tcp, udp } th dport 53 accept\n",
				iif, fam.ip, fam.sfx, fam.ip, strings.Join(fam.dns, ", "))
		}
		for _, a := range cfg.QuarantineAllow {
			fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s %s dport %d accept\n", iif, fam.ip, fam.sfx, a.Proto, a.Port)
		}
		fmt.Fprintf(&b, "\t\t%s%s saddr @quarantine%s drop\n", iif, fam.ip, fam.sfx)
	}
	b.WriteString("\t}\n")
	// The walled garden's HTTP goes to the notice server, except to the
	// remediation sites (updates often come over plain HTTP). A family
	// without a notice server gets no DNAT: its HTTP is dropped above.
	if len(cfg.Walled.Redirect) > 0 {
		b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
		for _, fam := range families {
			r, ok := cfg.Walled.redirect(fam.v6)
			if !ok {
				fmt.Fprintf(&b, "\t\t# no %s notice server (remediation.notice_redirect): walled %s HTTP is dropped\n", fam.ip, fam.ip)
				continue
			}
			except := ""
			if len(fam.allow) > 0 {
				except = fmt.Sprintf("%s daddr != { %s } ", fam.ip, strings.Join(fam.allow, ", "))
			}
			fmt.Fprintf(&b, "\t\t%s%s saddr @walled%s %stcp dport 80 dnat %s to %s\n", iif, fam.ip, fam.sfx, except, fam.ip, r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// writeIpset writes input for `ipset restore`: each set is created when
// missing (-exist), flushed and filled, each address with its time left.
// hash:ip holds addresses; an IPv4 prefix is added as its range (ipset
// expands it), an IPv6 prefix other than /128 cannot be and is left out
// with a comment. The sets carry no rules: comments say what the quarantine
// and walled sets allow, with iptables rules that do it (the walled
// garden's DNAT among them).
func (l List) writeIpset(w io.Writer, cfg Configuration) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	dns, allow := quarantineText(cfg)
	if strings.HasPrefix(dns, "DNS ") {
		dns = strings.Replace(dns, " only to ", " to ", 1)
		fmt.Fprintf(&b, "# smtp_block, smtp_block6: drop tcp/25 from these sources\n# quarantine, quarantine6: drop everything from these sources but %s and %s\n", dns, allow)
	} else {
		fmt.Fprintf(&b, "# smtp_block, smtp_block6: drop tcp/25 from these sources\n# quarantine, quarantine6: drop everything from these sources but %s, and %s\n", allow, dns)
	}
	wHTTP, wDNS, wAllow := walledText(cfg)
	fmt.Fprintf(&b, "# walled, walled6: %s; %s; %s; drop everything else from these sources\n", wHTTP, wDNS, wAllow)
	v4, v6 := resolvers(cfg)
	allow4, allow6 := walledAllow(cfg)
	for _, fam := range []struct {
		cmd, sfx string
		dns      []string
		allow    []string
		v6       bool
	}{{"iptables", "", v4, allow4, false}, {"ip6tables", "6", v6, allow6, true}} {
		fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set smtp_block%s src -p tcp --dport 25 -j DROP\n", fam.cmd, fam.sfx)
		r, redirect := cfg.Walled.redirect(fam.v6)
		if redirect {
			// ACCEPT in the nat table ends its PREROUTING for the
			// packet: HTTP to a remediation site is not redirected.
			for _, a := range fam.allow {
				fmt.Fprintf(&b, "#   %s -t nat -A PREROUTING -m set --match-set walled%s src -d %s -j ACCEPT\n", fam.cmd, fam.sfx, a)
			}
			fmt.Fprintf(&b, "#   %s -t nat -A PREROUTING -m set --match-set walled%s src -p tcp --dport 80 -j DNAT --to-destination %s\n", fam.cmd, fam.sfx, r)
		}
		for _, d := range fam.dns {
			for _, proto := range []string{"udp", "tcp"} {
				fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set walled%s src -d %s -p %s --dport 53 -j ACCEPT\n", fam.cmd, fam.sfx, d, proto)
			}
		}
		for _, a := range fam.allow {
			fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set walled%s src -d %s -j ACCEPT\n", fam.cmd, fam.sfx, a)
		}
		if redirect {
			fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set walled%s src -d %s -p tcp --dport %d -j ACCEPT\n", fam.cmd, fam.sfx, r.Addr(), r.Port())
		}
		fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set walled%s src -j DROP\n", fam.cmd, fam.sfx)
		for _, r := range fam.dns {
			for _, proto := range []string{"udp", "tcp"} {
				fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set quarantine%s src -d %s -p %s --dport 53 -j ACCEPT\n", fam.cmd, fam.sfx, r, proto)
			}
		}
		for _, a := range cfg.QuarantineAllow {
			fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set quarantine%s src -p %s --dport %d -j ACCEPT\n", fam.cmd, fam.sfx, a.Proto, a.Port)
		}
		fmt.Fprintf(&b, "#   %s -A FORWARD -m set --match-set quarantine%s src -j DROP\n", fam.cmd, fam.sfx)
	}
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
// 25; quarantine matches the source alone, and for each resolver of
// containment.quarantine_dns of the source's family an accept route
// (destination, source, udp/tcp, port 53) lets DNS to it through: a
// route with a destination component comes before one without (RFC 8955
// §5.1), so routers match it first. containment.quarantine_allow is not
// exported: on FlowSpec routers a quarantined subscriber loses it. A
// walled entry is exported as quarantine: FlowSpec can discard, accept or
// redirect to a VRF, but cannot rewrite a destination, so the notice
// server's DNAT is not there, nor are the remediation sites.
func (l List) writeExaBGP(w io.Writer, cfg Configuration, conf bool) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# wormsign containment block list, generated %s\n", l.GeneratedAt.Format(time.RFC3339))
	dns, _ := quarantineText(cfg)
	fmt.Fprintf(&b, "# smtp_block: tcp/25 discarded\n# quarantine: %s; everything else discarded (containment.quarantine_allow too: not exported to FlowSpec)\n", dns)
	b.WriteString("# walled: exported as quarantine: FlowSpec cannot DNAT, so no HTTP redirect to the notice server (remediation.notice_redirect), and remediation.allow is not exported\n")
	if conf {
		b.WriteString("flow {\n")
	}
	v4, v6 := resolvers(cfg)
	route := func(name, match, then string) {
		if conf {
			fmt.Fprintf(&b, "\troute %s {\n\t\tmatch { %s }\n\t\tthen { %s; }\n\t}\n", name, match, then)
		} else {
			fmt.Fprintf(&b, "announce flow route { match { %s } then { %s; } }\n", match, then)
		}
	}
	routeName := strings.NewReplacer(".", "-", ":", "-", "/", "-").Replace
	for _, e := range l.Active {
		if !discardsAll(e) {
			continue
		}
		src, dsts, bits := e.Prefix.String(), v4, "/32"
		if e.Prefix.Addr().Is6() {
			src, dsts, bits = src+"/0", v6, "/128/0"
		}
		for _, r := range dsts {
			route("wormsign-dns-"+routeName(e.Prefix.String())+"-"+routeName(r),
				fmt.Sprintf("destination %s%s; source %s; protocol [ udp tcp ]; destination-port =53;", r, bits, src), "accept")
		}
	}
	for _, e := range l.Active {
		match := fmt.Sprintf("source %s; protocol tcp; destination-port =25;", e.Prefix)
		if discardsAll(e) {
			match = fmt.Sprintf("source %s;", e.Prefix)
		}
		if e.Prefix.Addr().Is6() {
			// IPv6 FlowSpec source takes an offset: /len/0.
			match = strings.Replace(match, e.Prefix.String(), e.Prefix.String()+"/0", 1)
		}
		route("wormsign-"+routeName(e.Prefix.String()), match, "discard")
	}
	if conf {
		b.WriteString("}\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
