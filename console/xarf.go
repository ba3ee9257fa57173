package console

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// XARFConfiguration names the reporter (and sender) of the XARF reports
// (GET /api/v1/incidents/{id}/xarf): console.xarf.*. The keys follow the
// reporter object of XARF v4 (org, domain, contact). Empty keys are sent
// empty.
type XARFConfiguration struct {
	// ReporterOrg is the reporting organisation (reporter.org), e.g.
	// "Example ISP".
	ReporterOrg string `yaml:"reporter_org"`
	// ReporterDomain is its domain (reporter.domain), e.g. "isp.example".
	ReporterDomain string `yaml:"reporter_domain"`
	// ReporterContact is the e-mail address where a recipient answers
	// (reporter.contact), e.g. the abuse desk's.
	ReporterContact string `yaml:"reporter_contact"`
}

// xarfVersion is the XARF version the reports follow.
const xarfVersion = "4.0.0"

// An XARF report of an incident, for upstreams and peers.
//
// The field set is XARF v4.0.0 (xarf.org, xarf/xarf-spec): the core
// schema (xarf_version, report_id, timestamp, reporter, sender,
// source_identifier, category, type required; source_port,
// evidence_source, confidence, tags, description optional) and the type
// schemas messaging/spam, connection/port_scan and connection/ddos.
//
// What flow records cannot say is left out rather than invented:
//   - source_port (recommended by the core; required by the type schemas
//     when source_identifier is an address, and by messaging/spam with
//     protocol smtp): an incident aggregates many flows from many source
//     ports and the alert keeps none, so there is no one port to give.
//   - smtp_from (messaging/spam with protocol smtp): the envelope sender
//     is in the SMTP dialogue, which flows do not see.
//   - protocol of connection/port_scan for dst_entropy: that detector
//     does not keep the protocols of the flows.
//   - confidence: wormsign's score is not a probability.
//
// Reports missing those fields satisfy the core schema but not the
// conditional requirements of their type schema.
//
// The core schema allows additional properties: what XARF has no field for
// (the window, counts, sample destinations, trigger and the figures of
// each kind) is in one extension object, "wormsign".
//
// The report goes to third parties: it NEVER carries who the customer is.
// subscriber_id and evidence.identity (the customer, its sessions and
// addresses) are personal data and are left out, as are the ISP's relay
// addresses; the report names the subscriber by its address only, as the
// recipient saw it.
type xarfReport struct {
	XARFVersion string `json:"xarf_version"`
	// ReportID is a UUID in the version-4 layout derived from the incident
	// id and the event's last_seen (see xarfReportID): the same event
	// gives the same report id.
	ReportID string `json:"report_id"`
	// Timestamp is when the subscriber was last seen at it (RFC 3339,
	// UTC).
	Timestamp string      `json:"timestamp"`
	Reporter  xarfContact `json:"reporter"`
	// Sender is the reporter: the ISP files its own reports.
	Sender xarfContact `json:"sender"`
	// SourceIdentifier is the subscriber's address; an IPv6 subscriber is
	// a prefix: its first address, the length in the tag "prefix:<bits>",
	// the description and wormsign.source_prefix_length.
	SourceIdentifier string `json:"source_identifier"`
	Category         string `json:"category"`
	Type             string `json:"type"`
	// EvidenceSource is flow_analysis for the connection types; empty for
	// messaging/spam, whose enum has no value for flow data.
	EvidenceSource string   `json:"evidence_source,omitempty"`
	Description    string   `json:"description"`
	Tags           []string `json:"tags"`

	// Protocol: messaging/spam smtp; connection/* tcp, udp, icmp or sctp
	// when known.
	Protocol        string `json:"protocol,omitempty"`
	DestinationIP   string `json:"destination_ip,omitempty"`
	DestinationPort uint16 `json:"destination_port,omitempty"`
	// FirstSeen and LastSeen (connection/*) bound the incident.
	FirstSeen string `json:"first_seen,omitempty"`
	LastSeen  string `json:"last_seen,omitempty"`
	// connection/ddos: the kind of flood, and the rates over the seconds
	// the window covered (a mean, hence a lower bound of the peak).
	AttackVector    string `json:"attack_vector,omitempty"`
	PeakPPS         uint64 `json:"peak_pps,omitempty"`
	PeakBPS         uint64 `json:"peak_bps,omitempty"`
	DurationSeconds uint64 `json:"duration_seconds,omitempty"`

	Wormsign xarfWormsign `json:"wormsign"`
}

