// Package nfbuild builds NetFlow v9 and IPFIX datagrams byte by byte, for
// the tests of the decoder and of the collector.
package nfbuild

import (
	"encoding/binary"
	"net/netip"
)

// Message is a NetFlow v9 (Version 9) or IPFIX (10) datagram.
type Message struct {
	Version  uint16
	Domain   uint32
	Sequence uint32
	UnixSecs uint32
	UptimeMs uint32 // NetFlow v9 only
	Sets     [][]byte
}

// U16, U32 and U64 are big-endian numbers.
func U16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func U32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func U64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// IP is the bytes of an IPv4 (4) or IPv6 (16) address.
func IP(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// Cat joins byte strings.
func Cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// Set wraps a set body with its header.
func Set(id uint16, body ...[]byte) []byte {
	b := Cat(body...)
	return Cat(U16(id), U16(uint16(4+len(b))), b)
}

// Template is a template record: id, then (type, length) pairs.
func Template(id uint16, fields ...uint16) []byte {
	b := Cat(U16(id), U16(uint16(len(fields)/2)))
	for _, f := range fields {
		b = append(b, U16(f)...)
	}
	return b
}

// Bytes is the datagram.
func (m Message) Bytes() []byte {
	body := Cat(m.Sets...)
	if m.Version == 10 {
		return Cat(U16(10), U16(uint16(16+len(body))), U32(m.UnixSecs), U32(m.Sequence), U32(m.Domain), body)
	}
	return Cat(U16(9), U16(uint16(len(m.Sets))), U32(m.UptimeMs), U32(m.UnixSecs), U32(m.Sequence), U32(m.Domain), body)
}

// Template256 is a template of IPv4 flows: source (IE 8), destination
// (12), source and destination port (7, 11), protocol (4), bytes (1),
// packets (2), first and last switched in uptime ms (22, 21).
var Template256 = Template(256, 8, 4, 12, 4, 7, 2, 11, 2, 4, 1, 1, 4, 2, 4, 22, 4, 21, 4)

// Record256 is a TCP record of Template256 from source port 40000, of 124
// bytes in 2 packets.
func Record256(src, dst string, dport uint16, first, last uint32) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	return Cat(s[:], d[:], U16(40000), U16(dport), []byte{6}, U32(124), U32(2), U32(first), U32(last))
}
