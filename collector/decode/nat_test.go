package decode

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/internal/testenv"
)

const natSecs = 1700000000 // export header time of the built datagrams

var natExporter = netip.MustParseAddrPort("192.0.2.30:2055")

// natMessage is a NetFlow v9 (9) or IPFIX (10) message of template 300
// of fields (type, length pairs) and a data set of its records.
func natMessage(version uint16, seq uint32, fields []uint16, records ...[]byte) []byte {
	templateSet := map[uint16]uint16{9: v9TemplateSet, 10: ipfixTemplateSet}[version]
	return nfbuild.Message{Version: version, Domain: 1, Sequence: seq, UnixSecs: natSecs, UptimeMs: 100000, Sets: [][]byte{
		nfbuild.Set(templateSet, nfbuild.Template(300, fields...)),
		nfbuild.Set(300, records...),
	}}.Bytes()
}

// natSession is a session event's template: inside address and port,
// outside address and port, protocol, natEvent, observation time in ms.
var natSession = []uint16{ieSrcIPv4, 4, ieSrcPort, 2, iePostNATSrcIPv4, 4, iePostNAPTSrcPort, 2,
	ieProtocol, 1, ieNATEvent, 1, ieObsMilliseconds, 8}

func natSessionRecord(event uint8, timeMs uint64) []byte {
	return nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.U16(51000), nfbuild.IP("198.51.100.7"), nfbuild.U16(1234),
		[]byte{flow.ProtoTCP, event}, nfbuild.U64(timeMs))
}

