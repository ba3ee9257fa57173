package detector

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/wormsign/wormsign/network"
)

// Bucket is the width of the sub-buckets sliding windows are built from.
const Bucket = time.Minute

// Configuration of the detector.
type Configuration struct {
	// Group is the Kafka consumer group the detector instances share.
	Group string `yaml:"group"`
	// AllowedLateness: flows whose end time is older than the event-time
	// watermark minus this are counted and dropped.
	AllowedLateness time.Duration `yaml:"allowed_lateness"`
	// SourceIdleTimeout: a source (exporter and observation domain, per
	// collector publisher) none of whose flows the collector received for
	// this long stops holding the partition's watermark back.
	SourceIdleTimeout time.Duration `yaml:"source_idle_timeout"`
	// IdleAdvance: when no flow arrives for this long (wall clock), event
	// time advances with the wall clock so that incidents still resolve.
	IdleAdvance time.Duration `yaml:"idle_advance"`
	// CommitInterval bounds how often consumed offsets are committed.
	CommitInterval time.Duration `yaml:"commit_interval"`
	// RebuildLookback: when an instance is given a partition, it first
	// re-reads the flows the partition received in this much time (by
	// Kafka message time) without emitting, so that its windows and open
	// incidents are those of the previous owner. It must cover the longest
	// window plus the allowed lateness; 0 disables the rebuild.
	RebuildLookback time.Duration `yaml:"rebuild_lookback"`
	// IncidentLookback: after the rebuild, the alerts topic is read back
	// this far for incidents a previous owner left open, so that one
	// opened before rebuild_lookback keeps its id instead of opening
	// again. 0 disables it.
	IncidentLookback time.Duration `yaml:"incident_lookback"`
	// AllowList holds prefixes and addresses never alerted on: the ISP's
	// own mail relays, business customers with their own MTAs.
	AllowList []network.Prefix `yaml:"allow_list"`
	// SubscriberMap is a CSV file of "network,subscriber_id" lines whose
	// subscriber_id goes into alerts; re-read when it changes.
	SubscriberMap string `yaml:"subscriber_map"`
	// SubscriberMapReload is how often the map file is checked for changes.
	SubscriberMapReload time.Duration `yaml:"subscriber_map_reload"`
	// MaxSubscribers bounds the subscribers one detector instance keeps
	// state for, all its partitions together (0: no bound). Past it the
	// least recently active give way, never one with an open incident.
	MaxSubscribers int `yaml:"max_subscribers"`
	// Exchanges is the size, in entries, of each partition's table of
	// exchanges (flows received and sent on one port pair), which tells
	// the subscribers' answers (32 bytes each).
	Exchanges int `yaml:"exchanges"`

	SMTPFanout    SMTPFanoutConfiguration    `yaml:"smtp_fanout"`
	DstEntropy    DstEntropyConfiguration    `yaml:"dst_entropy"`
	Darknet       DarknetConfiguration       `yaml:"darknet"`
	RelayAbuse    RelayAbuseConfiguration    `yaml:"relay_abuse"`
	OutboundFlood OutboundFloodConfiguration `yaml:"outbound_flood"`
	// Groups override rule settings for subscribers in their networks
	// (longest prefix wins). A zero or omitted field inherits the global
	// value. YAML only: groups cannot be set from the environment.
	Groups []GroupConfiguration `yaml:"groups"`
}

// GroupConfiguration tunes the rules for one group of subscribers, such as
// business customers or a sampled access network.
type GroupConfiguration struct {
	Name     string           `yaml:"name"`
	Networks []network.Prefix `yaml:"networks"`
	// Disable lists rule kinds (smtp_fanout, dst_entropy, darknet,
	// relay_abuse, outbound_flood) that never alert for this group.
	Disable []string `yaml:"disable"`
	// The rules' settings for the group: keys it names replace the
	// global ones, the others are inherited.
	SMTPFanout    Override[SMTPFanoutConfiguration]    `yaml:"smtp_fanout"`
	DstEntropy    Override[DstEntropyConfiguration]    `yaml:"dst_entropy"`
	Darknet       Override[DarknetConfiguration]       `yaml:"darknet"`
	RelayAbuse    Override[RelayAbuseConfiguration]    `yaml:"relay_abuse"`
	OutboundFlood Override[OutboundFloodConfiguration] `yaml:"outbound_flood"`
}

