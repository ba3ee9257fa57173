// Package collectorbench measures wormsign's collector against goflow v3's
// own collector on the same export datagrams: flows per second into Kafka
// and loss. The load generator here builds NetFlow v9, IPFIX and sFlow v5
// datagrams and sends them to loopback at a set rate.
package collectorbench

import (
	"encoding/binary"
	"fmt"
	"net"
	"time"
)

// Protocols of the generated datagrams.
const (
	NetFlowV9 = "netflow9"
	IPFIX     = "ipfix"
	SFlow     = "sflow5"
)

// Datagram is one generated export datagram.
type Datagram struct {
	Protocol string
	Exporter int // which of the generator's exporters sends it
	Payload  []byte
	Flows    int
}

// Load is a list of datagrams from a few exporters, ready to send.
type Load struct {
	Datagrams []Datagram
	Flows     int
}

type rng uint64

func (r *rng) next() uint32 {
	*r ^= *r << 13
	*r ^= *r >> 7
	*r ^= *r << 17
	return uint32(*r)
}

// record is the flow every protocol encodes.
type record struct {
	src, dst       [4]byte
	sport, dport   uint16
	proto, flags   uint8
	bytes, packets uint32
	startMs, endMs int64
	inIf, outIf    uint32
}

func (r *rng) record(subscribers int, nowMs int64) record {
	s := int(r.next()) % subscribers
	rec := record{
		src:   [4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)},
		dst:   [4]byte{198, 18 + byte(r.next()&1), byte(r.next()), byte(r.next())},
		sport: uint16(1024 + r.next()%60000), dport: 443, proto: 6, flags: 0x1b,
		bytes: 40 + r.next()%100000, packets: 1 + r.next()%100,
		startMs: nowMs - 5000, endMs: nowMs - int64(r.next()%1000),
		inIf: 1 + r.next()%8, outIf: 10 + r.next()%8,
	}
	if r.next()%20 == 0 {
		rec.dport, rec.flags, rec.packets, rec.bytes = 25, 0x02, 2, 124
	}
	return rec
}

func be16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func be64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// v9Fields is the template of the NetFlow v9 load (38-byte records).
var v9Fields = []uint16{8, 4, 12, 4, 7, 2, 11, 2, 4, 1, 6, 1, 1, 4, 2, 4, 22, 4, 21, 4, 10, 4, 14, 4}

// ipfixFields is the template of the IPFIX load (46-byte records, times in
// flowStart/EndMilliseconds).
var ipfixFields = []uint16{8, 4, 12, 4, 7, 2, 11, 2, 4, 1, 6, 1, 1, 4, 2, 4, 152, 8, 153, 8, 10, 4, 14, 4}

func templateSet(setID uint16, fields []uint16) []byte {
	body := be16(be16(nil, 256), uint16(len(fields)/2))
	for _, f := range fields {
		body = be16(body, f)
	}
	return append(be16(be16(nil, setID), uint16(4+len(body))), body...)
}

const (
	v9PerDatagram    = 36 // 20 + 4 + 36*38 = 1392 bytes
	ipfixPerDatagram = 29 // 16 + 4 + 29*46 = 1354 bytes
	sflowPerDatagram = 12 // 28 + 12*104 = 1276 bytes
	uptimeBaseMs     = 10_000_000
)

func (r *rng) netflowV9(seq uint32, withTemplate bool, nowMs int64, subscribers int) []byte {
	secs := uint32(nowMs / 1000)
	uptime := uint32(uptimeBaseMs)
	b := be16(nil, 9)
	b = be16(b, v9PerDatagram)
	b = be32(b, uptime)
	b = be32(b, secs)
	b = be32(b, seq)
	b = be32(b, 1) // source ID
	if withTemplate {
		b = append(b, templateSet(0, v9Fields)...)
	}
	b = be16(b, 256)
	b = be16(b, 4+v9PerDatagram*38)
	for range v9PerDatagram {
		rec := r.record(subscribers, nowMs)
		b = append(b, rec.src[:]...)
		b = append(b, rec.dst[:]...)
		b = be16(b, rec.sport)
		b = be16(b, rec.dport)
		b = append(b, rec.proto, rec.flags)
		b = be32(b, rec.bytes)
		b = be32(b, rec.packets)
		// Uptime at the flow's start and end, the header's second being
		// the export time.
		b = be32(b, uptime-uint32(int64(secs)*1000-rec.startMs))
		b = be32(b, uptime-uint32(int64(secs)*1000-rec.endMs))
		b = be32(b, rec.inIf)
		b = be32(b, rec.outIf)
	}
	return b
}

