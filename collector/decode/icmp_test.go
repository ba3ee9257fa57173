package decode

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
)

// icmpFields is what the ICMP tests look at in a decoded flow.
type icmpFields struct {
	Src              netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

func icmpFieldsOf(f flow.Flow) icmpFields {
	return icmpFields{f.SrcAddr, f.SrcPort, f.DstPort, f.Proto}
}

// field is one template field of an ICMP test record and its value.
type field struct {
	ie, length uint16
	value      uint64 // numbers; the address fields get fixed addresses
}

var (
	testSrc4 = netip.MustParseAddr("203.0.113.5")
	testDst4 = netip.MustParseAddr("198.51.100.7")
	testSrc6 = netip.MustParseAddr("2001:db8::5")
	testDst6 = netip.MustParseAddr("2001:db8::7")
)

// templateAndRecord returns template 300 of the fields and one record of
// their values.
func templateAndRecord(fields []field) (tmpl, rec []byte) {
	var spec []uint16
	for _, f := range fields {
		spec = append(spec, f.ie, f.length)
		v := make([]byte, f.length)
		switch f.ie {
		case ieSrcIPv4:
			copy(v, testSrc4.AsSlice())
		case ieDstIPv4:
			copy(v, testDst4.AsSlice())
		case ieSrcIPv6:
			copy(v, testSrc6.AsSlice())
		case ieDstIPv6:
			copy(v, testDst6.AsSlice())
		default:
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], f.value)
			copy(v, b[8-f.length:])
		}
		rec = append(rec, v...)
	}
	return nfbuild.Template(300, spec...), rec
}