func TestDecodeNATLogging(t *testing.T) {
	inside, outside := netip.MustParseAddr("100.64.1.2"), netip.MustParseAddr("198.51.100.7")
	const obsMs = natSecs*1000 - 250
	session := func(event uint8) NATEvent {
		return NATEvent{TimeMs: obsMs, Event: event, Proto: flow.ProtoTCP, Inside: inside, InsidePort: 51000,
			Outside: outside, OutsidePort: 1234, PortStart: 1234, PortEnd: 1234, PortStep: 1}
	}
	// Port block logging (RFC 8158 section 4.2.2): inside address,
	// outside address, port range, natEvent; no time field, so the
	// export time.
	portBlock := []uint16{ieSrcIPv4, 4, iePostNATSrcIPv4, 4, iePortRangeStart, 2, iePortRangeEnd, 2, ieNATEvent, 1}
	block := func(event uint8) []byte {
		return nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), nfbuild.U16(1024), nfbuild.U16(1535), []byte{event})
	}
	cases := []struct {
		name      string
		ipfixOnly bool
		fields    []uint16
		records   [][]byte
		want      []NATEvent
		skipped   int
		setErrors int
	}{
		{
			name: "port block allocation", fields: portBlock, records: [][]byte{block(PortBlockAllocation)},
			want: []NATEvent{{TimeMs: natSecs * 1000, Event: PortBlockAllocation, Inside: inside, Outside: outside,
				PortStart: 1024, PortEnd: 1535, PortStep: 1}},
		},
		{
			name: "port block de-allocation", fields: portBlock, records: [][]byte{block(PortBlockDeallocation)},
			want: []NATEvent{{TimeMs: natSecs * 1000, Event: PortBlockDeallocation, Inside: inside, Outside: outside,
				PortStart: 1024, PortEnd: 1535, PortStep: 1}},
		},
		{
			// As akvorado's nat.pcap's template 267 has it: no
			// portRangeEnd but a step and a number of ports.
			name: "port block of stepped ports in a VRF",
			fields: []uint16{ieSrcIPv4, 4, iePostNATSrcIPv4, 4, ieIngressVRFID, 4, ieProtocol, 1, ieNATEvent, 1,
				ieObsMilliseconds, 8, iePortRangeStart, 2, iePortRangeStep, 2, iePortRangeNum, 2},
			records: [][]byte{nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), nfbuild.U32(7), []byte{0, PortBlockAllocation},
				nfbuild.U64(obsMs), nfbuild.U16(2048), nfbuild.U16(2), nfbuild.U16(4))},
			want: []NATEvent{{TimeMs: obsMs, Event: PortBlockAllocation, VRF: 7, Inside: inside, Outside: outside,
				PortStart: 2048, PortEnd: 2054, PortStep: 2}},
		},
		{
			name: "NAT44 session create and delete", fields: natSession,
			records: [][]byte{natSessionRecord(NAT44SessionCreate, obsMs), natSessionRecord(NAT44SessionDelete, obsMs)},
			want:    []NATEvent{session(NAT44SessionCreate), session(NAT44SessionDelete)},
		},
		{
			name: "historic translation create and delete", fields: natSession,
			records: [][]byte{natSessionRecord(NATTranslationCreate, obsMs), natSessionRecord(NATTranslationDelete, obsMs)},
			want:    []NATEvent{session(NATTranslationCreate), session(NATTranslationDelete)},
		},
		{
			name:    "NAT64 session: the inside address is IPv6",
			fields:  []uint16{ieSrcIPv6, 16, iePostNATSrcIPv4, 4, iePostNAPTSrcPort, 2, ieNATEvent, 1},
			records: [][]byte{nfbuild.Cat(nfbuild.IP("2001:db8::5"), nfbuild.IP("198.51.100.7"), nfbuild.U16(1234), []byte{NAT64SessionCreate})},
			want: []NATEvent{{TimeMs: natSecs * 1000, Event: NAT64SessionCreate, Inside: netip.MustParseAddr("2001:db8::5"),
				Outside: outside, OutsidePort: 1234, PortStart: 1234, PortEnd: 1234, PortStep: 1}},
		},
		{
			name:   "DS-Lite: the B4's IPv6 address is the inside, not the shared 192.0.0.2",
			fields: []uint16{ieSrcIPv4, 4, ieSrcIPv6, 16, iePostNATSrcIPv4, 4, ieNATEvent, 1},
			records: [][]byte{nfbuild.Cat(nfbuild.IP("192.0.0.2"), nfbuild.IP("2001:db8::5"), nfbuild.IP("198.51.100.7"),
				[]byte{NAT44SessionCreate})},
			want: []NATEvent{{TimeMs: natSecs * 1000, Event: NAT44SessionCreate, Inside: netip.MustParseAddr("2001:db8::5"),
				Outside: outside, PortStep: 1}},
		},
		{
			name:    "quota exceeded names no outside address",
			fields:  []uint16{ieSrcIPv4, 4, ieNATEvent, 1},
			records: [][]byte{nfbuild.Cat(nfbuild.IP("100.64.1.2"), []byte{13})},
			skipped: 1,
		},
		{
			name:    "addresses exhausted names a pool only",
			fields:  []uint16{283, 4, ieNATEvent, 1}, // natPoolId
			records: [][]byte{nfbuild.Cat(nfbuild.U32(1), []byte{3})},
			skipped: 1,
		},
		{
			name:    "unspecified and malformed addresses are none",
			fields:  []uint16{ieSrcIPv4, 4, iePostNATSrcIPv4, 2, iePostNATSrcIPv6, 16, ieNATEvent, 1},
			records: [][]byte{nfbuild.Cat(nfbuild.IP("100.64.1.2"), []byte{198, 51}, nfbuild.IP("::"), []byte{NAT44SessionCreate})},
			skipped: 1,
		},
		{
			name:      "inverted port range",
			fields:    portBlock,
			records:   [][]byte{nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), nfbuild.U16(2000), nfbuild.U16(1000), []byte{16})},
			setErrors: 1,
		},
		{
			name:      "variable-length field overrunning the set",
			ipfixOnly: true,
			fields:    []uint16{ieSrcIPv4, 4, iePostNATSrcIPv4, 4, ieNATEvent, 1, 96, variableLength},
			records:   [][]byte{nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), []byte{4, 30, 'x'})},
			setErrors: 1,
		},
		{
			// Zero-length fields make zero-length records: one per set,
			// as for flows, and no address.
			name:    "template of zero-length fields",
			fields:  []uint16{ieNATEvent, 0, ieSrcIPv4, 0},
			records: [][]byte{make([]byte, 8)},
			skipped: 1,
		},
	}
	for _, version := range []uint16{9, 10} {
		for _, tc := range cases {
			if tc.ipfixOnly && version != 10 {
				continue
			}
			t.Run(map[uint16]string{9: "netflow9/", 10: "ipfix/"}[version]+tc.name, func(t *testing.T) {
				d := newDecoder(false)
				var rep Report
				flows, err := d.DecodeReport(FamilyNetFlow, natExporter, natMessage(version, 0, tc.fields, tc.records...), natSecs*1000, nil, &rep)
				if err != nil {
					t.Fatal(err)
				}
				if len(flows) != 0 {
					t.Errorf("NAT logging records decoded as %d flows: %+v", len(flows), flows)
				}
				for i := range tc.want {
					tc.want[i].Exporter = natExporter.Addr()
				}
				if diff := cmp.Diff(tc.want, rep.NAT, cmpAddr); diff != "" {
					t.Errorf("NAT events (-want +got):\n%s", diff)
				}
				if rep.NATSkipped != tc.skipped || rep.SetErrors != tc.setErrors {
					t.Errorf("NATSkipped %d, SetErrors %d; want %d, %d", rep.NATSkipped, rep.SetErrors, tc.skipped, tc.setErrors)
				}
			})
		}
	}
}

