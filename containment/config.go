package containment

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// What an entry on the block list does to a subscriber's traffic.
const (
	// ActionBlockSMTP drops the subscriber's outbound TCP/25.
	ActionBlockSMTP = "block_smtp"
	// ActionWalled is the walled garden: quarantine with a way out. The
	// subscriber's HTTP (tcp/80) goes to the notice server
	// (Walled.Redirect), DNS to quarantine_dns and anything to the
	// remediation sites (Walled.Allow) pass, the rest is dropped.
	ActionWalled = "walled"
	// ActionQuarantine drops everything but DNS to quarantine_dns and
	// quarantine_allow.
	ActionQuarantine = "quarantine"
	// ActionNone: the kind leads to no entry.
	ActionNone = "none"
)

// actionRank orders the actions by how much of the subscriber's traffic
// they stop: an entry only ever moves up (see stronger).
func actionRank(action string) int {
	switch action {
	case ActionBlockSMTP:
		return 1
	case ActionWalled:
		return 2
	case ActionQuarantine:
		return 3
	}
	return 0
}

// entryAction tells whether action is one an entry can carry.
func entryAction(action string) bool { return actionRank(action) > 0 }

// Configuration of containment: the policy that turns incidents into a
// port-25 block list, and where the list lives.
type Configuration struct {
	// Enabled switches containment on; off by default.
	Enabled bool `yaml:"enabled"`
	// DryRun computes and audits every decision but exports an empty list.
	DryRun bool `yaml:"dry_run"`
	// Actions maps each alert kind to block_smtp, walled, quarantine or
	// none.
	Actions ActionsConfiguration `yaml:"actions"`
	// Grace is the event time from an incident's open to its block, so the
	// abuse desk can call first; 0 blocks at once.
	Grace time.Duration `yaml:"grace"`
	// Hold is how long a hold (an ack with hold in the console, or
	// POST /api/v1/blocklist/hold) keeps an incident's subscriber off the
	// list.
	Hold time.Duration `yaml:"hold"`
	// Duration is how long a block lasts past the incident's last activity
	// (the last_seen of its latest alert); extended while it stays active.
	Duration time.Duration `yaml:"duration"`
	// MaxEntries bounds the list; beyond it new blocks are refused (and
	// audited as such).
	MaxEntries int `yaml:"max_entries"`
	// QuarantineAllow lists what quarantined subscribers may still reach
	// besides DNS to QuarantineDNS: "tcp/443", "udp/123".
	QuarantineAllow []PortRule `yaml:"quarantine_allow"`
	// QuarantineDNS lists the resolvers (IPv4 and IPv6 addresses, the
	// ISP's own) quarantined and walled subscribers may still query on
	// udp/tcp 53;
	// DNS to any other server is dropped, so a flood to port 53 does not
	// pass. Empty, the default: no DNS at all while quarantined (the
	// exports say so in their comments).
	QuarantineDNS []netip.Addr `yaml:"quarantine_dns"`
	// AllowList is added to detector.allow_list: never contained.
	AllowList []network.Prefix `yaml:"allow_list"`
	// WidestPrefixV4 and WidestPrefixV6 bound manual entries: a prefix
	// shorter than this is refused.
	WidestPrefixV4 int `yaml:"widest_prefix_v4"`
	WidestPrefixV6 int `yaml:"widest_prefix_v6"`
	// Topic is the compacted Kafka topic holding the list.
	Topic string `yaml:"topic"`
	// Group is the consumer group of the instances that decide on alerts;
	// webhooks and ClickHouse use <group>-audit.
	Group string `yaml:"group"`
	// StateFile keeps the list across restarts without Kafka. Empty: in
	// memory only.
	StateFile string `yaml:"state_file"`
	// ReleasedRetention is how long a released entry is kept after its
	// release; then it is removed: a tombstone on the topic, gone from the
	// state file (the audit in ClickHouse stays). While kept, the
	// entry remembers its incidents: none of them blocks the prefix
	// again. 0 keeps released entries forever. Default 7 days: the
	// topic keeps every change uncompacted for a week anyway
	// (min.compaction.lag.ms), an incident still open a week after its
	// release is a subscriber still infected, worth blocking again, and
	// the list stays bounded by a week of releases.
	ReleasedRetention time.Duration `yaml:"released_retention"`
	// Tick is how often the wall clock advances containment's time
	// (grace ends, expiries) in live operation.
	Tick time.Duration `yaml:"tick"`
	// Nftables tunes the nftables export.
	Nftables NftablesConfiguration `yaml:"nftables"`
	// Groups switch containment off or change actions per subscriber
	// group. YAML only.
	Groups []GroupConfiguration `yaml:"groups"`
	// CoA sends RADIUS CoA or Disconnect requests (RFC 5176) to the NASes
	// of customers' sessions as their entries go on and off the list
	// (see coa.go).
	CoA CoAConfiguration `yaml:"coa"`
	// Walled is the walled garden's shape: filled by `cmd` from the
	// remediation section (remediation.notice_redirect / notice_listen
	// and remediation.allow); not a YAML key of its own, nor an
	// environment variable (internal/config skips yaml:"-").
	Walled WalledConfiguration `yaml:"-"`
}