// SMTPFanoutConfiguration tunes the smtp_fanout rule.
type SMTPFanoutConfiguration struct {
	Enabled bool `yaml:"enabled"`
	// Threshold distinct TCP/25 destinations within Window opens an alert.
	// 25 in 5 minutes follows Zeek's scan policy.
	Threshold int           `yaml:"threshold"`
	Window    time.Duration `yaml:"window"`
	// SlowThreshold within SlowWindow catches slow senders.
	SlowThreshold int           `yaml:"slow_threshold"`
	SlowWindow    time.Duration `yaml:"slow_window"`
	// UpdateInterval is the least time between two `update` events.
	UpdateInterval time.Duration `yaml:"update_interval"`
	// Cooldown of quiet (below threshold) before `resolved`.
	Cooldown time.Duration `yaml:"cooldown"`
	// MaxDestinations caps the exact destination set per subscriber;
	// beyond it distinct counts come from HyperLogLog sketches.
	MaxDestinations int `yaml:"max_destinations"`
	// SampleSize is how many destinations the evidence lists.
	SampleSize int `yaml:"sample_size"`
	// Sequential is the fast path: a sequential hypothesis test on
	// first-contact attempts that may open before Threshold.
	Sequential SequentialConfiguration `yaml:"sequential"`
}

// SequentialConfiguration tunes the Threshold Random Walk (Jung et al.,
// "Fast portscan detection using sequential hypothesis testing", 2004) on
// first-contact TCP/25 attempts: each attempt to a destination not seen in
// the slow window multiplies the odds of "infected" by
// SuccessInfected/SuccessBenign when it completes and by
// (1-SuccessInfected)/(1-SuccessBenign) when it fails.
type SequentialConfiguration struct {
	Enabled bool `yaml:"enabled"`
	// SuccessBenign is the chance a clean host's first contact succeeds.
	SuccessBenign float64 `yaml:"success_benign"`
	// SuccessInfected is the chance a zombie's first contact succeeds.
	SuccessInfected float64 `yaml:"success_infected"`
	// DetectionProbability and FalseAlarmProbability set the decision
	// thresholds: odds >= DetectionProbability/FalseAlarmProbability
	// decide "infected", odds <= (1-DetectionProbability)/(1-FalseAlarmProbability)
	// decide "benign" and restart the walk.
	DetectionProbability  float64 `yaml:"detection_probability"`
	FalseAlarmProbability float64 `yaml:"false_alarm_probability"`
	// MinFirstContacts: no decision before this many first contacts.
	MinFirstContacts int `yaml:"min_first_contacts"`
}

// DstEntropyConfiguration tunes the dst_entropy rule: normalised Shannon
// entropy of destination addresses and ports per subscriber over Window.
type DstEntropyConfiguration struct {
	Enabled bool          `yaml:"enabled"`
	Window  time.Duration `yaml:"window"`
	// MinFlows in the window before entropy means anything.
	MinFlows int `yaml:"min_flows"`
	// The worm pattern: at least WormMinDsts distinct destinations, address
	// entropy >= WormAddrEntropy and port entropy <= WormPortEntropy (many
	// addresses, one port).
	WormMinDsts     int     `yaml:"worm_min_dsts"`
	WormAddrEntropy float64 `yaml:"worm_addr_entropy"`
	WormPortEntropy float64 `yaml:"worm_port_entropy"`
	// Baseline: an exponentially weighted mean and variance of the
	// subscriber's own entropies, one step per evaluated minute with
	// BaselineAlpha as the weight of the newest. After BaselineWarmup steps
	// a departure of more than max(BaselineDeviation standard deviations,
	// BaselineMinDelta) in either entropy alerts. BaselineDeviation 0
	// turns the baseline check off.
	BaselineAlpha     float64 `yaml:"baseline_alpha"`
	BaselineWarmup    int     `yaml:"baseline_warmup"`
	BaselineDeviation float64 `yaml:"baseline_deviation"`
	BaselineMinDelta  float64 `yaml:"baseline_min_delta"`
	// MaxRecords caps the (destination, port) records kept per subscriber;
	// beyond it the records are thinned by a hash of the destination and
	// distinct counts scaled back (adaptive sampling).
	MaxRecords     int           `yaml:"max_records"`
	UpdateInterval time.Duration `yaml:"update_interval"`
	Cooldown       time.Duration `yaml:"cooldown"`
	SampleSize     int           `yaml:"sample_size"`
}