func (r *rng) ipfix(seq uint32, withTemplate bool, nowMs int64, subscribers int) []byte {
	var body []byte
	if withTemplate {
		body = append(body, templateSet(2, ipfixFields)...)
	}
	body = be16(body, 256)
	body = be16(body, 4+ipfixPerDatagram*46)
	for range ipfixPerDatagram {
		rec := r.record(subscribers, nowMs)
		body = append(body, rec.src[:]...)
		body = append(body, rec.dst[:]...)
		body = be16(body, rec.sport)
		body = be16(body, rec.dport)
		body = append(body, rec.proto, rec.flags)
		body = be32(body, rec.bytes)
		body = be32(body, rec.packets)
		body = be64(body, uint64(rec.startMs))
		body = be64(body, uint64(rec.endMs))
		body = be32(body, rec.inIf)
		body = be32(body, rec.outIf)
	}
	b := be16(nil, 10)
	b = be16(b, uint16(16+len(body)))
	b = be32(b, uint32(nowMs/1000))
	b = be32(b, seq)
	b = be32(b, 1) // observation domain
	return append(b, body...)
}

// sflow builds a datagram of flow samples, each with the sampled packet's
// Ethernet, IPv4 and TCP headers (54 bytes, padded to 56).
func (r *rng) sflow(seq uint32, subscribers int) []byte {
	b := be32(nil, 5)
	b = be32(b, 1)
	b = append(b, 127, 0, 0, 1)
	b = be32(b, 0)   // sub-agent
	b = be32(b, seq) // datagram sequence
	b = be32(b, 100000)
	b = be32(b, sflowPerDatagram)
	for i := range sflowPerDatagram {
		rec := r.record(subscribers, 0)
		pkt := make([]byte, 0, 56)
		pkt = append(pkt, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00) // Ethernet
		pkt = append(pkt, 0x45, 0)
		pkt = be16(pkt, 40+uint16(rec.bytes%1400))
		pkt = append(pkt, 0, 0, 0x40, 0, 64, rec.proto, 0, 0)
		pkt = append(pkt, rec.src[:]...)
		pkt = append(pkt, rec.dst[:]...)
		pkt = be16(pkt, rec.sport)
		pkt = be16(pkt, rec.dport)
		pkt = be32(pkt, 0)
		pkt = be32(pkt, 0)
		pkt = append(pkt, 0x50, rec.flags)
		pkt = be16(pkt, 65535)
		pkt = be32(pkt, 0)
		pkt = append(pkt, 0, 0) // pad to 4 bytes
		record := be32(nil, 1)  // raw packet header
		record = be32(record, 16+56)
		record = be32(record, 1) // Ethernet
		record = be32(record, 54+uint32(rec.bytes%1400))
		record = be32(record, 4) // stripped (FCS)
		record = be32(record, 54)
		record = append(record, pkt...)
		sample := be32(nil, seq*sflowPerDatagram+uint32(i))
		sample = be32(sample, rec.inIf) // source ID
		sample = be32(sample, 1000)     // sampling rate
		sample = be32(sample, 1000*(seq*sflowPerDatagram+uint32(i)))
		sample = be32(sample, 0) // drops
		sample = be32(sample, rec.inIf)
		sample = be32(sample, rec.outIf)
		sample = be32(sample, 1) // records
		sample = append(sample, record...)
		b = be32(b, 1) // flow sample
		b = be32(b, uint32(len(sample)))
		b = append(b, sample...)
	}
	return b
}

// Generate builds about flows flow records as datagrams from exporters
// exporters per protocol, NetFlow v9, IPFIX and sFlow taking turns. Each
// NetFlow v9/IPFIX exporter sends its template in its first datagram and
// every 64th after.
func Generate(flows, exporters, subscribers int, nowMs int64) Load {
	return GenerateProtocols(flows, exporters, subscribers, nowMs, NetFlowV9, IPFIX, SFlow)
}

