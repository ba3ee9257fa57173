package identity

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// Configuration of identity: where bindings come from and how long they
// are kept.
type Configuration struct {
	// Enabled makes every stage follow the bindings: the collector keys
	// flows by customer, the detector names customers, containment
	// follows them. A source configured here switches it on too.
	Enabled bool `yaml:"enabled"`
	// Topic is the compacted Kafka topic of bindings.
	Topic string `yaml:"topic"`
	// StateFile keeps the bindings across restarts without Kafka; empty:
	// in memory only.
	StateFile string `yaml:"state_file"`
	// Keep is how long an ended holding stays in memory: long enough for
	// late flows, replays and the console's recent history. ClickHouse
	// keeps it for Retention.
	Keep time.Duration `yaml:"keep"`
	// Retention is how long ClickHouse subscriber_bindings keeps a
	// holding after it ended (a TTL).
	Retention time.Duration `yaml:"retention"`
	// MaxBindings bounds the table; MaxHistory the holdings kept per
	// address or port block.
	MaxBindings int `yaml:"max_bindings"`
	MaxHistory  int `yaml:"max_history"`
	// ClockSlack is how far before a holding's start a flow may be timed
	// and still be its holder's (exporters' flow times run behind by up
	// to a second; clocks differ).
	ClockSlack time.Duration       `yaml:"clock_slack"`
	RADIUS     RADIUSConfiguration `yaml:"radius"`
	DHCP       DHCPConfiguration   `yaml:"dhcp"`
	CGNAT      CGNATConfiguration  `yaml:"cgnat"`
}

// RADIUSConfiguration is the RADIUS accounting listener.
type RADIUSConfiguration struct {
	// Listen is the UDP address (":1813"); empty: no listener.
	Listen string `yaml:"listen"`
	// Secret is the shared secret of every client; SecretFile holds it
	// instead (read at start by the configuration loader).
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
	// Clients lists the NAS (or proxy) prefixes allowed to send; a packet
	// from elsewhere is dropped and counted.
	Clients []network.Prefix `yaml:"clients"`
	// IDAttribute names the attribute that is the customer id:
	// User-Name, Class or Chargeable-User-Identity.
	IDAttribute string `yaml:"id_attribute"`
	// InterimMisses is how many missed interim updates end a session.
	InterimMisses int `yaml:"interim_misses"`
	// DefaultInterim is the interim interval assumed when a session
	// says none (Acct-Interim-Interval); 0: such a session never
	// expires, only a Stop or an Accounting-Off ends it.
	DefaultInterim time.Duration `yaml:"default_interim"`
}

// DHCPConfiguration is the lease endpoint that Kea's run_script hook and
// dnsmasq's --dhcp-script report to (deploy/identity/wormsign-lease).
type DHCPConfiguration struct {
	// Token guards POST /api/v1/identity/leases (or token_file); empty:
	// no endpoint.
	Token string `yaml:"token"`
	// TokenFile holds the token instead (read at start).
	TokenFile string `yaml:"token_file"`
	// Customer is what names the customer of a lease: client_id
	// (falling back to the MAC) or mac.
	Customer string `yaml:"customer"`
}

// CGNATConfiguration is the collector's use of NAT event records.
type CGNATConfiguration struct {
	// Enabled turns the collector's NAT events into port-block bindings.
	Enabled bool `yaml:"enabled"`
	// BlockTimeout ends a port block no de-allocation was seen for (a
	// lost record); 0 keeps it until one comes or someone else gets it.
	BlockTimeout time.Duration `yaml:"block_timeout"`
}

// Customer id attributes.
const (
	AttributeUserName = "User-Name"
	AttributeClass    = "Class"
	AttributeCUI      = "Chargeable-User-Identity"
)

// DefaultConfiguration: no source, a day of ended holdings in memory,
// thirty days in ClickHouse.
func DefaultConfiguration() Configuration {
	return Configuration{
		Topic:       "wormsign-identity-v1",
		Keep:        24 * time.Hour,
		Retention:   30 * 24 * time.Hour,
		MaxBindings: DefaultMaxBindings,
		MaxHistory:  DefaultMaxHistory,
		ClockSlack:  DefaultClockSlack,
		RADIUS:      RADIUSConfiguration{IDAttribute: AttributeUserName, InterimMisses: 3},
		DHCP:        DHCPConfiguration{Customer: "client_id"},
		CGNAT:       CGNATConfiguration{BlockTimeout: 24 * time.Hour},
	}
}

// Validate checks c.
func (c Configuration) Validate() error {
	switch {
	case c.Topic == "":
		return fmt.Errorf("identity.topic: empty")
	case c.Keep < time.Minute:
		return fmt.Errorf("identity.keep: %s, want at least 1m", c.Keep)
	case c.Retention < 24*time.Hour:
		return fmt.Errorf("identity.retention: %s, want at least 24h", c.Retention)
	case c.MaxBindings < 1 || c.MaxHistory < 1:
		return fmt.Errorf("identity.max_bindings and max_history: want >= 1")
	case c.DHCP.Customer != "client_id" && c.DHCP.Customer != "mac":
		return fmt.Errorf("identity.dhcp.customer: %q, want client_id or mac", c.DHCP.Customer)
	case c.ClockSlack < 0 || c.ClockSlack > time.Minute:
		return fmt.Errorf("identity.clock_slack: %s, want 0 to 1m", c.ClockSlack)
	case c.CGNAT.BlockTimeout < 0:
		return fmt.Errorf("identity.cgnat.block_timeout: negative")
	}
	r := c.RADIUS
	if r.Listen == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(r.Listen); err != nil {
		return fmt.Errorf("identity.radius.listen: %w", err)
	}
	switch {
	case r.Secret == "":
		return fmt.Errorf("identity.radius.secret (or secret_file): required with identity.radius.listen")
	case len(r.Clients) == 0:
		return fmt.Errorf("identity.radius.clients: list the NAS or proxy prefixes allowed to send")
	case r.InterimMisses < 1:
		return fmt.Errorf("identity.radius.interim_misses: want >= 1")
	case r.DefaultInterim < 0:
		return fmt.Errorf("identity.radius.default_interim: negative")
	}
	switch strings.ToLower(r.IDAttribute) {
	case strings.ToLower(AttributeUserName), strings.ToLower(AttributeClass), strings.ToLower(AttributeCUI):
	default:
		return fmt.Errorf("identity.radius.id_attribute: %q, want User-Name, Class or Chargeable-User-Identity", r.IDAttribute)
	}
	return nil
}

// Sources tells whether any source is configured, so that stages know
// whether to follow the bindings at all.
func (c Configuration) Sources() bool {
	return c.RADIUS.Listen != "" || c.DHCP.Token != "" || c.CGNAT.Enabled
}

// Active tells whether the stages follow bindings at all.
func (c Configuration) Active() bool { return c.Enabled || c.Sources() }