// DarknetConfiguration tunes the darknet rule: contacts to the ISP's
// unused address space and honeypots.
type DarknetConfiguration struct {
	// Networks are the dark prefixes and addresses; empty turns the rule
	// off.
	Networks []network.Prefix `yaml:"networks"`
	// MinDsts distinct dark addresses within Window open an incident.
	MinDsts        int           `yaml:"min_dsts"`
	Window         time.Duration `yaml:"window"`
	UpdateInterval time.Duration `yaml:"update_interval"`
	Cooldown       time.Duration `yaml:"cooldown"`
	SampleSize     int           `yaml:"sample_size"`
}

// RelayAbuseConfiguration tunes the relay_abuse rule: connections to the
// ISP's own mail submission servers per subscriber.
type RelayAbuseConfiguration struct {
	// Relays are the ISP's MSAs and smarthosts; empty turns the rule off.
	Relays []network.Prefix `yaml:"relays"`
	// Ports of the relays that count (TCP).
	Ports []uint16 `yaml:"ports"`
	// MaxConnections within Window open an incident; MaxBytes (0: no
	// ceiling) does too.
	MaxConnections int           `yaml:"max_connections"`
	MaxBytes       int64         `yaml:"max_bytes"`
	Window         time.Duration `yaml:"window"`
	// Baseline: an exponentially weighted mean and variance of the
	// subscriber's connections per minute (BaselineAlpha the weight of the
	// newest minute, minutes without connections included). After
	// BaselineWarmup minutes a window with at least
	// BaselineMinConnections connections and more than the baseline's
	// expectation plus BaselineDeviation standard deviations opens an
	// incident. BaselineDeviation 0 turns the baseline check off.
	BaselineAlpha          float64       `yaml:"baseline_alpha"`
	BaselineWarmup         int           `yaml:"baseline_warmup"`
	BaselineDeviation      float64       `yaml:"baseline_deviation"`
	BaselineMinConnections int           `yaml:"baseline_min_connections"`
	UpdateInterval         time.Duration `yaml:"update_interval"`
	Cooldown               time.Duration `yaml:"cooldown"`
}