// WalledConfiguration is what walled subscribers still reach besides DNS
// to QuarantineDNS.
type WalledConfiguration struct {
	// Redirect is where a walled customer's tcp/80 goes (the notice
	// server), at most one IPv4 and one IPv6 address:port. A family
	// without one has its HTTP dropped.
	Redirect []netip.AddrPort
	// Allow are the prefixes walled customers may still reach (any
	// port): OS and antivirus updates, the ISP's help pages.
	Allow []netip.Prefix
}

// Validate names the remediation key that filled the bad value.
func (w WalledConfiguration) Validate() error {
	families := map[bool]netip.AddrPort{}
	for _, r := range w.Redirect {
		a := r.Addr()
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() || r.Port() == 0 {
			return fmt.Errorf("remediation.notice_redirect: %q, want an IPv4 or IPv6 address and a port", r)
		}
		if a.Is4In6() {
			return fmt.Errorf("remediation.notice_redirect: %s, want a plain IPv4 address, not an IPv4-mapped one", r)
		}
		if other, dup := families[a.Is6()]; dup {
			return fmt.Errorf("remediation.notice_redirect: %s and %s, want at most one address per family", other, r)
		}
		families[a.Is6()] = r
	}
	for _, p := range w.Allow {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("remediation.allow: %q, want IPv4 or IPv6 prefixes", p)
		}
	}
	return nil
}

// redirect returns the notice server of a family, when there is one.
func (w WalledConfiguration) redirect(v6 bool) (netip.AddrPort, bool) {
	for _, r := range w.Redirect {
		if r.Addr().Is6() == v6 {
			return r, true
		}
	}
	return netip.AddrPort{}, false
}

// ActionsConfiguration is the action per alert kind.
type ActionsConfiguration struct {
	SMTPFanout    string `yaml:"smtp_fanout"`
	DstEntropy    string `yaml:"dst_entropy"`
	Darknet       string `yaml:"darknet"`
	RelayAbuse    string `yaml:"relay_abuse"`
	OutboundFlood string `yaml:"outbound_flood"`
}

// For returns the action for kind; unknown kinds lead to none.
func (a ActionsConfiguration) For(kind string) string {
	var s string
	switch kind {
	case "smtp_fanout":
		s = a.SMTPFanout
	case "dst_entropy":
		s = a.DstEntropy
	case "darknet":
		s = a.Darknet
	case "relay_abuse":
		s = a.RelayAbuse
	case "outbound_flood":
		s = a.OutboundFlood
	}
	if s == "" {
		return ActionNone
	}
	return s
}

func (a ActionsConfiguration) validate(key string) error {
	for k, v := range map[string]string{"smtp_fanout": a.SMTPFanout, "dst_entropy": a.DstEntropy,
		"darknet": a.Darknet, "relay_abuse": a.RelayAbuse, "outbound_flood": a.OutboundFlood} {
		if v != "" && v != ActionNone && !entryAction(v) {
			return fmt.Errorf("%s.%s: %q, want block_smtp, walled, quarantine or none", key, k, v)
		}
	}
	return nil
}

// NftablesConfiguration tunes the nftables script.
type NftablesConfiguration struct {
	// Table is the name of the inet table the script (re)creates.
	Table string `yaml:"table"`
	// Interfaces, when set, limits the forward chain to packets coming in
	// on these interfaces (the subscriber-facing ones).
	Interfaces []string `yaml:"interfaces"`
}

// GroupConfiguration changes containment for a group of subscribers: those
// in Networks, or, when Networks is empty, those of the detector group of
// the same name.
type GroupConfiguration struct {
	Name     string           `yaml:"name"`
	Networks []network.Prefix `yaml:"networks"`
	// Disable switches containment off for the group.
	Disable bool `yaml:"disable"`
	// Actions replace the global ones for the kinds they name.
	Actions ActionsConfiguration `yaml:"actions"`
}

