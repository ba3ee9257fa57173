package evaluation

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// IPFIX (RFC 7011) as a router would export the records of a flow log: one
// fixed template of IPv4 fields, records in the order their flows ended.

const (
	ipfixVersion     = 10
	ipfixHeaderLen   = 16
	setHeaderLen     = 4
	templateSetID    = 2
	ipv4TemplateID   = 256
	ipv4RecordLen    = 4 + 4 + 2 + 2 + 1 + 2 + 8 + 8 + 8 + 8
	ipv4FieldCount   = 10
	ipv4TemplateSize = setHeaderLen + 4 + 4*ipv4FieldCount
)

// ipv4Fields is the template: information element id and length, in the
// order a data record carries them.
var ipv4Fields = [ipv4FieldCount][2]uint16{
	{8, 4},   // sourceIPv4Address
	{12, 4},  // destinationIPv4Address
	{7, 2},   // sourceTransportPort
	{11, 2},  // destinationTransportPort
	{4, 1},   // protocolIdentifier
	{6, 2},   // tcpControlBits
	{1, 8},   // octetDeltaCount
	{2, 8},   // packetDeltaCount
	{152, 8}, // flowStartMilliseconds
	{153, 8}, // flowEndMilliseconds
}

// IPFIXOptions shape the messages of an exporter. Zero values take the
// defaults.
type IPFIXOptions struct {
	// MaxMessageBytes bounds an IPFIX message (default 1400: one
	// Ethernet frame with room for the IPv4 and UDP headers).
	MaxMessageBytes int
	// TemplateEvery resends the template set in every Nth message
	// (default 100); the first message always carries it.
	TemplateEvery int
	// MaxHold sends a message once the flow that ends next ended more
	// than MaxHold after the first flow the message holds (default 1s),
	// as a router's export timer would.
	MaxHold time.Duration
	// Delay holds every message back this long before it leaves, as a
	// busy exporter or a queue on the way would (default none). The
	// export time in its header is when it leaves.
	Delay time.Duration
}

func (o IPFIXOptions) withDefaults() IPFIXOptions {
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 1400
	}
	if o.TemplateEvery == 0 {
		o.TemplateEvery = 100
	}
	if o.MaxHold == 0 {
		o.MaxHold = time.Second
	}
	return o
}

// Datagram is one IPFIX message on its way from an exporter to a
// collector.
type Datagram struct {
	// TimeMs is when the exporter sent it: the pcap timestamp. The
	// message's export time is its whole seconds.
	TimeMs   int64
	Src, Dst netip.AddrPort
	Payload  []byte
	Records  int
}

// IPFIXExporter turns records into IPFIX messages of one observation
// domain, numbering them as RFC 7011 says: the sequence number of a
// message counts the data records sent before it.
type IPFIXExporter struct {
	Src, Dst netip.AddrPort
	Domain   uint32
	opts     IPFIXOptions
	seq      uint32
	messages int
	// SkippedIPv6 counts records left out for their IPv6 addresses.
	SkippedIPv6 int
}

// NewIPFIXExporter returns an exporter sending from src to dst.
func NewIPFIXExporter(src, dst netip.AddrPort, domain uint32, opts IPFIXOptions) *IPFIXExporter {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		panic("IPFIX exporter and collector must be IPv4 addresses")
	}
	return &IPFIXExporter{Src: src, Dst: dst, Domain: domain, opts: opts.withDefaults()}
}

// Export packs recs, which must be in export order (ExportOrder), into
// messages. A message leaves when full or when the next flow ends more
// than MaxHold after its first one; it is sent at the end time of its last
// flow, plus Delay. Records with IPv6 addresses are skipped and counted.
func (x *IPFIXExporter) Export(recs []Record) []Datagram {
	var out []Datagram
	var pending []*Record
	flush := func() {
		if len(pending) > 0 {
			out = append(out, x.message(pending))
			pending = pending[:0]
		}
	}
	for i := range recs {
		r := &recs[i]
		if !r.Flow.SrcAddr.Is4() || !r.Flow.DstAddr.Is4() {
			x.SkippedIPv6++
			continue
		}
		if len(pending) > 0 && r.Flow.EndMs-pending[0].Flow.EndMs > x.opts.MaxHold.Milliseconds() {
			flush()
		}
		pending = append(pending, r)
		if len(pending) == x.capacity() {
			flush()
		}
	}
	flush()
	return out
}

// capacity is the number of records the next message holds.
func (x *IPFIXExporter) capacity() int {
	room := x.opts.MaxMessageBytes - ipfixHeaderLen - setHeaderLen
	if x.messages%x.opts.TemplateEvery == 0 {
		room -= ipv4TemplateSize
	}
	return room / ipv4RecordLen
}