// NAT logging records count in IPFIX sequence numbers, which count data
// records: not counting them would report them lost.
func TestDecodeNATIPFIXSequence(t *testing.T) {
	d := newDecoder(false)
	var rep Report
	recs := [][]byte{natSessionRecord(NAT44SessionCreate, 1), natSessionRecord(NAT44SessionCreate, 2), natSessionRecord(NAT44SessionDelete, 3)}
	for _, seq := range []uint32{100, 103, 106} {
		if _, err := d.DecodeReport(FamilyNetFlow, natExporter, natMessage(10, seq, natSession, recs...), natSecs*1000, nil, &rep); err != nil {
			t.Fatal(err)
		}
	}
	if rep.LostRecords != 0 || len(rep.NAT) != 9 {
		t.Errorf("LostRecords %d, %d NAT events; want 0, 9", rep.LostRecords, len(rep.NAT))
	}
}

// NAT event times are shifted like flow times when the exporter's clock is
// off.
func TestDecodeNATClockSkew(t *testing.T) {
	d := newDecoder(true)
	const skew = int64(time.Hour / time.Millisecond)
	const obsMs = natSecs*1000 - 250
	msg := natMessage(10, 0, natSession, natSessionRecord(NAT44SessionCreate, obsMs))
	var rep Report
	if _, err := d.DecodeReport(FamilyNetFlow, natExporter, msg, natSecs*1000+skew, nil, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.NAT) != 1 || rep.NAT[0].TimeMs != obsMs+skew {
		t.Errorf("NAT events %+v; want one at %d", rep.NAT, obsMs+skew)
	}
}

