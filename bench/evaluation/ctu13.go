// Package evaluation turns labeled flow logs into the IPFIX export a router
// would have sent for them, for `wormsign replay`, whose alerts the tests
// score: per-host detections, false positives, time to detect, determinism.
package evaluation

import (
	"bufio"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/flow"
)

// Record is one row of an Argus binetflow file as a flow plus its label.
type Record struct {
	Flow  flow.Flow
	Label string
}

// ReadBinetflow reads a (gzipped when the name ends in .gz) CTU-13
// binetflow CSV: StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,
// sTos,dTos,TotPkts,TotBytes,SrcBytes,Label. Rows that are not IP flows
// (ARP, unparsable addresses) are skipped and counted.
func ReadBinetflow(path string) (recs []Record, skipped int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot open flow log: %w", err)
	}
	defer f.Close()
	var r io.Reader = bufio.NewReaderSize(f, 1<<20)
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(r)
		if err != nil {
			return nil, 0, fmt.Errorf("cannot read %s: %w", path, err)
		}
		defer gz.Close()
		r = gz
	}
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read header of %s: %w", path, err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	for _, name := range []string{"StartTime", "Dur", "Proto", "SrcAddr", "DstAddr", "Dport", "State", "TotPkts", "TotBytes", "Label"} {
		if _, ok := col[name]; !ok {
			return nil, 0, fmt.Errorf("%s: no %s column", path, name)
		}
	}
	for line := 2; ; line++ {
		row, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		rec, ok := convert(row, col)
		if !ok {
			skipped++
			continue
		}
		recs = append(recs, rec)
	}
	return recs, skipped, nil
}

var protos = map[string]uint8{"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ipv6-icmp": 58, "rtp": 17, "rtcp": 17, "udt": 17}

// argusFlags turns the source half of an Argus state ("S_RA": the
// source sent only SYN, the destination RST+ACK) into NetFlow TCP flags.
func argusFlags(state string) uint8 {
	src, _, _ := strings.Cut(state, "_")
	var f uint8
	for _, c := range src {
		switch c {
		case 'S':
			f |= flow.TCPSyn
		case 'A':
			f |= flow.TCPAck
		case 'F':
			f |= flow.TCPFin
		case 'R':
			f |= flow.TCPRst
		case 'P':
			f |= 0x08
		}
	}
	return f
}

// Exporter is the exporter address the converted flows carry.
var Exporter = netip.MustParseAddr("192.0.2.1")

func convert(row []string, col map[string]int) (Record, bool) {
	start, err := time.Parse("2006/01/02 15:04:05.999999", row[col["StartTime"]])
	if err != nil {
		return Record{}, false
	}
	dur, err := strconv.ParseFloat(row[col["Dur"]], 64)
	if err != nil {
		return Record{}, false
	}
	proto, ok := protos[row[col["Proto"]]]
	if !ok {
		return Record{}, false
	}
	src, err1 := netip.ParseAddr(row[col["SrcAddr"]])
	dst, err2 := netip.ParseAddr(row[col["DstAddr"]])
	if err1 != nil || err2 != nil {
		return Record{}, false
	}
	dport, _ := strconv.ParseUint(row[col["Dport"]], 10, 16)
	sport := uint64(0)
	if i, ok := col["Sport"]; ok {
		sport, _ = strconv.ParseUint(row[i], 0, 16)
	}
	if proto == 1 || proto == 58 {
		// Argus puts ICMP type and code in Sport ("0x0303") and the ICMP
		// id in Dport; NetFlow exporters put type<<8|code in the
		// destination port.
		dport, sport = sport, 0
	}
	pkts, _ := strconv.ParseUint(row[col["TotPkts"]], 10, 64)
	bytes, _ := strconv.ParseUint(row[col["TotBytes"]], 10, 64)
	startMs := start.UnixMilli()
	f := flow.Flow{
		TimeReceivedMs: startMs + int64(dur*1000),
		StartMs:        startMs,
		EndMs:          startMs + int64(dur*1000),
		Exporter:       Exporter,
		SrcAddr:        src.Unmap(),
		DstAddr:        dst.Unmap(),
		SrcPort:        uint16(sport),
		DstPort:        uint16(dport),
		Proto:          proto,
		Packets:        pkts,
		Bytes:          bytes,
		Type:           flow.TypeIPFIX,
	}
	if proto == flow.ProtoTCP {
		f.TCPFlags = argusFlags(row[col["State"]])
	}
	return Record{Flow: f, Label: row[col["Label"]]}, true
}

// ExportOrder sorts records as an exporter would send them: by flow end.
// The log is ordered by flow start; a flow of an hour would otherwise push
// event time an hour ahead of everything else.
func ExportOrder(recs []Record) {
	slices.SortStableFunc(recs, func(a, b Record) int {
		switch {
		case a.Flow.EndMs < b.Flow.EndMs:
			return -1
		case a.Flow.EndMs > b.Flow.EndMs:
			return 1
		}
		return 0
	})
}
