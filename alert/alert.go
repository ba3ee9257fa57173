// Package alert defines the alert event that the detector emits and the sink,
// webhooks and dashboard consume. Its JSON form is the contract documented in
// docs/detection.md (Alert JSON) and in schemas/alert.schema.json.
package alert

import (
	"encoding/json"
	"fmt"
	"time"
)

// Kinds of alert.
const (
	KindSMTPFanout    = "smtp_fanout"
	KindDstEntropy    = "dst_entropy"
	KindDarknet       = "darknet"
	KindRelayAbuse    = "relay_abuse"
	KindOutboundFlood = "outbound_flood"
)

// Kinds lists every alert kind.
var Kinds = []string{KindSMTPFanout, KindDstEntropy, KindDarknet, KindRelayAbuse, KindOutboundFlood}

// States of an incident's lifecycle.
const (
	StateOpen     = "open"
	StateUpdate   = "update"
	StateResolved = "resolved"
)

// Alert is one event in an incident's life.
type Alert struct {
	ID           string    `json:"id"`
	Kind         string    `json:"kind"`
	State        string    `json:"state"`
	SubscriberIP string    `json:"subscriber_ip"`
	SubscriberID string    `json:"subscriber_id"`
	WindowStart  time.Time `json:"window_start"`
	WindowEnd    time.Time `json:"window_end"`
	FirstSeen    time.Time `json:"first_seen"`
	LastSeen     time.Time `json:"last_seen"`
	DistinctDsts uint64    `json:"distinct_dsts"`
	Flows        uint64    `json:"flows"`
	Score        float64   `json:"score"`
	Exporter     string    `json:"exporter"`
	Evidence     Evidence  `json:"evidence"`
}

// Evidence backs an alert with what an abuse desk needs to call a customer.
type Evidence struct {
	// SampleDsts holds a few of the destinations, in first-contact order.
	SampleDsts []string `json:"sample_dsts"`
	// FailedAttempts are TCP/25 flows without an ACK from the subscriber
	// (or of <= 3 packets when flags are missing): a server that never
	// answered or refused.
	FailedAttempts    uint64  `json:"failed_attempts"`
	CompletedAttempts uint64  `json:"completed_attempts"`
	FailedShare       float64 `json:"failed_share"`
	Threshold         uint64  `json:"threshold"`
	Window            string  `json:"window"`
	// DistinctDsts60m is the slow-sender view: distinct TCP/25
	// destinations over the long window.
	DistinctDsts60m uint64 `json:"distinct_dsts_60m"`
	// Saturated tells that the exact destination set hit its cap and
	// DistinctDsts is a lower bound.
	Saturated bool `json:"saturated,omitempty"`
	// Trigger names what opened or keeps the incident: threshold,
	// slow_window, sequential (smtp_fanout); worm_pattern,
	// baseline_departure (dst_entropy); min_dsts (darknet);
	// max_connections, max_bytes, baseline_departure (relay_abuse);
	// max_pps, max_bps, max_flows_per_minute, baseline_departure
	// (outbound_flood).
	Trigger string `json:"trigger,omitempty"`
	// SamplingRate is the exporter's 1:N sampling (0 or 1: unsampled).
	// Flow counts are scaled by it; distinct counts are as observed.
	SamplingRate uint32 `json:"sampling_rate,omitempty"`
	// Group is the subscriber group whose thresholds applied.
	Group string `json:"group,omitempty"`
	// Sequential is the state of the smtp_fanout sequential test.
	Sequential *Sequential `json:"sequential,omitempty"`
	// Entropy backs dst_entropy alerts.
	Entropy *Entropy `json:"entropy,omitempty"`
	// Darknet backs darknet alerts; SampleDsts lists dark destinations.
	Darknet *Darknet `json:"darknet,omitempty"`
	// Relay backs relay_abuse alerts.
	Relay *Relay `json:"relay,omitempty"`
	// Flood backs outbound_flood alerts.
	Flood *Flood `json:"flood,omitempty"`
	// Identity names the customer who held the subscriber's address,
	// when an identity source (RADIUS, DHCP, CGNAT) knew it.
	Identity *Identity `json:"identity,omitempty"`
}