// Firewalls and NAT routers put translations in flow records: those stay
// flows, of the pre-NAT source, and the translated ones also make a NAT
// event.
func TestDecodeNATInFlowRecords(t *testing.T) {
	fields := []uint16{ieSrcIPv4, 4, ieDstIPv4, 4, ieSrcPort, 2, ieDstPort, 2, ieProtocol, 1,
		ieOctetDelta, 4, iePacketDelta, 4, iePostNATSrcIPv4, 4, iePostNAPTSrcPort, 2, ieStartMilliseconds, 8}
	const startMs = natSecs*1000 - 5000
	rec := func(src, postSrc string, postPort uint16) []byte {
		return nfbuild.Cat(nfbuild.IP(src), nfbuild.IP("203.0.113.9"), nfbuild.U16(40000), nfbuild.U16(443), []byte{flow.ProtoTCP},
			nfbuild.U32(1500), nfbuild.U32(3), nfbuild.IP(postSrc), nfbuild.U16(postPort), nfbuild.U64(startMs))
	}
	records := [][]byte{
		rec("10.0.0.5", "198.51.100.7", 61000), // translated
		rec("10.0.0.6", "10.0.0.6", 40000),     // not translated (ASA, MikroTik)
		rec("10.0.0.7", "0.0.0.0", 0),          // not translated (FortiGate)
	}
	for _, version := range []uint16{9, 10} {
		t.Run(map[uint16]string{9: "netflow9", 10: "ipfix"}[version], func(t *testing.T) {
			d := newDecoder(false)
			var rep Report
			flows, err := d.DecodeReport(FamilyNetFlow, natExporter, natMessage(version, 0, fields, records...), natSecs*1000, nil, &rep)
			if err != nil {
				t.Fatal(err)
			}
			if len(flows) != 3 {
				t.Fatalf("%d flows, want 3", len(flows))
			}
			for i, src := range []string{"10.0.0.5", "10.0.0.6", "10.0.0.7"} {
				if f := flows[i]; f.SrcAddr != netip.MustParseAddr(src) || f.Bytes != 1500 || f.StartMs != startMs {
					t.Errorf("flow %d: %+v; want source %s (pre-NAT), 1500 bytes, start %d", i, f, src, startMs)
				}
			}
			want := []NATEvent{{Exporter: natExporter.Addr(), TimeMs: startMs, Event: NATTranslationCreate, Proto: flow.ProtoTCP,
				Inside: netip.MustParseAddr("10.0.0.5"), InsidePort: 40000, Outside: netip.MustParseAddr("198.51.100.7"),
				OutsidePort: 61000, PortStart: 61000, PortEnd: 61000, PortStep: 1}}
			if diff := cmp.Diff(want, rep.NAT, cmpAddr); diff != "" {
				t.Errorf("NAT events (-want +got):\n%s", diff)
			}
		})
	}
}