// xarfContact is XARF's contact_info: all three required, no others
// allowed.
type xarfContact struct {
	Org     string `json:"org"`
	Contact string `json:"contact"`
	Domain  string `json:"domain"`
}

// xarfWormsign is the extension object: what wormsign saw, from flow
// records only (no payload). No customer in it.
type xarfWormsign struct {
	IncidentID         string `json:"incident_id"`
	Kind               string `json:"kind"`
	State              string `json:"state"`
	SourcePrefixLength int    `json:"source_prefix_length,omitempty"`
	FirstSeen          string `json:"first_seen"`
	LastSeen           string `json:"last_seen"`
	WindowStart        string `json:"window_start"`
	WindowEnd          string `json:"window_end"`
	Window             string `json:"window,omitempty"`
	DistinctDsts       uint64 `json:"distinct_destinations"`
	Flows              uint64 `json:"flows"`
	// SampleDestinations are a few of the destinations, in first-contact
	// order (darknet: dark destinations).
	SampleDestinations []string `json:"sample_destinations"`
	Trigger            string   `json:"trigger,omitempty"`
	SamplingRate       uint32   `json:"sampling_rate,omitempty"`
	// The figures of each kind; only the incident's kind is present.
	SMTP    *xarfSMTP    `json:"smtp,omitempty"`
	Darknet *xarfDarknet `json:"darknet,omitempty"`
	Relay   *xarfRelay   `json:"relay,omitempty"`
	Flood   *xarfFlood   `json:"flood,omitempty"`
}

type xarfSMTP struct {
	FailedAttempts    uint64  `json:"failed_attempts"`
	CompletedAttempts uint64  `json:"completed_attempts"`
	FailedShare       float64 `json:"failed_share"`
}

type xarfDarknet struct {
	Ports     []uint16 `json:"ports"`
	Protocols []string `json:"protocols"`
}

type xarfRelay struct {
	Connections uint64 `json:"connections"`
	Bytes       uint64 `json:"bytes"`
}

type xarfFlood struct {
	Target      string   `json:"target"`
	Protocol    string   `json:"protocol"`
	Ports       []uint16 `json:"ports,omitempty"`
	PPS         float64  `json:"pps"`
	BPS         float64  `json:"bps"`
	Seconds     float64  `json:"seconds,omitempty"`
	AnswerRatio float64  `json:"answer_ratio"`
}

// xarfClass is the category and type of each kind: SMTP fan-out and relay
// abuse (spam through the ISP's own relays) are spam; a worm's scan and
// contacts into dark space are port scans; an outbound flood is a DDoS.
var xarfClass = map[string][2]string{
	alert.KindSMTPFanout:    {"messaging", "spam"},
	alert.KindRelayAbuse:    {"messaging", "spam"},
	alert.KindDstEntropy:    {"connection", "port_scan"},
	alert.KindDarknet:       {"connection", "port_scan"},
	alert.KindOutboundFlood: {"connection", "ddos"},
}

// xarfProtocols are the protocols of the connection types, in the order
// one is picked when flows saw several.
var xarfProtocols = []string{"tcp", "udp", "icmp", "sctp"}

// xarfAttackVectors names the flood of each kind of traffic.
var xarfAttackVectors = map[string]string{
	"icmp": "icmp_flood", "udp": "udp_flood", "tcp_syn": "syn_flood", "tcp": "tcp_flood",
}

func xarfTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// xarfReportID derives the report id from the incident id and the event's
// last_seen: SHA-256 of both, its first 16 bytes laid out as a UUID with
// the version-4 and RFC 4122 variant bits set. It is not random (UUID v4
// is meant to be) so that fetching the report of an event again gives the
// same id, and a recipient can deduplicate; its bits carry nothing
// readable.
func xarfReportID(id string, lastSeen time.Time) string {
	sum := sha256.Sum256([]byte(id + "\n" + lastSeen.UTC().Format(time.RFC3339Nano)))
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// xarfRound is a rate as XARF's integer of at least 1, 0 (omitted) below.
func xarfRound(v float64) uint64 {
	if v < 1 || math.IsNaN(v) || v > math.MaxInt64 {
		return 0
	}
	return uint64(math.Round(v))
}

// xarfTag is the namespace:predicate tag, the predicate cut to XARF's
// characters (lower case, digits, _ + - .).
func xarfTag(namespace, predicate string) string {
	p := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '+', r == '-', r == '.':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '_'
	}, predicate)
	p = strings.TrimLeft(p, "_+-.")
	if p == "" {
		return ""
	}
	return namespace + ":" + p
}

// newXARFReport reports a, the latest event of an incident.
func newXARFReport(cfg XARFConfiguration, a *alert.Alert) xarfReport {
	class, ok := xarfClass[a.Kind]
	if !ok {
		// Not a kind of wormsign's: the nearest XARF has, the kind in
		// the tags.
		class = [2]string{"connection", "reconnaissance"}
	}
	contact := xarfContact{Org: cfg.ReporterOrg, Contact: cfg.ReporterContact, Domain: cfg.ReporterDomain}
	ev := &a.Evidence
	r := xarfReport{
		XARFVersion: xarfVersion, ReportID: xarfReportID(a.ID, a.LastSeen), Timestamp: xarfTime(a.LastSeen),
		Reporter: contact, Sender: contact, SourceIdentifier: a.SubscriberIP,
		Category: class[0], Type: class[1],
	}
	source := a.SubscriberIP
	x := xarfWormsign{
		IncidentID: a.ID, Kind: a.Kind, State: a.State,
		FirstSeen: xarfTime(a.FirstSeen), LastSeen: xarfTime(a.LastSeen),
		WindowStart: xarfTime(a.WindowStart), WindowEnd: xarfTime(a.WindowEnd), Window: ev.Window,
		DistinctDsts: a.DistinctDsts, Flows: a.Flows, SampleDestinations: ev.SampleDsts,
		Trigger: ev.Trigger, SamplingRate: ev.SamplingRate,
	}
	if x.SampleDestinations == nil {
		x.SampleDestinations = []string{}
	}
	r.Tags = append(r.Tags, xarfTag("wormsign", a.Kind))
	if strings.Contains(a.SubscriberIP, "/") {
		if p, err := netip.ParsePrefix(a.SubscriberIP); err == nil {
			p = p.Masked()
			r.SourceIdentifier = p.Addr().String()
			if p.Bits() < p.Addr().BitLen() {
				x.SourcePrefixLength = p.Bits()
				r.Tags = append(r.Tags, fmt.Sprintf("prefix:%d", p.Bits()))
				source = fmt.Sprintf("the subscriber prefix %s (source_identifier is its first address)", p)
			} else {
				source = r.SourceIdentifier
			}
		}
	}
	if t := xarfTag("trigger", ev.Trigger); t != "" {
		r.Tags = append(r.Tags, t)
	}
	if class[0] == "connection" {
		r.EvidenceSource = "flow_analysis"
		r.FirstSeen, r.LastSeen = x.FirstSeen, x.LastSeen
	}
	window := ""
	if ev.Window != "" {
		window = " within " + ev.Window
	}
	switch {
	case a.Kind == alert.KindSMTPFanout:
		r.Protocol = "smtp"
		x.SMTP = &xarfSMTP{FailedAttempts: ev.FailedAttempts, CompletedAttempts: ev.CompletedAttempts, FailedShare: ev.FailedShare}
		r.Description = fmt.Sprintf("Outbound SMTP (TCP port 25) from %s to %d distinct mail servers%s (%d failed, %d completed attempts), as seen in flow records: likely spam from a compromised host.",
			source, a.DistinctDsts, window, ev.FailedAttempts, ev.CompletedAttempts)
	case ev.Relay != nil:
		r.Protocol = "smtp"
		// Not Relays: the ISP's own servers are none of the recipient's
		// business.
		x.Relay = &xarfRelay{Connections: ev.Relay.Connections, Bytes: ev.Relay.Bytes}
		r.Description = fmt.Sprintf("Mail submission from %s through the reporter's mail relays far above its usual use: %d connections, %d bytes%s, as seen in flow records: likely spam.",
			source, ev.Relay.Connections, ev.Relay.Bytes, window)
	case ev.Darknet != nil:
		x.Darknet = &xarfDarknet{Ports: ev.Darknet.Ports, Protocols: ev.Darknet.Protocols}
		for _, p := range xarfProtocols {
			if slices.ContainsFunc(ev.Darknet.Protocols, func(q string) bool { return strings.EqualFold(p, q) }) {
				r.Protocol = p
				break
			}
		}
		if len(ev.Darknet.Ports) == 1 && (r.Protocol == "tcp" || r.Protocol == "udp") && ev.Darknet.Ports[0] != 0 {
			r.DestinationPort = ev.Darknet.Ports[0]
		}
		r.Description = fmt.Sprintf("Connection attempts from %s to %d distinct unused (dark) addresses%s, ports %v, as seen in flow records: likely a scan or worm.",
			source, a.DistinctDsts, window, ev.Darknet.Ports)
	case ev.Flood != nil:
		f := ev.Flood
		x.Flood = &xarfFlood{Target: f.Target, Protocol: f.Protocol, Ports: f.Ports, PPS: f.PPS, BPS: f.BPS, Seconds: f.Seconds, AnswerRatio: f.AnswerRatio}
		if slices.Contains(xarfProtocols, strings.ToLower(f.Protocol)) {
			r.Protocol = strings.ToLower(f.Protocol)
		}
		if _, err := netip.ParseAddr(f.Target); err == nil {
			r.DestinationIP = f.Target
		}
		if len(f.Ports) == 1 && f.Ports[0] != 0 && (r.Protocol == "tcp" || r.Protocol == "udp") {
			r.DestinationPort = f.Ports[0]
		}
		r.AttackVector = xarfAttackVectors[f.Traffic]
		r.PeakPPS, r.PeakBPS, r.DurationSeconds = xarfRound(f.PPS), xarfRound(f.BPS), xarfRound(f.Seconds)
		r.Description = fmt.Sprintf("Outbound flood from %s toward %s: %.0f packets/s, %.0f bits/s%s, answered %.1f%% by the target, as seen in flow records.",
			source, f.Target, f.PPS, f.BPS, window, 100*f.AnswerRatio)
	case a.Kind == alert.KindDstEntropy:
		// The detector keeps no protocol: protocol is left out.
		r.Description = fmt.Sprintf("Connections from %s to %d distinct destinations%s with a worm's pattern (many addresses, few ports), as seen in flow records: likely a scan or worm.",
			source, a.DistinctDsts, window)
	default:
		r.Description = fmt.Sprintf("Abnormal traffic from %s (%s) to %d distinct destinations%s, as seen in flow records.", source, a.Kind, a.DistinctDsts, window)
	}
	if len(r.Description) > 1000 {
		r.Description = r.Description[:1000]
	}
	r.Tags = slices.DeleteFunc(r.Tags, func(t string) bool { return t == "" })
	r.Wormsign = x
	return r
}

// serveXARF is GET /api/v1/incidents/{id}/xarf: the incident's latest
// event as an XARF v4 report (see xarfReport), without the customer.
func (c *Component) serveXARF(w http.ResponseWriter, r *http.Request) {
	if err := params(r); err != nil {
		c.fail(w, err)
		return
	}
	id := r.PathValue("id")
	if id == "" || len(id) > 128 {
		c.fail(w, badf("incident id: %q is not an incident id", id))
		return
	}
	events, err := c.store.IncidentEvents(r.Context(), id)
	if err != nil {
		c.fail(w, err)
		return
	}
	sortEvents(events)
	writeJSON(w, http.StatusOK, newXARFReport(c.config.XARF, &events[len(events)-1]))
}
