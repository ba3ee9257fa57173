package decode

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// Configuration of the decoder. Its keys are part of the collector's
// section of the configuration file (collector.max_exporters, ...), which
// embeds it.
type Configuration struct {
	// CorrectClockSkew shifts flow times by the difference between the
	// collector's clock and the exporter's export-header clock, when that
	// difference exceeds one second (the header's resolution).
	CorrectClockSkew bool `yaml:"correct_clock_skew"`
	// MaxTemplatesPerExporter caps the NetFlow v9/IPFIX templates kept for
	// one exporter (address and port, all observation domains together);
	// templates beyond it are refused and counted.
	MaxTemplatesPerExporter int `yaml:"max_templates_per_exporter"`
	// DecoderBudgetBytes is the one budget of all decoder state: every
	// exporter's templates and their fields, learned sampling rates,
	// sequence numbers and system init times, estimated in bytes of Go
	// heap. State beyond it is refused and counted.
	DecoderBudgetBytes int64 `yaml:"decoder_budget_bytes"`
	// MaxStatePerAddress caps the decoder state of one exporter address,
	// all its ports and observation domains together, so that one host
	// cannot take the whole budget.
	MaxStatePerAddress int64 `yaml:"max_state_per_address"`
	// MaxExporters caps how many exporters (address and port) the decoder
	// keeps state for; datagrams from more are dropped and counted.
	MaxExporters int `yaml:"max_exporters"`
	// TemplateTTL expires a template (and learned sampling rates) that the
	// exporter has not sent again for that long. Exporters on UDP resend
	// their templates periodically (minutes), so this only drops the
	// state of exporters that went away or changed.
	TemplateTTL time.Duration `yaml:"template_ttl"`
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
		CorrectClockSkew:        true,
		MaxTemplatesPerExporter: 1024,
		MaxExporters:            10000,
		// 256 MiB: 10,000 exporters of ~25 templates of ~30 fields need
		// ~100 MB; the rest of a 4 GB collector holds the queue
		// (~250 MB of flows at queue_size), the publishers, the Go
		// collector's headroom (the heap may reach twice what is live)
		// and the page cache.
		DecoderBudgetBytes: 256 << 20,
		// 1 MiB: a router with several exporting processes and line
		// cards (domains) uses ~100 KB; 256 hosts are needed to spend
		// the budget.
		MaxStatePerAddress: 1 << 20,
		TemplateTTL:        2 * time.Hour,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	switch {
	case c.MaxTemplatesPerExporter < 1:
		return fmt.Errorf("collector.max_templates_per_exporter: %d, want >= 1", c.MaxTemplatesPerExporter)
	case c.MaxExporters < 1:
		return fmt.Errorf("collector.max_exporters: %d, want >= 1", c.MaxExporters)
	case c.MaxStatePerAddress < 16384:
		return fmt.Errorf("collector.max_state_per_address: %d, want >= 16384", c.MaxStatePerAddress)
	case c.DecoderBudgetBytes < c.MaxStatePerAddress:
		return fmt.Errorf("collector.decoder_budget_bytes: %d, want >= collector.max_state_per_address (%d)", c.DecoderBudgetBytes, c.MaxStatePerAddress)
	case c.TemplateTTL <= 0:
		return fmt.Errorf("collector.template_ttl: %s, want > 0", c.TemplateTTL)
	}
	return nil
}

// SamplingRate is a sampling rate for the exporters inside a prefix,
// written "PREFIX=RATE" (a bare address means just that exporter).
type SamplingRate struct {
	Prefix network.Prefix
	Rate   uint32
}

// UnmarshalText parses "192.0.2.0/24=1000" or "192.0.2.1=1000".
func (s *SamplingRate) UnmarshalText(text []byte) error {
	p, r, ok := strings.Cut(strings.TrimSpace(string(text)), "=")
	if !ok {
		return fmt.Errorf("sampling rate %q: want PREFIX=RATE", text)
	}
	prefix, err := network.ParsePrefix(p)
	if err != nil {
		return fmt.Errorf("sampling rate %q: %w", text, err)
	}
	rate, err := strconv.ParseUint(r, 10, 32)
	if err != nil || rate == 0 {
		return fmt.Errorf("sampling rate %q: rate must be a whole number >= 1", text)
	}
	s.Prefix, s.Rate = prefix, uint32(rate)
	return nil
}

// MarshalText is the inverse of UnmarshalText.
func (s SamplingRate) MarshalText() ([]byte, error) {
	return []byte(s.Prefix.String() + "=" + strconv.FormatUint(uint64(s.Rate), 10)), nil
}

// rateTable is sampling rates by exporter prefix, longest prefix wins;
// nil when none is configured.
func rateTable(rates []SamplingRate) *network.Table[uint32] {
	if len(rates) == 0 {
		return nil
	}
	t := network.NewTable[uint32]()
	for _, r := range rates {
		t.Insert(r.Prefix.Prefix, r.Rate)
	}
	return t
}
