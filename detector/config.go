package detector

import (
	"fmt"
	"net/netip"
	"time"
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
	// IdleAdvance: when no flow arrives for this long (wall clock), event
	// time advances with the wall clock so that incidents still resolve.
	IdleAdvance time.Duration `yaml:"idle_advance"`
	// AllowList holds prefixes never alerted on: the ISP's own mail relays,
	// business customers with their own MTAs.
	AllowList []netip.Prefix `yaml:"allow_list"`
	// CommitInterval bounds how often consumed offsets are committed.
	CommitInterval time.Duration `yaml:"commit_interval"`

	SMTPFanout SMTPFanoutConfiguration `yaml:"smtp_fanout"`
}

// SMTPFanoutConfiguration tunes the smtp_fanout rule.
type SMTPFanoutConfiguration struct {
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
	// MaxDestinations caps the exact destination set per subscriber.
	MaxDestinations int `yaml:"max_destinations"`
	// SampleSize is how many destinations the evidence lists.
	SampleSize int `yaml:"sample_size"`
}

// DefaultConfiguration returns the documented defaults (design.md, Detection).
func DefaultConfiguration() Configuration {
	return Configuration{
		Group:           "wormsign-detector",
		AllowedLateness: 2 * time.Minute,
		IdleAdvance:     10 * time.Second,
		CommitInterval:  time.Second,
		SMTPFanout: SMTPFanoutConfiguration{
			Threshold:       25,
			Window:          5 * time.Minute,
			SlowThreshold:   100,
			SlowWindow:      60 * time.Minute,
			UpdateInterval:  time.Minute,
			Cooldown:        10 * time.Minute,
			MaxDestinations: 4096,
			SampleSize:      10,
		},
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	s := c.SMTPFanout
	switch {
	case c.Group == "":
		return fmt.Errorf("detector.group must not be empty")
	case c.AllowedLateness < 0:
		return fmt.Errorf("detector.allowed_lateness: %s, want >= 0", c.AllowedLateness)
	case c.IdleAdvance <= 0:
		return fmt.Errorf("detector.idle_advance: %s, want > 0", c.IdleAdvance)
	case c.CommitInterval <= 0:
		return fmt.Errorf("detector.commit_interval: %s, want > 0", c.CommitInterval)
	case s.Threshold < 1:
		return fmt.Errorf("detector.smtp_fanout.threshold: %d, want >= 1", s.Threshold)
	case s.Window < Bucket || s.Window%Bucket != 0:
		return fmt.Errorf("detector.smtp_fanout.window: %s, want a whole number of minutes", s.Window)
	case s.SlowWindow < s.Window || s.SlowWindow%Bucket != 0 || s.SlowWindow > 24*time.Hour:
		return fmt.Errorf("detector.smtp_fanout.slow_window: %s, want whole minutes between window and 24h", s.SlowWindow)
	case s.SlowThreshold < 1:
		return fmt.Errorf("detector.smtp_fanout.slow_threshold: %d, want >= 1", s.SlowThreshold)
	case s.UpdateInterval < 0:
		return fmt.Errorf("detector.smtp_fanout.update_interval: %s, want >= 0", s.UpdateInterval)
	case s.Cooldown < Bucket:
		return fmt.Errorf("detector.smtp_fanout.cooldown: %s, want >= 1m", s.Cooldown)
	case s.MaxDestinations < s.Threshold || s.MaxDestinations < s.SlowThreshold:
		return fmt.Errorf("detector.smtp_fanout.max_destinations: %d, want >= both thresholds", s.MaxDestinations)
	case s.SampleSize < 0:
		return fmt.Errorf("detector.smtp_fanout.sample_size: %d, want >= 0", s.SampleSize)
	}
	return nil
}