// GenerateProtocols is Generate with the protocols that take turns named.
func GenerateProtocols(flows, exporters, subscribers int, nowMs int64, protocols ...string) Load {
	r := rng(0x9e3779b97f4a7c15)
	var load Load
	seq := make(map[string][]uint32)   // sequence numbers
	count := make(map[string][]uint32) // datagrams sent
	for _, p := range []string{NetFlowV9, IPFIX, SFlow} {
		seq[p] = make([]uint32, exporters)
		count[p] = make([]uint32, exporters)
	}
	for i := 0; load.Flows < flows; i++ {
		proto := protocols[i%len(protocols)]
		exp := (i / len(protocols)) % exporters
		n := seq[proto][exp]
		withTemplate := count[proto][exp]%64 == 0
		count[proto][exp]++
		var d Datagram
		switch proto {
		case NetFlowV9:
			d = Datagram{proto, exp, r.netflowV9(n, withTemplate, nowMs, subscribers), v9PerDatagram}
			seq[proto][exp]++
		case IPFIX:
			// IPFIX sequence numbers count records.
			d = Datagram{proto, exp, r.ipfix(n, withTemplate, nowMs, subscribers), ipfixPerDatagram}
			seq[proto][exp] += ipfixPerDatagram
		case SFlow:
			d = Datagram{proto, exp, r.sflow(n, subscribers), sflowPerDatagram}
			seq[proto][exp]++
		}
		load.Datagrams = append(load.Datagrams, d)
		load.Flows += d.Flows
	}
	return load
}

// Sender sends a load from one UDP socket per protocol and exporter (so
// that each exporter has its own source port), to a NetFlow/IPFIX and an
// sFlow address.
type Sender struct {
	conns map[string][]*net.UDPConn
}

// NewSender opens the sockets.
func NewSender(exporters int, netflowAddr, sflowAddr string) (*Sender, error) {
	s := &Sender{conns: map[string][]*net.UDPConn{}}
	for _, p := range []string{NetFlowV9, IPFIX, SFlow} {
		addr := netflowAddr
		if p == SFlow {
			addr = sflowAddr
		}
		raddr, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("cannot resolve %s: %w", addr, err)
		}
		for range exporters {
			c, err := net.DialUDP("udp", nil, raddr)
			if err != nil {
				s.Close()
				return nil, fmt.Errorf("cannot open exporter socket: %w", err)
			}
			c.SetWriteBuffer(4 << 20)
			s.conns[p] = append(s.conns[p], c)
		}
	}
	return s, nil
}

// Close closes the sockets.
func (s *Sender) Close() {
	for _, cs := range s.conns {
		for _, c := range cs {
			c.Close()
		}
	}
}

// Send sends the load at flowsPerSecond (0: as fast as possible) and
// returns how long it took. Send errors (a full socket buffer) are
// counted as not sent. The pace is kept per datagram: each one waits
// until the flows before it are due, so bursts are only as long as the
// timer's granularity (tens of microseconds), not a fixed count.
func (s *Sender) Send(load Load, flowsPerSecond int) (sent int, took time.Duration) {
	start := time.Now()
	offered := 0
	for _, d := range load.Datagrams {
		if flowsPerSecond > 0 {
			due := start.Add(time.Duration(float64(offered) / float64(flowsPerSecond) * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
		}
		offered += d.Flows
		if _, err := s.conns[d.Protocol][d.Exporter].Write(d.Payload); err == nil {
			sent += d.Flows
		}
	}
	return sent, time.Since(start)
}

// SMTPProbes is a NetFlow v9 datagram, template included, of n TCP/25
// SYN-only flows from src to the distinct destinations 198.19.first/16..
// first+n-1, ending at nowMs: a spam zombie's attempts.
func SMTPProbes(seq uint32, nowMs int64, src [4]byte, first, n int) []byte {
	secs := uint32(nowMs / 1000)
	uptime := uint32(uptimeBaseMs)
	b := be16(nil, 9)
	b = be16(b, uint16(n+1))
	b = be32(b, uptime)
	b = be32(b, secs)
	b = be32(b, seq)
	b = be32(b, 1)
	b = append(b, templateSet(0, v9Fields)...)
	b = be16(b, 256)
	b = be16(b, uint16(4+n*38))
	for i := first; i < first+n; i++ {
		b = append(b, src[:]...)
		b = append(b, 198, 19, byte(i>>8), byte(i))
		b = be16(b, uint16(40000+i))
		b = be16(b, 25)
		b = append(b, 6, 0x02)
		b = be32(b, 124)
		b = be32(b, 2)
		b = be32(b, uptime-uint32(int64(secs)*1000-(nowMs-500)))
		b = be32(b, uptime-uint32(int64(secs)*1000-nowMs))
		b = be32(b, 1)
		b = be32(b, 10)
	}
	return b
}