func (x *IPFIXExporter) message(recs []*Record) Datagram {
	sendMs := recs[len(recs)-1].Flow.EndMs + x.opts.Delay.Milliseconds()
	n := ipfixHeaderLen + setHeaderLen + len(recs)*ipv4RecordLen
	withTemplate := x.messages%x.opts.TemplateEvery == 0
	if withTemplate {
		n += ipv4TemplateSize
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint16(b, ipfixVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = binary.BigEndian.AppendUint32(b, uint32(sendMs/1000))
	b = binary.BigEndian.AppendUint32(b, x.seq)
	b = binary.BigEndian.AppendUint32(b, x.Domain)
	if withTemplate {
		b = binary.BigEndian.AppendUint16(b, templateSetID)
		b = binary.BigEndian.AppendUint16(b, ipv4TemplateSize)
		b = binary.BigEndian.AppendUint16(b, ipv4TemplateID)
		b = binary.BigEndian.AppendUint16(b, uint16(len(ipv4Fields)))
		for _, f := range ipv4Fields {
			b = binary.BigEndian.AppendUint16(b, f[0])
			b = binary.BigEndian.AppendUint16(b, f[1])
		}
	}
	b = binary.BigEndian.AppendUint16(b, ipv4TemplateID)
	b = binary.BigEndian.AppendUint16(b, uint16(setHeaderLen+len(recs)*ipv4RecordLen))
	for _, r := range recs {
		f := &r.Flow
		b = append(b, f.SrcAddr.AsSlice()...)
		b = append(b, f.DstAddr.AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, f.SrcPort)
		b = binary.BigEndian.AppendUint16(b, f.DstPort)
		b = append(b, f.Proto)
		b = binary.BigEndian.AppendUint16(b, uint16(f.TCPFlags))
		b = binary.BigEndian.AppendUint64(b, f.Bytes)
		b = binary.BigEndian.AppendUint64(b, f.Packets)
		b = binary.BigEndian.AppendUint64(b, uint64(f.StartMs))
		b = binary.BigEndian.AppendUint64(b, uint64(f.EndMs))
	}
	x.messages++
	x.seq += uint32(len(recs))
	return Datagram{TimeMs: sendMs, Src: x.Src, Dst: x.Dst, Payload: b, Records: len(recs)}
}

// SortByTime orders datagrams of several exporters as they arrive at the
// collector: by send time, an earlier element first on a tie.
func SortByTime(dgs []Datagram) {
	slices.SortStableFunc(dgs, func(a, b Datagram) int { return cmp.Compare(a.TimeMs, b.TimeMs) })
}

// WritePcap writes datagrams, in the order given, as a classic pcap file
// of Ethernet/IPv4/UDP frames stamped with their send time.
func WritePcap(w io.Writer, dgs []Datagram) error {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		return fmt.Errorf("cannot write pcap header: %w", err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	for i, d := range dgs {
		eth := &layers.Ethernet{
			SrcMAC:       []byte{0x02, 0, 0, 0, 0, 1},
			DstMAC:       []byte{0x02, 0, 0, 0, 0, 2},
			EthernetType: layers.EthernetTypeIPv4,
		}
		ip := &layers.IPv4{
			Version: 4, TTL: 64, Id: uint16(i), Protocol: layers.IPProtocolUDP,
			SrcIP: d.Src.Addr().AsSlice(), DstIP: d.Dst.Addr().AsSlice(),
		}
		udp := &layers.UDP{SrcPort: layers.UDPPort(d.Src.Port()), DstPort: layers.UDPPort(d.Dst.Port())}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			return err
		}
		if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(d.Payload)); err != nil {
			return fmt.Errorf("cannot build datagram %d: %w", i, err)
		}
		data := buf.Bytes()
		ci := gopacket.CaptureInfo{Timestamp: time.UnixMilli(d.TimeMs), CaptureLength: len(data), Length: len(data)}
		if err := pw.WritePacket(ci, data); err != nil {
			return fmt.Errorf("cannot write datagram %d: %w", i, err)
		}
	}
	return nil
}

// Default endpoints of the converted capture.
var (
	DefaultExporter  = netip.MustParseAddrPort("192.0.2.1:4739")
	DefaultCollector = netip.MustParseAddrPort("192.0.2.100:4739")
)

// ConvertStats describes a converted capture.
type ConvertStats struct {
	Datagrams   int
	Records     int // IPv4 data records written
	SkippedIPv6 int
}

// WriteIPFIXCapture writes recs, in export order, as the IPFIX capture of
// one exporter (DefaultExporter, observation domain 1).
func WriteIPFIXCapture(w io.Writer, recs []Record) (ConvertStats, error) {
	x := NewIPFIXExporter(DefaultExporter, DefaultCollector, 1, IPFIXOptions{})
	dgs := x.Export(recs)
	st := ConvertStats{Datagrams: len(dgs), SkippedIPv6: x.SkippedIPv6}
	for _, d := range dgs {
		st.Records += d.Records
	}
	return st, WritePcap(w, dgs)
}
