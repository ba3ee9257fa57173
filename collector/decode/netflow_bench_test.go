package decode

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/nfbuild"
)

// benchRecords is the records per benchmark datagram: routers pack 20-40
// flow records into one export datagram.
const benchRecords = 30

// benchFields is a router-like template: the fields wormsign reads plus
// some it skips (ToS 5, direction 61, next hop 15, source and destination
// masks 9 and 13).
func benchFields(version uint16, varlen bool) []uint16 {
	counter, start, end := uint16(8), uint16(ieStartMilliseconds), uint16(ieEndMilliseconds)
	if version == 9 {
		counter, start, end = 4, ieStartSysUpTime, ieEndSysUpTime
	}
	timeLen := uint16(8)
	if version == 9 {
		timeLen = 4
	}
	fields := []uint16{
		ieSrcIPv4, 4, ieDstIPv4, 4, ieSrcPort, 2, ieDstPort, 2, ieProtocol, 1, ieTCPFlags, 1,
		ieOctetDelta, counter, iePacketDelta, counter, ieInputIf, 4, ieOutputIf, 4,
		start, timeLen, end, timeLen, 5, 1, 61, 1, 15, 4, 9, 1, 13, 1,
	}
	if varlen {
		// IPFIX applicationName (96), variable length.
		fields = append(fields, 96, variableLength)
	}
	return fields
}

// benchDatagrams returns a templates datagram and a data datagram of
// benchRecords records for version 9 or 10, with a variable-length field
// or not.
func benchDatagrams(version uint16, varlen bool) (templates, data []byte) {
	const secs = 1700000000
	fields := benchFields(version, varlen)
	templates = nfbuild.Message{Version: version, Domain: 1, UnixSecs: secs, UptimeMs: 100000,
		Sets: [][]byte{nfbuild.Set(map[uint16]uint16{9: 0, 10: 2}[version], nfbuild.Template(256, fields...))}}.Bytes()
	var recs [][]byte
	for i := range benchRecords {
		var r []byte
		for j := 0; j < len(fields); j += 2 {
			if fields[j+1] == variableLength {
				r = append(r, 4, 's', 'm', 't', 'p')
				continue
			}
			v := make([]byte, fields[j+1])
			switch fields[j] {
			case ieSrcIPv4:
				copy(v, []byte{203, 0, 113, byte(i)})
			case ieDstIPv4:
				copy(v, []byte{198, 18, byte(i), 1})
			case ieDstPort:
				binary.BigEndian.PutUint16(v, 25)
			case ieProtocol:
				v[0] = 6
			case ieStartMilliseconds, ieEndMilliseconds:
				binary.BigEndian.PutUint64(v, secs*1000-uint64(1000*i))
			case ieStartSysUpTime, ieEndSysUpTime:
				binary.BigEndian.PutUint32(v, 90000+uint32(i))
			default:
				v[len(v)-1] = byte(i + 1)
			}
			r = append(r, v...)
		}
		recs = append(recs, r)
	}
	data = nfbuild.Message{Version: version, Domain: 1, UnixSecs: secs, UptimeMs: 100000,
		Sets: [][]byte{nfbuild.Set(256, recs...)}}.Bytes()
	return templates, data
}

// BenchmarkDecodeNetFlow decodes one NetFlow v9 or IPFIX data datagram
// of a learned template over and over; ns/record is the figure to watch.
func BenchmarkDecodeNetFlow(b *testing.B) {
	for _, bc := range []struct {
		name    string
		version uint16
		varlen  bool
	}{{"v9", 9, false}, {"ipfix", 10, false}, {"ipfix-varlen", 10, true}} {
		b.Run(bc.name, func(b *testing.B) {
			templates, data := benchDatagrams(bc.version, bc.varlen)
			d := newDecoder(false)
			from := netip.MustParseAddrPort("192.0.2.1:2055")
			const now = 1700000000000
			var rep Report
			if _, err := d.DecodeReport(FamilyNetFlow, from, templates, now, nil, &rep); err != nil {
				b.Fatal(err)
			}
			out := make([]flow.Flow, 0, benchRecords)
			out, err := d.DecodeReport(FamilyNetFlow, from, data, now, out, &rep)
			if err != nil || len(out) != benchRecords {
				b.Fatalf("decoded %d flows, %v; want %d", len(out), err, benchRecords)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				out, _ = d.DecodeReport(FamilyNetFlow, from, data, now, out[:0], &rep)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchRecords), "ns/record")
		})
	}
}
