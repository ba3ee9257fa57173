package decode

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Datagram is one export datagram read from a capture.
type Datagram struct {
	From    netip.AddrPort
	DstPort uint16
	Payload []byte
	TimeMs  int64
}

// Family guesses the protocol family of an export datagram: sFlow v5
// starts with the 32-bit version 5, NetFlow and IPFIX with a 16-bit one.
func Family(payload []byte) string {
	if len(payload) >= 4 && binary.BigEndian.Uint32(payload) == 5 {
		return FamilySFlow
	}
	return FamilyNetFlow
}

type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// ReadCapture calls fn for each UDP datagram of a pcap or pcapng file, in
// file order. Non-UDP packets and fragments are skipped.
func ReadCapture(path string, fn func(Datagram) error) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot open capture: %w", err)
	}
	defer file.Close()
	r := bufio.NewReader(file)
	magic, err := r.Peek(4)
	if err != nil {
		return fmt.Errorf("cannot read capture %s: %w", path, err)
	}
	var src packetSource
	var link layers.LinkType
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return fmt.Errorf("cannot read pcapng %s: %w", path, err)
		}
		src, link = ng, ng.LinkType()
	} else {
		pr, err := pcapgo.NewReader(r)
		if err != nil {
			return fmt.Errorf("cannot read pcap %s: %w", path, err)
		}
		src, link = pr, pr.LinkType()
	}
	for {
		data, ci, err := src.ReadPacketData()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cannot read packet of %s: %w", path, err)
		}
		d, ok := datagramOf(data, link)
		if !ok {
			continue
		}
		d.TimeMs = ci.Timestamp.UnixMilli()
		if err := fn(d); err != nil {
			return err
		}
	}
}

func datagramOf(data []byte, link layers.LinkType) (Datagram, bool) {
	pkt := gopacket.NewPacket(data, link, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		return Datagram{}, false
	}
	var from netip.Addr
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		from, _ = netip.AddrFromSlice(ip.SrcIP.To4())
	case *layers.IPv6:
		from, _ = netip.AddrFromSlice(ip.SrcIP)
	default:
		return Datagram{}, false
	}
	return Datagram{
		From:    netip.AddrPortFrom(from, uint16(udp.SrcPort)),
		DstPort: uint16(udp.DstPort),
		Payload: udp.Payload,
	}, true
}
