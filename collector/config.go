package collector

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// Configuration of the collector.
type Configuration struct {
	// NetFlowListen are UDP addresses for NetFlow v5/v9 and IPFIX.
	NetFlowListen []string `yaml:"netflow_listen"`
	// SFlowListen are UDP addresses for sFlow v5.
	SFlowListen []string `yaml:"sflow_listen"`
	// SocketsPerListener opens that many sockets on each listen address
	// with SO_REUSEPORT, each with its own reader, so that the kernel
	// spreads exporters over several cores.
	SocketsPerListener int `yaml:"sockets_per_listener"`
	// Exporters, when set, is the allow list of exporter addresses: flows
	// from anyone else are dropped and counted, so that a spoofed datagram
	// cannot frame a subscriber.
	Exporters []network.Prefix `yaml:"exporters"`
	// ReceiveBuffer is the socket receive buffer (SO_RCVBUF) in bytes.
	ReceiveBuffer int `yaml:"receive_buffer"`
	// QueueSize bounds the flows waiting for Kafka; beyond it datagrams
	// are dropped and counted rather than growing memory.
	QueueSize int `yaml:"queue_size"`
	// BatchFlows and Linger bound how many flows, and how long, the
	// publisher gathers before one write to the bus.
	BatchFlows int           `yaml:"batch_flows"`
	Linger     time.Duration `yaml:"linger"`
	// Publishers is how many writes to the bus may be in flight at once.
	// Subscribers are spread over them by address, so one subscriber's
	// flows are still written in order. A Kafka write waits for the
	// brokers' acknowledgement: throughput comes from several in flight
	// (measured on 2 cores: 1 → 120k, 4 → 330k, 8 → 730k flows/s with
	// batches of 16384 flows).
	Publishers int `yaml:"publishers"`
	// CorrectClockSkew shifts flow times by the difference between the
	// collector's clock and the exporter's export-header clock, when that
	// difference exceeds one second (the header's resolution).
	CorrectClockSkew bool `yaml:"correct_clock_skew"`

	// MaxTemplatesPerExporter caps the NetFlow v9/IPFIX templates kept for
	// one exporter (address and port, all observation domains together);
	// templates beyond it are refused and counted.
	MaxTemplatesPerExporter int `yaml:"max_templates_per_exporter"`
	// MaxExporters caps how many exporters (address and port) the decoder
	// keeps state for; datagrams from more are dropped and counted.
	MaxExporters int `yaml:"max_exporters"`
	// TemplateTTL expires a template (and learned sampling rates) that the
	// exporter has not sent again for that long. Exporters on UDP resend
	// their templates periodically (minutes), so this only drops the
	// state of exporters that went away or changed.
	TemplateTTL time.Duration `yaml:"template_ttl"`
	// TemplateFile, when set, is where templates and learned sampling
	// rates are saved (every TemplateSaveInterval and at stop) and loaded
	// from at start, so that after a restart data decodes at once instead
	// of waiting for the next template refresh.
	TemplateFile         string        `yaml:"template_file"`
	TemplateSaveInterval time.Duration `yaml:"template_save_interval"`

	// DefaultSamplingRate gives the sampling rate of exporters (by
	// address prefix, longest match wins) that do not say it themselves:
	// "192.0.2.0/24=1000". OverrideSamplingRate replaces whatever the
	// exporter says.
	DefaultSamplingRate  []SamplingRate `yaml:"default_sampling_rate"`
	OverrideSamplingRate []SamplingRate `yaml:"override_sampling_rate"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{
		NetFlowListen:           []string{":2055", ":4739"},
		SFlowListen:             []string{":6343"},
		SocketsPerListener:      1,
		ReceiveBuffer:           8 << 20,
		QueueSize:               1 << 16,
		BatchFlows:              16384,
		Publishers:              8,
		Linger:                  50 * time.Millisecond,
		CorrectClockSkew:        true,
		MaxTemplatesPerExporter: 1024,
		MaxExporters:            10000,
		TemplateTTL:             2 * time.Hour,
		TemplateSaveInterval:    time.Minute,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	for _, l := range append(append([]string{}, c.NetFlowListen...), c.SFlowListen...) {
		if _, err := net.ResolveUDPAddr("udp", l); err != nil {
			return fmt.Errorf("collector listen address %q: %w", l, err)
		}
	}
	switch {
	case c.QueueSize < 1:
		return fmt.Errorf("collector.queue_size: %d, want >= 1", c.QueueSize)
	case c.BatchFlows < 1:
		return fmt.Errorf("collector.batch_flows: %d, want >= 1", c.BatchFlows)
	case c.Linger <= 0:
		return fmt.Errorf("collector.linger: %s, want > 0", c.Linger)
	case c.ReceiveBuffer < 0:
		return fmt.Errorf("collector.receive_buffer: %d, want >= 0", c.ReceiveBuffer)
	case c.Publishers < 1:
		return fmt.Errorf("collector.publishers: %d, want >= 1", c.Publishers)
	case c.SocketsPerListener < 1:
		return fmt.Errorf("collector.sockets_per_listener: %d, want >= 1", c.SocketsPerListener)
	case c.MaxTemplatesPerExporter < 1:
		return fmt.Errorf("collector.max_templates_per_exporter: %d, want >= 1", c.MaxTemplatesPerExporter)
	case c.MaxExporters < 1:
		return fmt.Errorf("collector.max_exporters: %d, want >= 1", c.MaxExporters)
	case c.TemplateTTL <= 0:
		return fmt.Errorf("collector.template_ttl: %s, want > 0", c.TemplateTTL)
	case c.TemplateFile != "" && c.TemplateSaveInterval <= 0:
		return fmt.Errorf("collector.template_save_interval: %s, want > 0", c.TemplateSaveInterval)
	}
	return nil
}

// SamplingRate is a sampling rate for the exporters inside a prefix,
// written "PREFIX=RATE" (a bare address means just that exporter).
type SamplingRate struct {
	Prefix netip.Prefix
	Rate   uint32
}

// UnmarshalText parses "192.0.2.0/24=1000" or "192.0.2.1=1000".
func (s *SamplingRate) UnmarshalText(text []byte) error {
	p, r, ok := strings.Cut(strings.TrimSpace(string(text)), "=")
	if !ok {
		return fmt.Errorf("sampling rate %q: want PREFIX=RATE", text)
	}
	prefix, err := netip.ParsePrefix(p)
	if err != nil {
		a, aerr := netip.ParseAddr(p)
		if aerr != nil {
			return fmt.Errorf("sampling rate %q: %w", text, err)
		}
		prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
	}
	rate, err := strconv.ParseUint(r, 10, 32)
	if err != nil || rate == 0 {
		return fmt.Errorf("sampling rate %q: rate must be a whole number >= 1", text)
	}
	s.Prefix, s.Rate = prefix.Masked(), uint32(rate)
	return nil
}

// MarshalText is the inverse of UnmarshalText.
func (s SamplingRate) MarshalText() ([]byte, error) {
	return []byte(s.Prefix.String() + "=" + strconv.FormatUint(uint64(s.Rate), 10)), nil
}

// lookupRate returns the rate of the longest prefix holding a, or 0.
func lookupRate(rates []SamplingRate, a netip.Addr) uint32 {
	best, bits := uint32(0), -1
	for _, r := range rates {
		if r.Prefix.Bits() > bits && r.Prefix.Contains(a) {
			best, bits = r.Rate, r.Prefix.Bits()
		}
	}
	return best
}