// PortRule is a protocol and port, written "tcp/443" or "udp/123".
type PortRule struct {
	Proto string
	Port  uint16
}

// UnmarshalText reads "tcp/443".
func (p *PortRule) UnmarshalText(b []byte) error {
	proto, port, ok := strings.Cut(strings.ToLower(strings.TrimSpace(string(b))), "/")
	n, err := strconv.ParseUint(port, 10, 16)
	if !ok || (proto != "tcp" && proto != "udp") || err != nil || n == 0 {
		return fmt.Errorf("%q: want tcp/PORT or udp/PORT", b)
	}
	*p = PortRule{Proto: proto, Port: uint16(n)}
	return nil
}

// MarshalText writes "tcp/443".
func (p PortRule) MarshalText() ([]byte, error) {
	return []byte(p.Proto + "/" + strconv.Itoa(int(p.Port))), nil
}

// DefaultConfiguration returns the defaults documented in the README.
func DefaultConfiguration() Configuration {
	return Configuration{
		Actions: ActionsConfiguration{
			SMTPFanout:    ActionBlockSMTP,
			DstEntropy:    ActionQuarantine,
			Darknet:       ActionQuarantine,
			OutboundFlood: ActionQuarantine,
			// relay_abuse goes through the ISP's own submission servers
			// on 587 with stolen credentials: a port-25 block does not
			// touch it; the abuse desk revokes the mailbox password.
			RelayAbuse: ActionNone,
		},
		Grace:          30 * time.Minute,
		Hold:           24 * time.Hour,
		Duration:       24 * time.Hour,
		MaxEntries:     10000,
		WidestPrefixV4: 32,
		WidestPrefixV6: 64,
		Topic:          "wormsign-containment-v1",
		Group:          "wormsign-containment",
		Tick:           10 * time.Second,
		Nftables:       NftablesConfiguration{Table: "wormsign"},
		CoA:            DefaultCoAConfiguration(),

		// A week, as the topic's min.compaction.lag.ms (see
		// Configuration.ReleasedRetention).
		ReleasedRetention: 7 * 24 * time.Hour,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.Grace < 0:
		return fmt.Errorf("containment.grace: %s, want >= 0", c.Grace)
	case c.Hold <= 0:
		return fmt.Errorf("containment.hold: %s, want > 0", c.Hold)
	case c.Duration < time.Minute:
		return fmt.Errorf("containment.duration: %s, want >= 1m", c.Duration)
	case c.MaxEntries < 1:
		return fmt.Errorf("containment.max_entries: %d, want >= 1", c.MaxEntries)
	case c.WidestPrefixV4 < 0 || c.WidestPrefixV4 > 32:
		return fmt.Errorf("containment.widest_prefix_v4: %d, want 0..32", c.WidestPrefixV4)
	case c.WidestPrefixV6 < 0 || c.WidestPrefixV6 > 128:
		return fmt.Errorf("containment.widest_prefix_v6: %d, want 0..128", c.WidestPrefixV6)
	case c.Topic == "":
		return fmt.Errorf("containment.topic must not be empty")
	case c.Group == "":
		return fmt.Errorf("containment.group must not be empty")
	case c.Tick <= 0:
		return fmt.Errorf("containment.tick: %s, want > 0", c.Tick)
	case c.ReleasedRetention < 0:
		return fmt.Errorf("containment.released_retention: %s, want >= 0 (0 keeps released entries)", c.ReleasedRetention)
	case !validName(c.Nftables.Table):
		return fmt.Errorf("containment.nftables.table: %q, want letters, digits and _", c.Nftables.Table)
	}
	for _, a := range c.QuarantineDNS {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("containment.quarantine_dns: %q, want IPv4 or IPv6 addresses of resolvers", a)
		}
	}
	for _, i := range c.Nftables.Interfaces {
		if !validIfname(i) {
			return fmt.Errorf("containment.nftables.interfaces: %q is not an interface name", i)
		}
	}
	if err := c.Actions.validate("containment.actions"); err != nil {
		return err
	}
	if err := c.CoA.validate("containment.coa"); err != nil {
		return err
	}
	if err := c.Walled.Validate(); err != nil {
		return err
	}
	for i, g := range c.Groups {
		if g.Name == "" {
			return fmt.Errorf("containment.groups[%d].name must not be empty", i)
		}
		if err := g.Actions.validate(fmt.Sprintf("containment.groups[%d].actions", i)); err != nil {
			return err
		}
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func validIfname(s string) bool {
	if s == "" || len(s) > 15 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
