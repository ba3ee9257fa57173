package collector

import (
	"fmt"
	"net"
	"time"

	"github.com/wormsign/wormsign/collector/decode"
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
	// QueueSize bounds the decoded datagrams waiting for the publishers;
	// beyond it datagrams are dropped and counted rather than growing
	// memory. The flows they hold are bounded separately, as a datagram
	// of tiny records can carry thousands.
	QueueSize int `yaml:"queue_size"`
	// BatchFlows and Linger bound how many flows, and how long, the
	// publisher gathers before one write to the bus.
	BatchFlows int           `yaml:"batch_flows"`
	Linger     time.Duration `yaml:"linger"`
	// Publishers is how many writes to the bus may be in flight at once.
	// Subscribers are spread over them by address, so one subscriber's
	// flows are still written in order. A Kafka write waits for the
	// brokers' acknowledgement: throughput comes from several in flight.
	Publishers int `yaml:"publishers"`

	// Decode configures the decoder: clock skew correction, template and
	// exporter caps, template TTL and sampling rates. Its keys sit in the
	// collector section itself (collector.max_exporters, ...).
	Decode decode.Configuration `yaml:",inline"`

	// TemplateFile, when set, is where templates and learned sampling
	// rates are saved (every TemplateSaveInterval and at stop) and loaded
	// from at start, so that after a restart data decodes at once instead
	// of waiting for the next template refresh.
	TemplateFile         string        `yaml:"template_file"`
	TemplateSaveInterval time.Duration `yaml:"template_save_interval"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{
		NetFlowListen:        []string{":2055", ":4739"},
		SFlowListen:          []string{":6343"},
		SocketsPerListener:   1,
		ReceiveBuffer:        8 << 20,
		QueueSize:            1 << 16,
		BatchFlows:           16384,
		Publishers:           8,
		Linger:               50 * time.Millisecond,
		Decode:               decode.DefaultConfiguration(),
		TemplateSaveInterval: time.Minute,
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
	}
	if err := c.Decode.Validate(); err != nil {
		return err
	}
	if c.TemplateFile != "" && c.TemplateSaveInterval <= 0 {
		return fmt.Errorf("collector.template_save_interval: %s, want > 0", c.TemplateSaveInterval)
	}
	return nil
}