// TestNetFlowICMPTypeCode checks that NetFlow v9 and IPFIX ICMP records
// get type<<8|code in the destination port from whichever ICMP elements
// the template has, wherever the protocol field is.
func TestNetFlowICMPTypeCode(t *testing.T) {
	v4 := func(fields ...field) []field {
		return append([]field{{ieSrcIPv4, 4, 0}, {ieDstIPv4, 4, 0}}, fields...)
	}
	v6 := func(fields ...field) []field {
		return append([]field{{ieSrcIPv6, 16, 0}, {ieDstIPv6, 16, 0}}, fields...)
	}
	proto := func(p uint64) field { return field{ieProtocol, 1, p} }
	ports := func(src, dst uint64) []field { return []field{{ieSrcPort, 2, src}, {ieDstPort, 2, dst}} }
	cat := func(parts ...[]field) []field {
		var out []field
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	cases := []struct {
		name   string
		fields []field
		want   icmpFields
	}{
		{
			name:   "icmpTypeCodeIPv4 (32) after the protocol: echo request",
			fields: cat(v4(proto(1)), ports(0, 0), []field{{ieICMPTypeCodeIPv4, 2, 8 << 8}}),
			want:   icmpFields{testSrc4, 0, 0x0800, 1},
		},
		{
			name:   "icmpTypeCodeIPv4 before the protocol: port unreachable",
			fields: cat(v4(field{ieICMPTypeCodeIPv4, 2, 3<<8 | 3}), ports(0, 0), []field{proto(1)}),
			want:   icmpFields{testSrc4, 0, 0x0303, 1},
		},
		{
			name:   "icmpTypeIPv4 and icmpCodeIPv4 (176, 177), protocol last",
			fields: cat(v4(field{ieICMPTypeIPv4, 1, 11}, field{ieICMPCodeIPv4, 1, 1}), []field{proto(1)}),
			want:   icmpFields{testSrc4, 0, 11<<8 | 1, 1},
		},
		{
			name:   "icmpCodeIPv4 before icmpTypeIPv4",
			fields: cat(v4(field{ieICMPCodeIPv4, 1, 4}, proto(1), field{ieICMPTypeIPv4, 1, 3})),
			want:   icmpFields{testSrc4, 0, 3<<8 | 4, 1},
		},
		{
			// Cisco ASA: echo identifier in the ports, type and code in
			// 176/177; an echo reply's zero type wins over the port.
			name:   "ICMP elements win over ports holding the echo identifier",
			fields: cat(v4(proto(1)), ports(0, 17549), []field{{ieICMPTypeIPv4, 1, 0}, {ieICMPCodeIPv4, 1, 0}}),
			want:   icmpFields{testSrc4, 0, 0, 1},
		},
		{
			name:   "ICMP elements win over the source port too",
			fields: cat(v4(proto(1)), ports(17549, 0), []field{{ieICMPTypeIPv4, 1, 8}, {ieICMPCodeIPv4, 1, 0}}),
			want:   icmpFields{testSrc4, 0, 0x0800, 1},
		},
		{
			name:   "no ICMP element: type<<8|code the exporter put in the port is kept",
			fields: cat(v4(proto(1)), ports(0, 0x0800)),
			want:   icmpFields{testSrc4, 0, 0x0800, 1},
		},
		{
			name:   "icmpTypeCodeIPv6 (139): echo request",
			fields: cat(v6(proto(58)), ports(0, 0), []field{{ieICMPTypeCodeIPv6, 2, 128 << 8}}),
			want:   icmpFields{testSrc6, 0, 0x8000, 58},
		},
		{
			name:   "icmpTypeIPv6 and icmpCodeIPv6 (178, 179) before the protocol",
			fields: cat(v6(field{ieICMPTypeIPv6, 1, 1}, field{ieICMPCodeIPv6, 1, 4}, proto(58))),
			want:   icmpFields{testSrc6, 0, 1<<8 | 4, 58},
		},
		{
			name:   "ICMPv6 without element keeps the port",
			fields: cat(v6(proto(58)), ports(0, 129<<8)),
			want:   icmpFields{testSrc6, 0, 129 << 8, 58},
		},
		{
			name:   "dual-stack template, IPv4 flow: the IPv4 element",
			fields: cat(v4(field{ieICMPTypeCodeIPv6, 2, 0}, field{ieICMPTypeCodeIPv4, 2, 8 << 8}, proto(1))),
			want:   icmpFields{testSrc4, 0, 0x0800, 1},
		},
		{
			name:   "dual-stack template, IPv6 flow: the IPv6 element",
			fields: cat(v6(field{ieICMPTypeCodeIPv4, 2, 0}, field{ieICMPTypeCodeIPv6, 2, 135 << 8}, proto(58))),
			want:   icmpFields{testSrc6, 0, 135 << 8, 58},
		},
		{
			name:   "ICMPv6 type and code in the IPv4 element",
			fields: cat(v6(field{ieICMPTypeCodeIPv4, 2, 129 << 8}, proto(58))),
			want:   icmpFields{testSrc6, 0, 129 << 8, 58},
		},
		{
			name:   "an empty element of the other family keeps the port",
			fields: cat(v6(field{ieICMPTypeCodeIPv4, 2, 0}, proto(58)), ports(0, 128<<8)),
			want:   icmpFields{testSrc6, 0, 128 << 8, 58},
		},
		{
			name:   "TCP: the ICMP elements are not read",
			fields: cat(v4(proto(6)), ports(40000, 25), []field{{ieICMPTypeCodeIPv4, 2, 0}}),
			want:   icmpFields{testSrc4, 40000, 25, 6},
		},
	}
	from := netip.MustParseAddrPort("192.0.2.1:2055")
	const secs = 1700000000
	for _, version := range []uint16{9, 10} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("v%d/%s", version, tc.name), func(t *testing.T) {
				tmpl, rec := templateAndRecord(tc.fields)
				templateSet := uint16(0)
				if version == 10 {
					templateSet = 2
				}
				msg := nfbuild.Message{Version: version, Domain: 1, UnixSecs: secs, UptimeMs: 100000,
					Sets: [][]byte{nfbuild.Set(templateSet, tmpl), nfbuild.Set(300, rec)}}.Bytes()
				flows, _, err := newDecoder(false).Decode(FamilyNetFlow, from, msg, secs*1000, nil)
				if err != nil || len(flows) != 1 {
					t.Fatalf("decoded %d flows, %v; want 1", len(flows), err)
				}
				if got := icmpFieldsOf(flows[0]); got != tc.want {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
			})
		}
	}
}

// TestNetFlowV5ICMPDstPort checks that NetFlow v5's own convention, type
// and code in the destination port, reaches the flow as it is.
func TestNetFlowV5ICMPDstPort(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dstPort uint16
	}{
		{"echo request", 8 << 8},
		{"echo reply", 0},
		{"port unreachable", 3<<8 | 3},
		{"time exceeded", 11 << 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := nfbuild.Cat(nfbuild.U16(5), nfbuild.U16(1), nfbuild.U32(100000), nfbuild.U32(1700000000), nfbuild.U32(0), nfbuild.U32(0), []byte{0, 0}, nfbuild.U16(0))
			rec := make([]byte, 48)
			copy(rec[0:], testSrc4.AsSlice())
			copy(rec[4:], testDst4.AsSlice())
			binary.BigEndian.PutUint16(rec[34:], tc.dstPort)
			rec[38] = 1 // protocol
			flows, _, err := newDecoder(false).Decode(FamilyNetFlow, netip.MustParseAddrPort("192.0.2.1:1"), nfbuild.Cat(hdr, rec), 1, nil)
			if err != nil || len(flows) != 1 {
				t.Fatalf("%d flows, %v", len(flows), err)
			}
			if got, want := icmpFieldsOf(flows[0]), (icmpFields{testSrc4, 0, tc.dstPort, 1}); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}