// OutboundFloodConfiguration tunes the outbound_flood rule: packets,
// bytes and flows per subscriber toward one target.
type OutboundFloodConfiguration struct {
	Enabled bool `yaml:"enabled"`
	// Ceilings toward one target (address and protocol), as rates over
	// the last min_minutes (plus the minute in progress) of its traffic.
	MaxPPS            int   `yaml:"max_pps"`
	MaxBPS            int64 `yaml:"max_bps"`
	MaxFlowsPerMinute int   `yaml:"max_flows_per_minute"`
	// Ceilings per kind of traffic toward one target: a bot's share of a
	// rented attack is a few hundred packets a second, far below the
	// whole-host ceilings above. UDP and other protocols count only when
	// the target answers no more than MaxAnswerRatio of the packets
	// (packets back from it / packets to it): a call, a game or a QUIC
	// upload is answered, a flood target answers little or nothing.
	// MaxAnswerRatio also spares answered traffic from
	// max_flows_per_minute and the baseline.
	MaxICMPPPS     int     `yaml:"max_icmp_pps"`
	MaxUDPPPS      int     `yaml:"max_udp_pps"`
	MaxSYNPPS      int     `yaml:"max_syn_pps"`
	MaxOtherPPS    int     `yaml:"max_other_pps"`
	MaxAnswerRatio float64 `yaml:"max_answer_ratio"`
	// MinMinutes the traffic toward the target must have lasted.
	MinMinutes int `yaml:"min_minutes"`
	// EstablishedTCP also counts TCP flows in which the subscriber sent
	// an ACK (the target answered): bulk uploads and backups live there,
	// so it is off by default.
	EstablishedTCP bool `yaml:"established_tcp"`
	// Baseline: an exponentially weighted mean of the subscriber's
	// busiest target's packet rate per minute, per kind of traffic (ICMP,
	// UDP, TCP without ACK, TCP). After BaselineWarmup minutes, a rate
	// of at least BaselineMinPPS and BaselineFactor times the mean opens
	// an incident. BaselineFactor 0 turns the baseline check off.
	BaselineAlpha  float64 `yaml:"baseline_alpha"`
	BaselineWarmup int     `yaml:"baseline_warmup"`
	BaselineFactor float64 `yaml:"baseline_factor"`
	BaselineMinPPS int     `yaml:"baseline_min_pps"`
	// MaxTargets caps the targets followed per subscriber; past it the
	// one with the least traffic gives way.
	MaxTargets     int           `yaml:"max_targets"`
	UpdateInterval time.Duration `yaml:"update_interval"`
	Cooldown       time.Duration `yaml:"cooldown"`
}

