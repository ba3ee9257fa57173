package collector

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Configuration of the collector.
type Configuration struct {
	// NetFlowListen are UDP addresses for NetFlow v5/v9 and IPFIX.
	NetFlowListen []string `yaml:"netflow_listen"`
	// SFlowListen are UDP addresses for sFlow v5.
	SFlowListen []string `yaml:"sflow_listen"`
	// Exporters, when set, is the allow list of exporter addresses: flows
	// from anyone else are dropped and counted, so that a spoofed datagram
	// cannot frame a subscriber.
	Exporters []netip.Prefix `yaml:"exporters"`
	// ReceiveBuffer is the socket receive buffer (SO_RCVBUF) in bytes.
	ReceiveBuffer int `yaml:"receive_buffer"`
	// QueueSize bounds the flows waiting for Kafka; beyond it datagrams
	// are dropped and counted rather than growing memory.
	QueueSize int `yaml:"queue_size"`
	// BatchFlows and Linger bound how many flows, and how long, the
	// publisher gathers before one write to the bus.
	BatchFlows int           `yaml:"batch_flows"`
	Linger     time.Duration `yaml:"linger"`
	// CorrectClockSkew shifts flow times by the difference between the
	// collector's clock and the exporter's export-header clock, when that
	// difference exceeds one second (the header's resolution).
	CorrectClockSkew bool `yaml:"correct_clock_skew"`
}

// DefaultConfiguration returns the documented defaults.
func DefaultConfiguration() Configuration {
	return Configuration{
		NetFlowListen:    []string{":2055", ":4739"},
		SFlowListen:      []string{":6343"},
		ReceiveBuffer:    8 << 20,
		QueueSize:        1 << 16,
		BatchFlows:       4096,
		Linger:           50 * time.Millisecond,
		CorrectClockSkew: true,
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
	}
	return nil
}