// The caller resets Report.NAT between datagrams and keeps its array:
// decoding then allocates nothing.
func TestDecodeNATNoAllocation(t *testing.T) {
	d := newDecoder(false)
	rep := Report{NAT: make([]NATEvent, 0, 8)}
	flows := make([]flow.Flow, 0, 8)
	// Templates first: learning one allocates.
	if _, err := d.DecodeReport(FamilyNetFlow, natExporter, natMessage(10, 0, natSession), natSecs*1000, nil, &rep); err != nil {
		t.Fatal(err)
	}
	msg := nfbuild.Message{Version: 10, Domain: 1, UnixSecs: natSecs, Sets: [][]byte{
		nfbuild.Set(300, natSessionRecord(NAT44SessionCreate, 1), natSessionRecord(NAT44SessionDelete, 2))}}.Bytes()
	allocs := testing.AllocsPerRun(100, func() {
		rep = Report{NAT: rep.NAT[:0]}
		var err error
		if flows, err = d.DecodeReport(FamilyNetFlow, natExporter, msg, natSecs*1000, flows[:0], &rep); err != nil || len(rep.NAT) != 2 {
			t.Fatalf("err %v, %d NAT events", err, len(rep.NAT))
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per datagram, want 0", allocs)
	}
}

// akvorado's nat.pcap is one NetFlow v9 datagram of a CGN (observation
// domain 200): four templates, all with natEvent (267 port
// blocks, 266 pool events, 265 sessions, 264 sessions with destinations),
// and nine session records of template 264 with natEvent 1 (historic
// translation create) or 2 (delete), inside 172.16.0.0/16 behind
// 10.143.52.29. Before NAT logging was decoded they came out as nine
// flows of zero bytes.
func TestDecodeNATCapture(t *testing.T) {
	path := filepath.Join(testenv.Shared(t, "testdata/flow-captures/akvorado"), "outlet__flow__decoder__netflow__testdata__nat.pcap")
	d := newDecoder(false)
	var rep Report
	var flows []flow.Flow
	datagrams := 0
	err := ReadCapture(path, func(dg Datagram) error {
		datagrams++
		var err error
		flows, err = d.DecodeReport(Family(dg.Payload), dg.From, dg.Payload, dg.TimeMs, flows, &rep)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	exporter := netip.MustParseAddr("10.143.52.1")
	outside := netip.MustParseAddr("10.143.52.29")
	session := func(ms int64, event, proto uint8, in string, inPort, outPort uint16) NATEvent {
		return NATEvent{Exporter: exporter, TimeMs: ms, Event: event, Proto: proto,
			Inside: netip.MustParseAddr(in), InsidePort: inPort, Outside: outside, OutsidePort: outPort,
			PortStart: outPort, PortEnd: outPort, PortStep: 1}
	}
	const udp, tcp = protoUDP, flow.ProtoTCP
	want := []NATEvent{
		session(1749049740450, 1, udp, "172.16.100.198", 35303, 35303),
		session(1749049740458, 1, tcp, "172.16.100.198", 52510, 52510),
		session(1749049740545, 1, tcp, "172.16.100.115", 55942, 55942),
		session(1749049740598, 2, udp, "172.16.103.254", 38444, 38444),
		session(1749049740894, 1, udp, "172.16.100.211", 50200, 50200),
		session(1749049740894, 1, udp, "172.16.100.211", 53684, 53684),
		session(1749049740899, 1, tcp, "172.16.100.211", 57563, 57563),
		session(1749049741130, 1, tcp, "172.16.100.18", 54526, 54526),
		session(1749049741235, 1, udp, "172.16.103.50", 123, 640), // NTP's source port translated
	}
	if datagrams != 1 || len(flows) != 0 {
		t.Errorf("%d datagrams, %d flows; want 1, 0", datagrams, len(flows))
	}
	if diff := cmp.Diff(want, rep.NAT, cmpAddr); diff != "" {
		t.Errorf("NAT events (-want +got):\n%s", diff)
	}
	if rep.TemplateMisses+rep.TemplatesRefused+rep.SetErrors+rep.NATSkipped != 0 {
		t.Errorf("report %+v: want no misses, refusals, errors or skipped records", rep)
	}
	if len(d.exporters) != 1 {
		t.Errorf("state for %d exporters, want 1", len(d.exporters))
	}
	for _, exp := range d.exporters {
		if n := len(exp.templates); n != 4 {
			t.Errorf("%d templates learned, want 4", n)
		}
	}
}

// natSeeds are fuzz seeds (templates, data) of NAT logging and of flows
// with post-NAT fields, so that the fuzzer starts from these paths even
// where no shared capture holds them.
func natSeeds(version uint16) [][2][]byte {
	session := natMessage(version, 0, natSession, natSessionRecord(NAT44SessionCreate, 1))
	block := natMessage(version, 0, []uint16{ieSrcIPv4, 4, iePostNATSrcIPv4, 4, iePortRangeStart, 2, iePortRangeStep, 2, iePortRangeNum, 2, ieNATEvent, 1},
		nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), nfbuild.U16(1024), nfbuild.U16(1), nfbuild.U16(512), []byte{PortBlockAllocation}))
	inFlow := natMessage(version, 0, []uint16{ieSrcIPv4, 4, ieOctetDelta, 4, iePostNATSrcIPv4, 4, iePostNAPTSrcPort, 2},
		nfbuild.Cat(nfbuild.IP("10.0.0.5"), nfbuild.U32(100), nfbuild.IP("198.51.100.7"), nfbuild.U16(61000)))
	return [][2][]byte{{session, session}, {block, block}, {inFlow, inFlow}}
}