// DefaultConfiguration returns the defaults documented in docs/detection.md.
func DefaultConfiguration() Configuration {
	return Configuration{
		Group:               "wormsign-detector",
		AllowedLateness:     2 * time.Minute,
		IdleAdvance:         10 * time.Second,
		SourceIdleTimeout:   time.Minute,
		CommitInterval:      time.Second,
		RebuildLookback:     65 * time.Minute,
		IncidentLookback:    24 * time.Hour,
		SubscriberMapReload: 10 * time.Second,
		MaxSubscribers:      4_000_000,
		Exchanges:           1 << 18,
		SMTPFanout: SMTPFanoutConfiguration{
			Enabled:         true,
			Threshold:       25,
			Window:          5 * time.Minute,
			SlowThreshold:   100,
			SlowWindow:      60 * time.Minute,
			UpdateInterval:  time.Minute,
			Cooldown:        10 * time.Minute,
			MaxDestinations: 4096,
			SampleSize:      10,
			Sequential: SequentialConfiguration{
				Enabled:         true,
				SuccessBenign:   0.8,
				SuccessInfected: 0.2,
				// Jung et al. use 0.99 and 0.01; a NOC wants fewer false
				// alarms than a campus IDS: 1e-6 needs about ten failed
				// first contacts in a row.
				DetectionProbability:  0.99,
				FalseAlarmProbability: 1e-6,
				MinFirstContacts:      10,
			},
		},
		DstEntropy: DstEntropyConfiguration{
			Enabled:           true,
			Window:            5 * time.Minute,
			MinFlows:          100,
			WormMinDsts:       50,
			WormAddrEntropy:   0.9,
			WormPortEntropy:   0.1,
			BaselineAlpha:     0.05,
			BaselineWarmup:    30,
			BaselineDeviation: 6,
			BaselineMinDelta:  0.35,
			MaxRecords:        4096,
			UpdateInterval:    time.Minute,
			Cooldown:          10 * time.Minute,
			SampleSize:        10,
		},
		Darknet: DarknetConfiguration{
			MinDsts:        3,
			Window:         10 * time.Minute,
			UpdateInterval: time.Minute,
			Cooldown:       10 * time.Minute,
			SampleSize:     10,
		},
		RelayAbuse: RelayAbuseConfiguration{
			Ports:                  []uint16{25, 465, 587},
			MaxConnections:         100,
			Window:                 10 * time.Minute,
			BaselineAlpha:          0.05,
			BaselineWarmup:         60,
			BaselineDeviation:      6,
			BaselineMinConnections: 30,
			UpdateInterval:         time.Minute,
			Cooldown:               10 * time.Minute,
		},
		OutboundFlood: OutboundFloodConfiguration{
			Enabled:           true,
			MaxPPS:            20_000,
			MaxBPS:            1_000_000_000,
			MaxFlowsPerMinute: 6_000,
			MaxICMPPPS:        50,
			MaxUDPPPS:         200,
			MaxSYNPPS:         100,
			MaxOtherPPS:       200,
			MaxAnswerRatio:    0.1,
			MinMinutes:        1,
			BaselineAlpha:     0.05,
			BaselineWarmup:    30,
			BaselineFactor:    10,
			BaselineMinPPS:    1_000,
			MaxTargets:        64,
			UpdateInterval:    time.Minute,
			Cooldown:          5 * time.Minute,
		},
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.Group == "":
		return fmt.Errorf("detector.group must not be empty")
	case c.AllowedLateness < 0:
		return fmt.Errorf("detector.allowed_lateness: %s, want >= 0", c.AllowedLateness)
	case c.SourceIdleTimeout <= 0:
		return fmt.Errorf("detector.source_idle_timeout: %s, want > 0", c.SourceIdleTimeout)
	case c.IdleAdvance <= 0:
		return fmt.Errorf("detector.idle_advance: %s, want > 0", c.IdleAdvance)
	case c.CommitInterval <= 0:
		return fmt.Errorf("detector.commit_interval: %s, want > 0", c.CommitInterval)
	case c.RebuildLookback < 0:
		return fmt.Errorf("detector.rebuild_lookback: %s, want >= 0", c.RebuildLookback)
	case c.IncidentLookback < 0:
		return fmt.Errorf("detector.incident_lookback: %s, want >= 0", c.IncidentLookback)
	case c.SubscriberMap != "" && c.SubscriberMapReload <= 0:
		return fmt.Errorf("detector.subscriber_map_reload: %s, want > 0", c.SubscriberMapReload)
	case c.MaxSubscribers < 0:
		return fmt.Errorf("detector.max_subscribers: %d, want >= 0", c.MaxSubscribers)
	case c.Exchanges < receivedWays || c.Exchanges > 1<<28:
		return fmt.Errorf("detector.exchanges: %d, want %d..%d", c.Exchanges, receivedWays, 1<<28)
	}
	if err := c.SMTPFanout.validate("detector.smtp_fanout"); err != nil {
		return err
	}
	if err := c.DstEntropy.validate("detector.dst_entropy"); err != nil {
		return err
	}
	if err := c.Darknet.validate("detector.darknet"); err != nil {
		return err
	}
	if err := c.RelayAbuse.validate("detector.relay_abuse"); err != nil {
		return err
	}
	if err := c.OutboundFlood.validate("detector.outbound_flood"); err != nil {
		return err
	}
	for i, g := range c.Groups {
		name := fmt.Sprintf("detector.groups[%d]", i)
		if g.Name == "" {
			return fmt.Errorf("%s.name must not be empty", name)
		}
		if len(g.Networks) == 0 {
			return fmt.Errorf("%s (%s).networks must not be empty", name, g.Name)
		}
		for _, k := range g.Disable {
			if kindOf(k) < 0 {
				return fmt.Errorf("%s (%s).disable: unknown rule %q", name, g.Name, k)
			}
		}
		r, err := c.rules(g)
		if err != nil {
			return fmt.Errorf("%s (%s).%w", name, g.Name, err)
		}
		if err := r.smtp.validate(name + ".smtp_fanout"); err != nil {
			return err
		}
		if err := r.entropy.validate(name + ".dst_entropy"); err != nil {
			return err
		}
		if err := r.darknet.validate(name + ".darknet"); err != nil {
			return err
		}
		if err := r.relay.validate(name + ".relay_abuse"); err != nil {
			return err
		}
		if err := r.flood.validate(name + ".outbound_flood"); err != nil {
			return err
		}
	}
	return nil
}

