package evaluation

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/wormsign/wormsign/flow"
)

// ReadZeekConn reads a Zeek conn.log in JSON lines as the flows the
// originator sent: packets and IP bytes of the originator, TCP flags from
// the originator's (upper-case) letters of the history, ICMP type and code
// (Zeek's id.orig_p and id.resp_p) in the destination port as NetFlow
// exporters write them.
func ReadZeekConn(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open conn.log: %w", err)
	}
	defer f.Close()
	var recs []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		var c struct {
			TS       float64 `json:"ts"`
			Orig     string  `json:"id.orig_h"`
			OrigPort uint16  `json:"id.orig_p"`
			Resp     string  `json:"id.resp_h"`
			RespPort uint16  `json:"id.resp_p"`
			Proto    string  `json:"proto"`
			Duration float64 `json:"duration"`
			History  string  `json:"history"`
			Pkts     uint64  `json:"orig_pkts"`
			IPBytes  uint64  `json:"orig_ip_bytes"`
		}
		if strings.HasPrefix(sc.Text(), "#") || strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		src, err1 := netip.ParseAddr(c.Orig)
		dst, err2 := netip.ParseAddr(c.Resp)
		proto, ok := protos[c.Proto]
		if err1 != nil || err2 != nil || !ok {
			continue
		}
		startMs := int64(math.Round(c.TS * 1000))
		endMs := startMs + int64(c.Duration*1000)
		r := flow.Flow{TimeReceivedMs: endMs, StartMs: startMs, EndMs: endMs, Exporter: Exporter, Type: flow.TypeIPFIX,
			SrcAddr: src.Unmap(), DstAddr: dst.Unmap(), SrcPort: c.OrigPort, DstPort: c.RespPort, Proto: proto,
			Packets: max(c.Pkts, 1), Bytes: c.IPBytes}
		switch proto {
		case 1, 58:
			r.SrcPort, r.DstPort = 0, c.OrigPort<<8|c.RespPort&0xff
		case flow.ProtoTCP:
			for _, h := range c.History {
				switch h {
				case 'S':
					r.TCPFlags |= flow.TCPSyn
				case 'A', 'D':
					r.TCPFlags |= flow.TCPAck
				case 'F':
					r.TCPFlags |= flow.TCPFin
				case 'R':
					r.TCPFlags |= flow.TCPRst
				}
			}
		}
		recs = append(recs, Record{Flow: r})
	}
	return recs, sc.Err()
}

// ReadPacketFlows reads a packet capture (pcap) and makes the flows a
// router would export of it: IPv4 packets grouped by source, destination,
// protocol, ports (ICMP: type<<8|code as the destination port), flags
// OR-ed, one flow per key for the whole (short) capture.
func ReadPacketFlows(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open capture: %w", err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	type key struct {
		src, dst     netip.Addr
		proto        uint8
		sport, dport uint16
	}
	flows := map[key]*flow.Flow{}
	var order []key
	src := gopacket.NewPacketSource(r, r.LinkType())
	for p := range src.Packets() {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			continue
		}
		s, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		d, _ := netip.AddrFromSlice(ip.DstIP.To4())
		k := key{src: s, dst: d, proto: uint8(ip.Protocol)}
		var flags uint8
		switch l := p.TransportLayer().(type) {
		case *layers.TCP:
			k.sport, k.dport = uint16(l.SrcPort), uint16(l.DstPort)
			if l.SYN {
				flags |= flow.TCPSyn
			}
			if l.ACK {
				flags |= flow.TCPAck
			}
			if l.FIN {
				flags |= flow.TCPFin
			}
			if l.RST {
				flags |= flow.TCPRst
			}
		case *layers.UDP:
			k.sport, k.dport = uint16(l.SrcPort), uint16(l.DstPort)
		}
		if icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
			k.dport = uint16(icmp.TypeCode)
		}
		ms := p.Metadata().Timestamp.UnixMilli()
		fl := flows[k]
		if fl == nil {
			fl = &flow.Flow{StartMs: ms, Exporter: Exporter, Type: flow.TypeIPFIX, SrcAddr: k.src, DstAddr: k.dst,
				Proto: k.proto, SrcPort: k.sport, DstPort: k.dport}
			flows[k] = fl
			order = append(order, k)
		}
		fl.EndMs, fl.TimeReceivedMs = ms, ms
		fl.Packets++
		fl.Bytes += uint64(ip.Length)
		fl.TCPFlags |= flags
	}
	recs := make([]Record, len(order))
	for i, k := range order {
		recs[i] = Record{Flow: *flows[k]}
	}
	return recs, nil
}
