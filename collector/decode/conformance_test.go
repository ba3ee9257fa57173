package decode

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// The conformance test decodes every capture of ../shared/testdata/
// flow-captures with wormsign and with tshark, an independent decoder, and
// requires the same number of flow records datagram by datagram. Captures
// that belong together (a template file and its data files) are merged
// into one stream, templates first, and both decoders see exactly that
// stream: export datagrams only, NetFlow/IPFIX sent to port 2055 and sFlow
// to 6343 (some captures use other ports, tshark needs its decoder told).
//
// Where the two legitimately differ, the test asserts the explained
// figure, computed from tshark's own output:
//   - a data set placed before its template in the same datagram: tshark
//     decodes in order and cannot decode it; wormsign learns the
//     datagram's templates first and decodes it, so it finds
//     set bytes / record size more records (akvorado data+templates.pcap).
// Options data records (sampling rates) are not flows for either side,
// nor NAT logging records (templates with natEvent): for those, and for
// the flow records that tell a source translation, the NAT events
// wormsign reports are compared with the ones tshark's decode tells.

type captureDatagram struct {
	source string // file it came from
	from   netip.AddrPort
	ts     time.Time
	data   []byte
}

// rawExporter is the exporter of raw payload files (no pcap header).
var rawExporter = netip.MustParseAddrPort("192.0.2.10:9995")

// isExport tells export datagrams from other UDP traffic in a capture.
func isExport(p []byte) bool {
	if len(p) >= 4 && binary.BigEndian.Uint32(p) == 5 {
		return true
	}
	if len(p) >= 2 {
		switch binary.BigEndian.Uint16(p) {
		case 5, 9, 10:
			return true
		}
	}
	return false
}