func wholeMinutes(d time.Duration) bool { return d >= Bucket && d%Bucket == 0 }

func (s SMTPFanoutConfiguration) validate(key string) error {
	q := s.Sequential
	switch {
	case s.Threshold < 1:
		return fmt.Errorf("%s.threshold: %d, want >= 1", key, s.Threshold)
	case !wholeMinutes(s.Window):
		return fmt.Errorf("%s.window: %s, want a whole number of minutes", key, s.Window)
	case s.SlowWindow < s.Window || !wholeMinutes(s.SlowWindow) || s.SlowWindow > 24*time.Hour:
		return fmt.Errorf("%s.slow_window: %s, want whole minutes between window and 24h", key, s.SlowWindow)
	case s.SlowThreshold < 1:
		return fmt.Errorf("%s.slow_threshold: %d, want >= 1", key, s.SlowThreshold)
	case s.UpdateInterval < 0:
		return fmt.Errorf("%s.update_interval: %s, want >= 0", key, s.UpdateInterval)
	case s.Cooldown < Bucket:
		return fmt.Errorf("%s.cooldown: %s, want >= 1m", key, s.Cooldown)
	case s.MaxDestinations < s.Threshold || s.MaxDestinations < s.SlowThreshold:
		return fmt.Errorf("%s.max_destinations: %d, want >= both thresholds", key, s.MaxDestinations)
	case s.SampleSize < 0:
		return fmt.Errorf("%s.sample_size: %d, want >= 0", key, s.SampleSize)
	case !(q.SuccessBenign > 0 && q.SuccessBenign < 1) || !(q.SuccessInfected > 0 && q.SuccessInfected < q.SuccessBenign):
		return fmt.Errorf("%s.sequential: success_infected %g and success_benign %g, want 0 < success_infected < success_benign < 1",
			key, q.SuccessInfected, q.SuccessBenign)
	case !(q.FalseAlarmProbability > 0 && q.FalseAlarmProbability < q.DetectionProbability && q.DetectionProbability < 1):
		return fmt.Errorf("%s.sequential: false_alarm_probability %g and detection_probability %g, want 0 < false_alarm < detection < 1",
			key, q.FalseAlarmProbability, q.DetectionProbability)
	case q.MinFirstContacts < 1:
		return fmt.Errorf("%s.sequential.min_first_contacts: %d, want >= 1", key, q.MinFirstContacts)
	}
	return nil
}

func (e DstEntropyConfiguration) validate(key string) error {
	switch {
	case !wholeMinutes(e.Window) || e.Window > 24*time.Hour:
		return fmt.Errorf("%s.window: %s, want whole minutes up to 24h", key, e.Window)
	case e.MinFlows < 2:
		return fmt.Errorf("%s.min_flows: %d, want >= 2", key, e.MinFlows)
	case e.WormMinDsts < 1:
		return fmt.Errorf("%s.worm_min_dsts: %d, want >= 1", key, e.WormMinDsts)
	case e.WormAddrEntropy <= 0 || e.WormAddrEntropy > 1 || e.WormPortEntropy < 0 || e.WormPortEntropy >= 1:
		return fmt.Errorf("%s: worm_addr_entropy %g and worm_port_entropy %g, want normalised entropies in (0,1] and [0,1)",
			key, e.WormAddrEntropy, e.WormPortEntropy)
	case e.BaselineAlpha <= 0 || e.BaselineAlpha > 1:
		return fmt.Errorf("%s.baseline_alpha: %g, want in (0,1]", key, e.BaselineAlpha)
	case e.BaselineWarmup < 1 || e.BaselineWarmup > math.MaxUint16:
		return fmt.Errorf("%s.baseline_warmup: %d, want 1..65535", key, e.BaselineWarmup)
	case e.BaselineDeviation < 0 || e.BaselineMinDelta < 0:
		return fmt.Errorf("%s: baseline_deviation and baseline_min_delta want >= 0", key)
	case e.MaxRecords < 64:
		return fmt.Errorf("%s.max_records: %d, want >= 64", key, e.MaxRecords)
	case e.UpdateInterval < 0:
		return fmt.Errorf("%s.update_interval: %s, want >= 0", key, e.UpdateInterval)
	case e.Cooldown < Bucket:
		return fmt.Errorf("%s.cooldown: %s, want >= 1m", key, e.Cooldown)
	case e.SampleSize < 0:
		return fmt.Errorf("%s.sample_size: %d, want >= 0", key, e.SampleSize)
	}
	return nil
}

