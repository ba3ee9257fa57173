package collector

import (
	"encoding/binary"
	"net/netip"
)

// Builders of NetFlow v9 datagrams for the component's tests: a copy of
// the few that collector/decode's tests define (test files cannot be
// shared between packages).

// nf builds NetFlow v9 (version 9) or IPFIX (10) datagrams for tests.
type nf struct {
	version  uint16
	domain   uint32
	sequence uint32
	unixSecs uint32
	uptimeMs uint32
	sets     [][]byte
}

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// set wraps a set body with its header.
func set(id uint16, body ...[]byte) []byte {
	b := cat(body...)
	return cat(u16(id), u16(uint16(4+len(b))), b)
}

// tmpl is a template record: id, then (type, length) pairs.
func tmpl(id uint16, fields ...uint16) []byte {
	b := cat(u16(id), u16(uint16(len(fields)/2)))
	for _, f := range fields {
		b = append(b, u16(f)...)
	}
	return b
}

func (n nf) bytes() []byte {
	body := cat(n.sets...)
	if n.version == 10 {
		return cat(u16(10), u16(uint16(16+len(body))), u32(n.unixSecs), u32(n.sequence), u32(n.domain), body)
	}
	return cat(u16(9), u16(uint16(len(n.sets))), u32(n.uptimeMs), u32(n.unixSecs), u32(n.sequence), u32(n.domain), body)
}

// v4 record of the template 256 used below: src (field type 8), dst
// (12), sport (7), dport (11), proto (4), bytes (1), packets (2), first
// (22) and last (21) in uptime ms.
var tmpl256 = tmpl(256, 8, 4, 12, 4, 7, 2, 11, 2, 4, 1, 1, 4, 2, 4, 22, 4, 21, 4)

func rec256(src, dst string, dport uint16, first, last uint32) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	return cat(s[:], d[:], u16(40000), u16(dport), []byte{6}, u32(124), u32(2), u32(first), u32(last))
}