// splitRaw splits a raw file of concatenated export messages.
func splitRaw(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 4 {
		n := len(b)
		switch {
		case binary.BigEndian.Uint32(b) == 5: // sFlow: one datagram
		case binary.BigEndian.Uint16(b) == 10:
			if l := int(binary.BigEndian.Uint16(b[2:])); l >= 16 && l <= len(b) {
				n = l
			}
		case binary.BigEndian.Uint16(b) == 5:
			if l := 24 + 48*int(binary.BigEndian.Uint16(b[2:])); l <= len(b) {
				n = l
			}
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func readDatagrams(t testing.TB, path string) []captureDatagram {
	t.Helper()
	var out []captureDatagram
	name := filepath.Base(path)
	switch filepath.Ext(path) {
	case ".pcap", ".pcapng":
		err := ReadCapture(path, func(d Datagram) error {
			if isExport(d.Payload) {
				out = append(out, captureDatagram{name, d.From, time.UnixMilli(d.TimeMs), bytes.Clone(d.Payload)})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	default:
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range splitRaw(raw) {
			out = append(out, captureDatagram{name, rawExporter, time.Unix(1700000000, int64(i)*1e6), p})
		}
	}
	return out
}

// groupOf names the scenario a capture file belongs to: its origin file
// name without the template/data part.
func groupOf(dir, file string) string {
	base := strings.TrimSuffix(file, filepath.Ext(file))
	if i := strings.Index(base, "__traffic-"); i > 0 {
		base = base[:i] // pmacct: traffic-00, -01... of one test
	}
	if i := strings.LastIndex(base, "__"); i >= 0 {
		base = base[i+2:]
	}
	for _, sep := range []string{"_tpldata", "_tplopt", "_opttpl", "_tpl", "_data", "-options-", "-templates", "-template", "-data"} {
		if i := strings.Index(base, sep); i > 0 {
			base = base[:i]
		}
	}
	if base == "template" || base == "data" {
		base = "template+data"
	}
	return dir + "/" + base
}

func isTemplateFile(name string) bool {
	n := strings.ToLower(name)
	return strings.Contains(n, "tpl") || strings.Contains(n, "template")
}

// writePcap writes the datagrams as Ethernet/IP/UDP packets to the
// collector's ports.
func writePcap(t *testing.T, path string, dgs []captureDatagram) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, d := range dgs {
		port := layers.UDPPort(2055)
		if Family(d.data) == FamilySFlow {
			port = 6343
		}
		udp := &layers.UDP{SrcPort: layers.UDPPort(d.from.Port()), DstPort: port}
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
		var ip gopacket.SerializableLayer
		if src := d.from.Addr(); src.Is4() || src.Is4In6() {
			eth.EthernetType = layers.EthernetTypeIPv4
			ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
				SrcIP: src.Unmap().AsSlice(), DstIP: net.IPv4(127, 0, 0, 1).To4()}
			udp.SetNetworkLayerForChecksum(ip4)
			ip = ip4
		} else {
			eth.EthernetType = layers.EthernetTypeIPv6
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
				SrcIP: src.AsSlice(), DstIP: net.IPv6loopback}
			udp.SetNetworkLayerForChecksum(ip6)
			ip = ip6
		}
		buf := gopacket.NewSerializeBuffer()
		opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
		if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(d.data)); err != nil {
			t.Fatal(err)
		}
		ci := gopacket.CaptureInfo{Timestamp: d.ts, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}
		if err := w.WritePacket(ci, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
}

// tsharkFrame is what tshark decoded in one datagram.
type tsharkFrame struct {
	flows     int // flow records (NetFlow v5 pdus, v9/IPFIX data records, sFlow flow samples)
	options   int // options data records
	explained int // difference to wormsign for a documented reason
	packets   []tsharkPacket
	// nat is the NAT events of the frame's records, TimeMs 0 where the
	// time is not compared; natSkipped its NAT logging records without
	// both addresses.
	nat        []NATEvent
	natSkipped int
}

var (
	reFrame    = regexp.MustCompile(`^Frame (\d+):`)
	reIP       = regexp.MustCompile(`^Internet Protocol Version [46], Src: ([^,]+),`)
	reUDP      = regexp.MustCompile(`^User Datagram Protocol, Src Port: (\d+),`)
	reDomain   = regexp.MustCompile(`^    (?:SourceId|Observation Domain Id): (\d+)`)
	reV5Count  = regexp.MustCompile(`^    Count: (\d+)`)
	reVersion  = regexp.MustCompile(`^    Version: (\d+)`)
	reFlowSet  = regexp.MustCompile(`^    (?:FlowSet|Set) \d+ \[id=(\d+)\](.*)$`)
	reSetLen   = regexp.MustCompile(`^        (?:FlowSet|Set) Length: (\d+)`)
	reRecord   = regexp.MustCompile(`^        Flow \d+(?: \(.*\))?$`)
	reNoTmpl   = regexp.MustCompile(`^ {8,}\[?Data \(\d+ bytes\), no template found`)
	reTemplate = regexp.MustCompile(`^        Template \(Id = (\d+), Count = (\d+)\)`)
	reFieldLen = regexp.MustCompile(`^ {16}Length: (\d+)`)
	rePDU      = regexp.MustCompile(`^    pdu \d+/\d+`)
	reSFlow    = regexp.MustCompile(`^    (?:Expanded flow|Flow) sample, seq`)
	// A template field's type, IANA unless the field's PEN line says
	// otherwise (IPFIX shows the type's bits before it).
	reFieldType      = regexp.MustCompile(`^ {16}(?:[.01 ]+ = )?Type: .*\((\d+)\)$`)
	reFieldPEN       = regexp.MustCompile(`^ {16}1[.01 ]+ = Pen provided: Yes`)
	reTrailingNumber = regexp.MustCompile(`\((\d+)\)$`)
	// The record fields that make a NAT event; tshark names 8 and 27
	// both SrcAddr, and shows enumerations as "UDP (17)".
	reNATField = regexp.MustCompile(`^ {12}(SrcAddr|SrcPort|Protocol|Post NAT Source IPv[46] Address|Post NAPT Source Transport Port|Nat Event|Ingress VRFID|Observation Time Milliseconds|Port Range (?:Start|End|Step Size|Num Ports)): (.+)$`)
)

// runTshark decodes the capture and returns per-frame counts.
func runTshark(t *testing.T, path string, dgs []captureDatagram) []tsharkFrame {
	t.Helper()
	tshark := testenv.Tool(t, "tshark")
	cmd := exec.Command(tshark, "-r", path, "-V", "-d", "udp.port==2055,cflow", "-d", "udp.port==6343,sflow")
	cmd.Env = append(os.Environ(), "TZ=UTC") // absolute times, parsed below
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	var frames []tsharkFrame
	optionsTemplates := map[string]bool{} // exporter/domain/id, learned in order
	natTemplates := map[string]bool{}     // with natEvent: NAT logging, not flows
	postNATTemplates := map[string]bool{} // with a post-NAT source address
	var cur *tsharkFrame
	var src, port, domain, version string
	v5Count, pdus := 0, 0
	// The data set being read: its ID, bytes, records, template found.
	type dataSet struct {
		id             string
		bytes, records int
		noTemplate     bool
	}
	var set *dataSet
	var missing []dataSet     // data sets of this frame tshark had no template for
	sizes := map[string]int{} // record size of the templates tshark learned, by key
	setsShown := 0            // sets tshark showed in this frame
	var tmplID string
	var tmplLeft int
	var penField bool            // the template field being read has a PEN
	var natRec map[string]string // NAT fields of the record being read
	var natRecLogging bool       // ... of a NAT logging template
	key := func(tid string) string { return src + "/" + port + "/" + domain + "/" + tid }
	endRecord := func() {
		if natRec != nil {
			if e, ok := tsharkNAT(natRec, natRecLogging); ok {
				cur.nat = append(cur.nat, e)
			} else if natRecLogging {
				cur.natSkipped++
			}
		}
		natRec = nil
	}
	endSet := func() {
		endRecord()
		if set == nil {
			return
		}
		switch {
		case optionsTemplates[key(set.id)]:
			cur.options += set.records
		case natTemplates[key(set.id)]:
			// NAT logging: compared as NAT events, record by record
		default:
			cur.flows += set.records
		}
		if set.noTemplate {
			missing = append(missing, *set)
		}
		set = nil
	}
	endFrame := func() {
		if cur == nil {
			return
		}
		endSet()
		// A data set before its template in the same datagram: wormsign
		// learns the datagram's templates first and decodes it.
		for _, m := range missing {
			if natTemplates[key(m.id)] {
				continue
			}
			if size := sizes[key(m.id)]; size > 0 {
				cur.explained += m.bytes / size
			}
		}
		// Sets tshark did not reach: it stops at the NetFlow v9 header's
		// Count (wormsign walks to the end of the datagram, as exporters
		// fill Count inconsistently) and at the first field it finds
		// malformed (e.g. an IPv4 address of 2 bytes, which wormsign
		// leaves empty). Their records are counted here from the raw
		// sets and the record sizes of the templates tshark learned.
		if version == "9" || version == "10" {
			for i, s := range rawSets(dgs[len(frames)-1].data) {
				id := key(strconv.Itoa(int(s.id)))
				if i < setsShown || s.id < 256 || optionsTemplates[id] || natTemplates[id] {
					continue
				}
				if size := sizes[id]; size > 0 {
					cur.explained += s.bytes / size
				}
			}
		}
		// A NetFlow v5 header counting more records than the datagram
		// holds: tshark decodes those present, wormsign drops the
		// datagram as truncated (it cannot tell what else is wrong).
		if version == "5" && pdus < v5Count {
			cur.explained -= pdus
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if reFrame.MatchString(line) {
			endFrame()
			frames = append(frames, tsharkFrame{})
			cur = &frames[len(frames)-1]
			missing, setsShown, tmplLeft, version, v5Count, pdus = nil, 0, 0, "", 0, 0
			continue
		}
		switch {
		case reIP.MatchString(line):
			src = reIP.FindStringSubmatch(line)[1]
		case reUDP.MatchString(line):
			port = reUDP.FindStringSubmatch(line)[1]
		case reVersion.MatchString(line):
			version = reVersion.FindStringSubmatch(line)[1]
		case reV5Count.MatchString(line):
			v5Count, _ = strconv.Atoi(reV5Count.FindStringSubmatch(line)[1])
		case reDomain.MatchString(line):
			domain = reDomain.FindStringSubmatch(line)[1]
		case rePDU.MatchString(line):
			pdus++
			cur.flows++
		case reSFlow.MatchString(line):
			cur.flows++
		case reFlowSet.MatchString(line):
			endSet()
			setsShown++
			m := reFlowSet.FindStringSubmatch(line)
			id, rest := m[1], m[2]
			switch {
			case strings.Contains(rest, "(Options Template):"):
				for _, tid := range strings.Split(strings.TrimSpace(rest[strings.Index(rest, ":")+1:]), ",") {
					optionsTemplates[key(tid)] = true
				}
			case strings.Contains(rest, "(Data Template):"):
				for _, tid := range strings.Split(strings.TrimSpace(rest[strings.Index(rest, ":")+1:]), ",") {
					delete(optionsTemplates, key(tid))
				}
			default:
				if n, _ := strconv.Atoi(id); n >= 256 {
					set = &dataSet{id: id}
				}
			}
		case set != nil && reSetLen.MatchString(line):
			set.bytes, _ = strconv.Atoi(reSetLen.FindStringSubmatch(line)[1])
			set.bytes -= 4
		case set != nil && reRecord.MatchString(line):
			set.records++
			endRecord()
			if natTemplates[key(set.id)] || postNATTemplates[key(set.id)] {
				natRec, natRecLogging = map[string]string{}, natTemplates[key(set.id)]
			}
		case natRec != nil && reNATField.MatchString(line):
			m := reNATField.FindStringSubmatch(line)
			if m[1] == "SrcAddr" && strings.Contains(m[2], ":") {
				m[1] = "SrcAddr6"
			}
			if _, ok := natRec[m[1]]; !ok {
				natRec[m[1]] = m[2] // the first: IE 7's, not 180's or 182's
			}
		case set != nil && reNoTmpl.MatchString(line):
			set.noTemplate = true
		case reTemplate.MatchString(line):
			m := reTemplate.FindStringSubmatch(line)
			tmplID = key(m[1])
			tmplLeft, _ = strconv.Atoi(m[2])
			sizes[tmplID] = 0
			delete(natTemplates, tmplID)
			delete(postNATTemplates, tmplID)
		case tmplLeft > 0 && reFieldPEN.MatchString(line):
			penField = true
		case tmplLeft > 0 && reFieldType.MatchString(line):
			switch n, _ := strconv.Atoi(reFieldType.FindStringSubmatch(line)[1]); {
			case penField:
			case n == ieNATEvent:
				natTemplates[tmplID] = true
			case n == iePostNATSrcIPv4 || n == iePostNATSrcIPv6:
				postNATTemplates[tmplID] = true
			}
		case tmplLeft > 0 && reFieldLen.MatchString(line):
			penField = false
			l, _ := strconv.Atoi(reFieldLen.FindStringSubmatch(line)[1])
			if l == 0xffff || sizes[tmplID] < 0 {
				sizes[tmplID] = -1 // variable length: no fixed size
			} else {
				sizes[tmplID] += l
			}
			tmplLeft--
		}
	}
	endFrame()
	for i, p := range tsharkPackets(out) {
		if i < len(frames) {
			frames[i].packets = p
		}
	}
	return frames
}

// tsharkPacket is what tshark tells of the packets of one record: an ICMP
// flow record of NetFlow or IPFIX, or any sFlow flow sample.
type tsharkPacket struct {
	sflow    bool
	proto    int // -1: not shown
	dstPort  int // ICMP: type<<8|code, -1 when not shown
	icmpFrom string
	tcpFlags int // sFlow TCP: the header's flags, -1 when not shown
}

var (
	// NetFlow v5 pdu and v9/IPFIX record fields; tshark shows IE 32 as
	// "ICMP Type: 0x0800" and IE 139 like 178/179, as type and code.
	reRecordField = regexp.MustCompile(`^ {8}(?: {4})?(Protocol|DstPort|ICMP Type|IPv4 ICMP Type|IPv4 ICMP Code|IPv6 ICMP Type|IPv6 ICMP Code): (?:.*\()?(0x[0-9a-f]+|\d+)\)?$`)
	// The sampled packet of an sFlow sample: its first protocol, its
	// ICMP header's type and code ("Type: 8 (Echo (ping) request)" but
	// "Type: Echo (ping) request (128)"), its TCP header's flags.
	reSampledProto = regexp.MustCompile(`^ +(?:Protocol|Next Header): .*\((\d+)\)$`)
	reSampledICMP  = regexp.MustCompile(`^ +Internet Control Message Protocol(?: v6)?$`)
	reICMPType     = regexp.MustCompile(`^ +Type: (?:(\d+) .*|.* \((\d+)\))$`)
	reICMPCode     = regexp.MustCompile(`^ +Code: (\d+)`)
	reSampledTCP   = regexp.MustCompile(`^ +Transmission Control Protocol,`)
	reTCPFlags     = regexp.MustCompile(`^ +Flags: 0x([0-9a-f]+)`)
)

// tsharkPackets reads, frame by frame, the ICMP records of NetFlow and
// IPFIX and the sFlow flow samples from tshark's -V output.
func tsharkPackets(out []byte) [][]tsharkPacket {
	var frames [][]tsharkPacket
	var cur *tsharkPacket
	// A record's ICMP elements of each family, and whether it had any.
	type icmpElements struct{ typ, code, has int }
	var icmp4, icmp6 icmpElements
	// In the sampled packet: its ICMP or TCP header, and past its first
	// L4 header (what follows, an ICMP error's quoted packet, is not it).
	var inICMP, inTCP, past bool
	end := func() {
		if cur == nil {
			return
		}
		if !cur.sflow {
			own, other := icmp4, icmp6
			if cur.proto == protoICMPv6 {
				own, other = icmp6, icmp4
			}
			switch {
			case own.has != 0:
				cur.dstPort, cur.icmpFrom = own.typ<<8|own.code, "ICMP elements"
			case other.has != 0 && other.typ<<8|other.code != 0:
				cur.dstPort, cur.icmpFrom = other.typ<<8|other.code, "ICMP elements"
			default:
				cur.icmpFrom = "destination port" // the exporter's own
			}
			if cur.proto != protoICMP && cur.proto != protoICMPv6 {
				frames[len(frames)-1] = frames[len(frames)-1][:len(frames[len(frames)-1])-1]
			}
		}
		cur, icmp4, icmp6 = nil, icmpElements{}, icmpElements{}
	}
	start := func(sflow bool) {
		end()
		f := &frames[len(frames)-1]
		*f = append(*f, tsharkPacket{sflow: sflow, proto: -1, dstPort: -1, tcpFlags: -1})
		cur = &(*f)[len(*f)-1]
		inICMP, inTCP, past = false, false, false
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case reFrame.MatchString(line):
			end()
			frames = append(frames, nil)
			continue
		case reRecord.MatchString(line), rePDU.MatchString(line):
			start(false)
			continue
		case reSFlow.MatchString(line):
			start(true)
			continue
		case strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			end() // another top-level item: a set, a counter sample
			continue
		case cur == nil:
			continue
		}
		if !cur.sflow {
			m := reRecordField.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			n, _ := strconv.ParseInt(m[2], 0, 32)
			switch m[1] {
			case "Protocol":
				cur.proto = int(n)
			case "DstPort":
				// The first is IE 11's: tshark also names udp- and
				// tcpDestinationPort (181, 183) "DstPort".
				if cur.dstPort < 0 {
					cur.dstPort = int(n)
				}
			case "ICMP Type":
				icmp4 = icmpElements{int(n) >> 8, int(n) & 0xff, 1}
			case "IPv4 ICMP Type":
				icmp4.typ, icmp4.has = int(n), 1
			case "IPv4 ICMP Code":
				icmp4.code, icmp4.has = int(n), 1
			case "IPv6 ICMP Type":
				icmp6.typ, icmp6.has = int(n), 1
			case "IPv6 ICMP Code":
				icmp6.code, icmp6.has = int(n), 1
			}
			continue
		}
		if past {
			continue
		}
		switch {
		case cur.proto < 0 && reSampledProto.MatchString(line):
			cur.proto, _ = strconv.Atoi(reSampledProto.FindStringSubmatch(line)[1])
		case reSampledICMP.MatchString(line):
			inICMP = cur.proto == protoICMP || cur.proto == protoICMPv6
			past = !inICMP
		case inICMP && reICMPType.MatchString(line):
			m := reICMPType.FindStringSubmatch(line)
			typ, _ := strconv.Atoi(m[1] + m[2])
			cur.dstPort = typ << 8
		case inICMP && cur.dstPort >= 0 && reICMPCode.MatchString(line):
			code, _ := strconv.Atoi(reICMPCode.FindStringSubmatch(line)[1])
			cur.dstPort |= code
			cur.icmpFrom, past = "ICMP header", true
		case reSampledTCP.MatchString(line):
			inTCP = cur.proto == flow.ProtoTCP
			past = !inTCP
		case inTCP && reTCPFlags.MatchString(line):
			flags, _ := strconv.ParseUint(reTCPFlags.FindStringSubmatch(line)[1], 16, 16)
			cur.tcpFlags, past = int(flags&0xff), true
		}
	}
	end()
	return frames
}

// tsharkNAT is the NAT event of a record from its fields as tshark shows
// them: of a NAT logging record when logging, else of a flow record that
// tells a source translation. Exporter is left for the caller; TimeMs is
// 0 where tshark shows no observation time (not compared).
func tsharkNAT(fields map[string]string, logging bool) (NATEvent, bool) {
	addr := func(k string) netip.Addr {
		a, _ := netip.ParseAddr(fields[k])
		return a
	}
	num := func(k string) int {
		v := fields[k]
		if m := reTrailingNumber.FindStringSubmatch(v); m != nil {
			v = m[1] // "UDP (17)"
		}
		n, _ := strconv.Atoi(v)
		return n
	}
	inside, outside := addr("SrcAddr"), addr("Post NAT Source IPv4 Address")
	if !usable(outside) {
		outside = addr("Post NAT Source IPv6 Address")
	}
	switch {
	case logging && usable(addr("SrcAddr6")):
		inside = addr("SrcAddr6")
	case !logging && !usable(inside):
		inside = addr("SrcAddr6")
	}
	if !usable(inside) || !usable(outside) || !logging && inside == outside {
		return NATEvent{}, false
	}
	outPort := uint16(num("Post NAPT Source Transport Port"))
	e := NATEvent{Event: NATTranslationCreate, Proto: uint8(num("Protocol")), VRF: uint32(num("Ingress VRFID")),
		Inside: inside, InsidePort: uint16(num("SrcPort")), Outside: outside, OutsidePort: outPort,
		PortStart: outPort, PortEnd: outPort, PortStep: 1}
	if !logging {
		return e, true
	}
	e.Event = uint8(num("Nat Event"))
	if ts, err := time.Parse("Jan _2, 2006 15:04:05.000000000 MST", fields["Observation Time Milliseconds"]); err == nil {
		e.TimeMs = ts.UnixMilli()
	}
	if _, ok := fields["Port Range Start"]; ok {
		e.PortStart = uint16(num("Port Range Start"))
		if step := num("Port Range Step Size"); step > 0 {
			e.PortStep = uint16(step)
		}
		e.PortEnd = e.PortStart
		if _, ok := fields["Port Range End"]; ok {
			e.PortEnd = uint16(num("Port Range End"))
		} else if n := num("Port Range Num Ports"); n > 0 {
			e.PortEnd = uint16(min(int(e.PortStart)+(n-1)*int(e.PortStep), 0xffff))
		}
	}
	return e, true
}

type rawSet struct {
	id    uint16
	bytes int
}

// rawSets lists the sets of a NetFlow v9 / IPFIX datagram.
func rawSets(p []byte) []rawSet {
	var out []rawSet
	if len(p) < 16 {
		return nil
	}
	off := 20
	if binary.BigEndian.Uint16(p) == 10 {
		off = 16
	}
	for off+4 <= len(p) {
		id, l := binary.BigEndian.Uint16(p[off:]), int(binary.BigEndian.Uint16(p[off+2:]))
		if l < 4 || off+l > len(p) {
			break
		}
		out = append(out, rawSet{id, l - 4})
		off += l
	}
	return out
}

func TestConformanceWithTshark(t *testing.T) {
	root := testenv.Shared(t, "testdata/flow-captures")
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string][]string{}
	for _, dir := range dirs {
		if !dir.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, dir.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasPrefix(f.Name(), ".") || strings.HasSuffix(f.Name(), ".md") || strings.HasSuffix(f.Name(), ".tsv") {
				continue
			}
			g := groupOf(dir.Name(), f.Name())
			groups[g] = append(groups[g], filepath.Join(root, dir.Name(), f.Name()))
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	var totalFiles, totalDatagrams, totalTshark, totalExplained, totalWormsign, totalNAT int
	checkedAll := map[string]int{} // packet fields compared, by kind
	var summary strings.Builder
	for _, g := range names {
		files := groups[g]
		// Templates first, then data, each in name order.
		slices.SortStableFunc(files, func(a, b string) int {
			ta, tb := isTemplateFile(filepath.Base(a)), isTemplateFile(filepath.Base(b))
			switch {
			case ta && !tb:
				return -1
			case tb && !ta:
				return 1
			}
			return strings.Compare(a, b)
		})
		var dgs []captureDatagram
		for _, f := range files {
			dgs = append(dgs, readDatagrams(t, f)...)
		}
		totalFiles += len(files)
		if len(dgs) == 0 {
			fmt.Fprintf(&summary, "%-70s %3d files, no export datagrams\n", g, len(files))
			continue
		}
		t.Run(g, func(t *testing.T) {
			dir := t.TempDir()
			if keep := os.Getenv("WORMSIGN_CONFORMANCE_KEEP"); keep != "" {
				dir = keep // to look at a failing group with tshark
			}
			path := filepath.Join(dir, strings.ReplaceAll(g, "/", "_")+".pcap")
			writePcap(t, path, dgs)
			frames := runTshark(t, path, dgs)
			if len(frames) != len(dgs) {
				t.Fatalf("tshark read %d frames, wrote %d datagrams", len(frames), len(dgs))
			}
			d := newDecoder(false)
			var sumT, sumE, sumW, sumN int
			checked := map[string]int{}
			defer func() {
				for k, n := range checked {
					checkedAll[k] += n
				}
			}()
			for i, dg := range dgs {
				var rep Report
				flows, err := d.DecodeReport(Family(dg.data), dg.from, dg.data, dg.ts.UnixMilli(), nil, &rep)
				want := frames[i].flows + frames[i].explained
				if len(flows) != want {
					t.Errorf("%s datagram %d (frame %d): wormsign decoded %d flows (err %v, report %+v); tshark %d + %d explained",
						dg.source, i, i+1, len(flows), err, rep, frames[i].flows, frames[i].explained)
				}
				checkNAT(t, fmt.Sprintf("%s datagram %d (frame %d)", dg.source, i, i+1), dg, frames[i], &rep)
				sumN += len(rep.NAT)
				sumT += frames[i].flows
				sumE += frames[i].explained
				sumW += len(flows)
				checkPackets(t, fmt.Sprintf("%s datagram %d (frame %d)", dg.source, i, i+1), frames[i], flows, checked)
			}
			totalDatagrams += len(dgs)
			totalTshark += sumT
			totalExplained += sumE
			totalWormsign += sumW
			fmt.Fprintf(&summary, "%-70s %3d files %4d datagrams: tshark %5d + explained %3d, wormsign %5d, NAT events %d\n",
				g, len(files), len(dgs), sumT, sumE, sumW, sumN)
			totalNAT += sumN
		})
	}
	t.Logf("conformance summary:\n%s", summary.String())
	t.Logf("total: %d files in %d groups, %d datagrams; tshark %d flow records + %d explained = %d; wormsign %d",
		totalFiles, len(groups), totalDatagrams, totalTshark, totalExplained, totalTshark+totalExplained, totalWormsign)
	t.Logf("packet fields compared with tshark: %v; NAT events: %d", checkedAll, totalNAT)
}

// checkNAT compares the NAT events of a datagram with tshark's decode.
func checkNAT(t *testing.T, where string, dg captureDatagram, frame tsharkFrame, rep *Report) {
	t.Helper()
	want := slices.Clone(frame.nat)
	got := slices.Clone(rep.NAT)
	for i := range want {
		want[i].Exporter = dg.from.Addr().Unmap()
		if i < len(got) && want[i].TimeMs == 0 {
			got[i].TimeMs = 0
		}
	}
	if diff := cmp.Diff(want, got, cmpAddr); diff != "" {
		t.Errorf("%s: NAT events differ from tshark's (-tshark +wormsign):\n%s", where, diff)
	}
	if rep.NATSkipped != frame.natSkipped {
		t.Errorf("%s: %d NAT records skipped, tshark shows %d without both addresses", where, rep.NATSkipped, frame.natSkipped)
	}
}

// checkPackets compares the ICMP destination ports (type<<8|code) and
// sFlow TCP flags of a datagram's flows with tshark's decode, and counts
// the comparisons by kind in checked.
func checkPackets(t *testing.T, where string, frame tsharkFrame, flows []flow.Flow, checked map[string]int) {
	t.Helper()
	var got []flow.Flow
	for _, f := range flows {
		if f.Type == flow.TypeSFlow5 || f.Proto == protoICMP || f.Proto == protoICMPv6 {
			got = append(got, f)
		}
	}
	if len(got) != len(frame.packets) {
		if frame.explained == 0 {
			t.Errorf("%s: wormsign decoded %d ICMP flows or sFlow samples, tshark %d", where, len(got), len(frame.packets))
		}
		return // data tshark could not decode: no way to pair the records
	}
	for j, p := range frame.packets {
		f := got[j]
		if p.proto >= 0 && int(f.Proto) != p.proto {
			t.Errorf("%s, record %d: protocol %d, tshark %d", where, j, f.Proto, p.proto)
			continue
		}
		if (p.proto == protoICMP || p.proto == protoICMPv6) && p.dstPort >= 0 {
			checked[fmt.Sprintf("%s ICMP from %s", f.Type, p.icmpFrom)]++
			if int(f.DstPort) != p.dstPort {
				t.Errorf("%s, record %d: ICMP destination port %#04x, tshark %#04x (%s)", where, j, f.DstPort, p.dstPort, p.icmpFrom)
			}
		}
		if p.proto == flow.ProtoTCP && p.tcpFlags >= 0 {
			checked[fmt.Sprintf("%s TCP flags", f.Type)]++
			if int(f.TCPFlags) != p.tcpFlags {
				t.Errorf("%s, record %d: TCP flags %#02x, tshark %#02x", where, j, f.TCPFlags, p.tcpFlags)
			}
		}
	}
}