func (d DarknetConfiguration) validate(key string) error {
	switch {
	case d.MinDsts < 1:
		return fmt.Errorf("%s.min_dsts: %d, want >= 1", key, d.MinDsts)
	case !wholeMinutes(d.Window) || d.Window > 24*time.Hour:
		return fmt.Errorf("%s.window: %s, want whole minutes up to 24h", key, d.Window)
	case d.UpdateInterval < 0:
		return fmt.Errorf("%s.update_interval: %s, want >= 0", key, d.UpdateInterval)
	case d.Cooldown < Bucket:
		return fmt.Errorf("%s.cooldown: %s, want >= 1m", key, d.Cooldown)
	case d.SampleSize < 0:
		return fmt.Errorf("%s.sample_size: %d, want >= 0", key, d.SampleSize)
	}
	return nil
}

func (r RelayAbuseConfiguration) validate(key string) error {
	switch {
	case len(r.Relays) > 0 && len(r.Ports) == 0:
		return fmt.Errorf("%s.ports: empty, want the relays' ports", key)
	case r.MaxConnections < 1:
		return fmt.Errorf("%s.max_connections: %d, want >= 1", key, r.MaxConnections)
	case r.MaxBytes < 0:
		return fmt.Errorf("%s.max_bytes: %d, want >= 0", key, r.MaxBytes)
	case !wholeMinutes(r.Window) || r.Window > 24*time.Hour:
		return fmt.Errorf("%s.window: %s, want whole minutes up to 24h", key, r.Window)
	case r.BaselineAlpha <= 0 || r.BaselineAlpha > 1:
		return fmt.Errorf("%s.baseline_alpha: %g, want in (0,1]", key, r.BaselineAlpha)
	case r.BaselineWarmup < 1 || r.BaselineWarmup > math.MaxUint16:
		return fmt.Errorf("%s.baseline_warmup: %d, want 1..65535", key, r.BaselineWarmup)
	case r.BaselineDeviation < 0 || r.BaselineMinConnections < 0:
		return fmt.Errorf("%s: baseline_deviation and baseline_min_connections want >= 0", key)
	case r.UpdateInterval < 0:
		return fmt.Errorf("%s.update_interval: %s, want >= 0", key, r.UpdateInterval)
	case r.Cooldown < Bucket:
		return fmt.Errorf("%s.cooldown: %s, want >= 1m", key, r.Cooldown)
	}
	return nil
}