// Identity is who the subscriber is: the customer, the binding behind the
// address of its latest flow, and the addresses its flows came from within
// the window.
type Identity struct {
	Customer string `json:"customer"`
	// Source (radius, dhcp), Session (Acct-Session-Id, DHCP client) and
	// Since (the binding's start) describe the binding of the latest
	// address; empty when it is no longer known.
	Source  string    `json:"source,omitempty"`
	Session string    `json:"session,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	// Addresses are the customer's addresses seen within the window, in
	// order of first flow (at most 4). Changed: more than one, the
	// binding changed inside the window.
	Addresses []IdentityAddress `json:"addresses"`
	Changed   bool              `json:"changed"`
}

// IdentityAddress is one address of a customer and when its flows came
// from it.
type IdentityAddress struct {
	Address   string    `json:"address"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// Darknet is what a subscriber sent into dark space within the window.
type Darknet struct {
	// Ports are the destination ports seen (ICMP: type<<8|code), sorted,
	// at most 16; Protocols likewise.
	Ports     []uint16 `json:"ports"`
	Protocols []string `json:"protocols"`
	// FirstContact is the end time of the first dark contact still in
	// the window.
	FirstContact time.Time `json:"first_contact"`
}

// Relay is a subscriber's use of the ISP's mail submission servers within
// the window, counts scaled by sampling.
type Relay struct {
	Connections uint64   `json:"connections"`
	Bytes       uint64   `json:"bytes"`
	Relays      []string `json:"relays"`
	Ports       []uint16 `json:"ports"`
	// The subscriber's own baseline: connections expected in a window,
	// their standard deviation, and minutes learned.
	BaselineConnections float64 `json:"baseline_connections"`
	BaselineStdDev      float64 `json:"baseline_stddev"`
	BaselineSteps       uint64  `json:"baseline_steps"`
}

// Flood is a subscriber's traffic toward one target, as rates over the
// seconds it covered within the window, scaled by sampling.
type Flood struct {
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	// Traffic is the kind the baseline is kept for: icmp, udp, tcp_syn
	// (TCP without ACK), tcp, other.
	Traffic        string   `json:"traffic"`
	Ports          []uint16 `json:"ports"`
	PPS            float64  `json:"pps"`
	BPS            float64  `json:"bps"`
	FlowsPerMinute float64  `json:"flows_per_minute"`
	Seconds        float64  `json:"seconds"`
	Packets        uint64   `json:"packets"`
	Bytes          uint64   `json:"bytes"`
	// AnswerPackets the target sent back in the window, and their share
	// of Packets: a flood target answers little or nothing.
	AnswerPackets uint64  `json:"answer_packets"`
	AnswerRatio   float64 `json:"answer_ratio"`
	// The subscriber's busiest target's usual packet rate for this kind
	// of traffic, and minutes learned.
	BaselinePPS   float64 `json:"baseline_pps"`
	BaselineSteps uint64  `json:"baseline_steps"`
}

// Sequential is the Threshold Random Walk over first-contact TCP/25
// attempts: Odds of "infected" against "benign" after FirstContacts new
// destinations, FirstFailed of which failed; Decision is "infected" once
// Odds reached Bound.
type Sequential struct {
	Decision      string  `json:"decision"`
	Odds          float64 `json:"odds"`
	Bound         float64 `json:"bound"`
	FirstContacts uint64  `json:"first_contacts"`
	FirstFailed   uint64  `json:"first_failed"`
}

// Entropy holds normalised Shannon entropies (0: all flows to one value,
// 1: every flow to a different one) over the window.
type Entropy struct {
	DstAddr       float64 `json:"dst_addr"`
	DstPort       float64 `json:"dst_port"`
	DistinctPorts uint64  `json:"distinct_ports"`
	TopPort       uint16  `json:"top_port"`
	TopPortShare  float64 `json:"top_port_share"`
	// The subscriber's own moving baseline at the time.
	BaselineDstAddr float64 `json:"baseline_dst_addr"`
	BaselineDstPort float64 `json:"baseline_dst_port"`
	BaselineSteps   uint64  `json:"baseline_steps"`
	// Thinning is 2^L when the records were thinned to 1/2^L of the
	// destinations; counts are scaled back by it.
	Thinning uint64 `json:"thinning,omitempty"`
}

// Marshal encodes a in its JSON wire form, times in RFC 3339 UTC.
func (a *Alert) Marshal() ([]byte, error) {
	out := *a
	for _, t := range []*time.Time{&out.WindowStart, &out.WindowEnd, &out.FirstSeen, &out.LastSeen} {
		*t = t.UTC()
	}
	if out.Evidence.SampleDsts == nil {
		out.Evidence.SampleDsts = []string{}
	}
	b, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("cannot encode alert %s: %w", a.ID, err)
	}
	return b, nil
}

// Unmarshal decodes the JSON wire form.
func Unmarshal(b []byte) (Alert, error) {
	var a Alert
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("cannot decode alert: %w", err)
	}
	return a, nil
}