func (o OutboundFloodConfiguration) validate(key string) error {
	switch {
	case o.MaxPPS < 1 || o.MaxBPS < 1 || o.MaxFlowsPerMinute < 1:
		return fmt.Errorf("%s: max_pps %d, max_bps %d, max_flows_per_minute %d, want >= 1", key, o.MaxPPS, o.MaxBPS, o.MaxFlowsPerMinute)
	case o.MaxICMPPPS < 1 || o.MaxUDPPPS < 1 || o.MaxSYNPPS < 1 || o.MaxOtherPPS < 1:
		return fmt.Errorf("%s: max_icmp_pps %d, max_udp_pps %d, max_syn_pps %d, max_other_pps %d, want >= 1",
			key, o.MaxICMPPPS, o.MaxUDPPPS, o.MaxSYNPPS, o.MaxOtherPPS)
	case o.MaxAnswerRatio < 0 || o.MaxAnswerRatio > 1:
		return fmt.Errorf("%s.max_answer_ratio: %g, want 0..1", key, o.MaxAnswerRatio)
	case o.MinMinutes < 1 || o.MinMinutes > 60:
		return fmt.Errorf("%s.min_minutes: %d, want 1..60", key, o.MinMinutes)
	case o.BaselineAlpha <= 0 || o.BaselineAlpha > 1:
		return fmt.Errorf("%s.baseline_alpha: %g, want in (0,1]", key, o.BaselineAlpha)
	case o.BaselineWarmup < 1 || o.BaselineWarmup > math.MaxUint16:
		return fmt.Errorf("%s.baseline_warmup: %d, want 1..65535", key, o.BaselineWarmup)
	case o.BaselineFactor < 0 || o.BaselineMinPPS < 1:
		return fmt.Errorf("%s: baseline_factor %g and baseline_min_pps %d, want >= 0 and >= 1", key, o.BaselineFactor, o.BaselineMinPPS)
	case o.MaxTargets < 1 || o.MaxTargets > 4096:
		return fmt.Errorf("%s.max_targets: %d, want 1..4096", key, o.MaxTargets)
	case o.UpdateInterval < 0:
		return fmt.Errorf("%s.update_interval: %s, want >= 0", key, o.UpdateInterval)
	case o.Cooldown < Bucket:
		return fmt.Errorf("%s.cooldown: %s, want >= 1m", key, o.Cooldown)
	}
	return nil
}

// ruleSet is the effective rule configuration of one subscriber group.
type ruleSet struct {
	name     string
	smtp     SMTPFanoutConfiguration
	entropy  DstEntropyConfiguration
	darknet  DarknetConfiguration
	relay    RelayAbuseConfiguration
	flood    OutboundFloodConfiguration
	on       [kinds]bool // the rule runs for the group
	smtpMins int         // short window, minutes
	slowMins int
	entMins  int
	dark     *network.Set // darknet.networks
	relays   *network.Set // relay_abuse.relays
	// floodGate is the packets per minute of flood-like traffic below
	// which outbound_flood keeps no state for a subscriber.
	floodGate uint32
}

// rules merges a group's overrides onto the global rule settings.
func (c Configuration) rules(g GroupConfiguration) (ruleSet, error) {
	gs, err := g.SMTPFanout.apply(c.SMTPFanout)
	if err != nil {
		return ruleSet{}, fmt.Errorf("smtp_fanout: %w", err)
	}
	ge, err := g.DstEntropy.apply(c.DstEntropy)
	if err != nil {
		return ruleSet{}, fmt.Errorf("dst_entropy: %w", err)
	}
	gd, err := g.Darknet.apply(c.Darknet)
	if err != nil {
		return ruleSet{}, fmt.Errorf("darknet: %w", err)
	}
	gr, err := g.RelayAbuse.apply(c.RelayAbuse)
	if err != nil {
		return ruleSet{}, fmt.Errorf("relay_abuse: %w", err)
	}
	gf, err := g.OutboundFlood.apply(c.OutboundFlood)
	if err != nil {
		return ruleSet{}, fmt.Errorf("outbound_flood: %w", err)
	}
	r := ruleSet{
		name:     g.Name,
		smtp:     gs,
		entropy:  ge,
		darknet:  gd,
		relay:    gr,
		flood:    gf,
		smtpMins: int(gs.Window / Bucket),
		slowMins: int(gs.SlowWindow / Bucket),
		entMins:  int(ge.Window / Bucket),
		dark:     network.NewSet(gd.Networks...),
		relays:   network.NewSet(gr.Relays...),
	}
	r.floodGate = floodGateOf(gf)
	for k, ru := range ruleTable {
		r.on[k] = ru.enabled(&r) && !slices.Contains(g.Disable, kindNames[k])
	}
	return r, nil
}
