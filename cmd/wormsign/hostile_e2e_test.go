package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/containment"
	"github.com/wormsign/wormsign/internal/testenv"
)

// TestHostileOutsider: a hostile outsider on the internet side, through
// the real `wormsign run` with containment on (grace 0), softflowd
// exporting NetFlow v9 from the lab's router. An outsider can make any
// subscriber's kernel answer: forged packets to four innocent subscribers
// make their answers look like spam, dark-space scans and reflection.
// None of them may get an alert or a block entry. In the same run the
// real culprits must be found, busy but ordinary exchanges must pass, and
// an IPv6 host that changes its address within its /64 is one subscriber:
//
//   - framed: F1 answers 40 spoofed bare ACKs from port 25 with RSTs to
//     port 25; F2 answers 6 SYNs and 6 echo requests from dark addresses;
//     F3 answers a SYN flood from 60 addresses (half of them from port 25)
//     on an open and a closed port; F4's UDP echo service answers 10 dark
//     and 40 other addresses;
//   - culprits: a spam zombie (smtp_fanout, blocked), a dark-space scanner
//     (darknet), an ICMP echo flood at 400 pps and a UDP flood at 400 pps
//     from one source port nobody answers, both for 72 s (outbound_flood);
//   - exchanges not flagged: a UDP call at 300 pps each way and a 30 MB
//     upload, both for 72 s;
//   - IPv6: one host scans TCP/25 of 34 addresses, half from each of two
//     addresses in its /64: one smtp_fanout incident for the /64.
func TestHostileOutsider(t *testing.T) {
	lab := testenv.NewLab(t, 10, 50)
	v6 := lab.EnableIPv6(t, 2, 34)
	f1, f2, f3, f4 := lab.Subscribers[0], lab.Subscribers[1], lab.Subscribers[2], lab.Subscribers[3]
	zombie, scanner, icmpFlooder, udpFlooder := lab.Subscribers[4], lab.Subscribers[5], lab.Subscribers[6], lab.Subscribers[7]
	caller, uploader := lab.Subscribers[8], lab.Subscribers[9]
	icmpVictim, udpVictim, callee, uploadSink := lab.Servers[40], lab.Servers[41], lab.Servers[42], lab.Servers[43]
	v6Host := v6.SubscriberNet.String()
	// The outsider forges addresses of the lab's internet /24 that nobody
	// holds (so routing and rp_filter let them through and the answers go
	// nowhere), and addresses of its dark /28 (the top one, as in
	// bench/evaluation; .255 would be the broadcast address).
	b := lab.Servers[0].As4()
	inet := func(host int) netip.Addr { return netip.AddrFrom4([4]byte{b[0], b[1], b[2], byte(host)}) }
	dark := netip.PrefixFrom(inet(240), 28)
	var outsiders, darkAddrs []netip.Addr
	for i := range 60 {
		outsiders = append(outsiders, inet(100+i))
	}
	for i := range 12 {
		darkAddrs = append(darkAddrs, inet(240+i))
	}
	roles := map[string]string{
		f1.String():                "framed F1 (RSTs to port 25)",
		f2.String():                "framed F2 (answers to dark space)",
		f3.String():                "framed F3 (answers to a SYN flood)",
		f4.String():                "framed F4 (UDP echo answers)",
		zombie.String():            "spam zombie",
		scanner.String():           "dark-space scanner",
		icmpFlooder.String():       "ICMP flooder",
		udpFlooder.String():        "UDP flooder",
		caller.String():            "UDP call",
		uploader.String():          "TCP upload",
		v6Host:                     "IPv6 host's /64",
		v6.Subscribers[0].String(): "IPv6 host's first address alone",
		v6.Subscribers[1].String(): "IPv6 host's second address alone",
	}
	culprit := map[string]bool{zombie.String(): true, scanner.String(): true, icmpFlooder.String(): true,
		udpFlooder.String(): true, v6Host: true}

	port := testenv.FreeUDPPort(t)
	api := freeTCPAddr(t)
	p := startWormsign(t, append(labEnv(port),
		// Replaces labEnv's value: of a repeated variable the last wins.
		"WORMSIGN_SUBSCRIBER_NETWORKS=203.0.113.0/24,"+v6.SubscriberNet.String(),
		"WORMSIGN_DETECTOR_DARKNET_NETWORKS="+dark.String(),
		"WORMSIGN_HTTP_LISTEN="+api,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
	), "run")
	waitLog(t, p, "wormsign started")
	alerts := readAlerts(t, p)

	lab.StartSMTPServers(t, lab.Servers[:30])
	lab.StartTCPSink(t, lab.Subscriber, f3, 8080) // F3's open port; 8081 is closed
	lab.StartUDPEcho(t, lab.Subscriber, f4, 7)
	lab.StartTCPSink(t, lab.Internet, uploadSink, 5001)
	capture := lab.CaptureRouter(t, fmt.Sprintf("host %s or host %s or host %s or host %s", f1, f2, f3, f4))
	sf := lab.StartSoftflowd(t, 9, port)

	// The floods, the call and the upload run while the rest happens.
	const long = 72 * time.Second
	ap := netip.AddrPortFrom
	icmpFlood := lab.StartICMPFlood(t, icmpFlooder, icmpVictim, 400, long)
	udpSink := lab.StartUDPStream(t, lab.Internet, ap(udpVictim, 9), netip.AddrPort{}, 0, long+3*time.Second)
	udpFlood := lab.StartUDPStream(t, lab.Subscriber, ap(udpFlooder, 40000), ap(udpVictim, 9), 400, long)
	// The subscriber calls first, the other end answers from its port.
	callOut := lab.StartUDPStream(t, lab.Subscriber, ap(caller, 40002), ap(callee, 5004), 300, long)
	callIn := lab.StartUDPStream(t, lab.Internet, ap(callee, 5004), ap(caller, 40002), 300, long)
	upload := lab.StartTCPUpload(t, uploader, ap(uploadSink, 5001), 30<<20, long)

	// 1. The framed subscribers.
	var forged []testenv.Packet
	tcp := func(src netip.Addr, sport int, dst netip.Addr, dport int, flags uint8) testenv.Packet {
		return testenv.Packet{Proto: "tcp", Src: src, SrcPort: uint16(sport), Dst: dst, DstPort: uint16(dport), Flags: flags}
	}
	for _, a := range outsiders[:40] {
		forged = append(forged, tcp(a, 25, f1, 40001, testenv.TCPAck))
	}
	for i, a := range darkAddrs[:6] {
		forged = append(forged, tcp(a, 40000+i, f2, 445, testenv.TCPSyn))
	}
	for i, a := range darkAddrs[6:12] {
		forged = append(forged, testenv.Packet{Proto: "icmp", Src: a, Dst: f2, SrcPort: uint16(1 + i)})
	}
	for i, a := range outsiders {
		sport := 41000 + i
		if i < 30 {
			sport = 25
		}
		forged = append(forged, tcp(a, sport, f3, 8080, testenv.TCPSyn), tcp(a, 42000+i, f3, 8081, testenv.TCPSyn),
			tcp(a, 43000+i, f3, 8080, testenv.TCPSyn))
	}
	for i, a := range darkAddrs[:10] {
		forged = append(forged, testenv.Packet{Proto: "udp", Src: a, SrcPort: uint16(44000 + i), Dst: f4, DstPort: 7})
	}
	for _, a := range outsiders[:40] {
		forged = append(forged, testenv.Packet{Proto: "udp", Src: a, SrcPort: 45000, Dst: f4, DstPort: 7})
	}
	if n := lab.Spoof(t, forged); n != len(forged) {
		t.Fatalf("spoofer sent %d of %d packets", n, len(forged))
	}

	// 2. The culprits that are not floods, and the IPv6 host.
	zombieTargets := append(slices.Clone(lab.Servers[30:40]), lab.Servers[:30]...)
	if n := lab.SMTPSessions(t, zombie, zombieTargets); n != 30 {
		t.Fatalf("zombie had %d SMTP sessions answered, want 30", n)
	}
	if n := lab.TCPScan(t, scanner, append(slices.Clone(darkAddrs[:8]), lab.Servers[30:40]...), 445, 300*time.Millisecond); n != 10 {
		t.Fatalf("scanner had %d of its 10 live targets answer, want 10", n)
	}
	half := len(v6.Servers) / 2
	for i, targets := range [][]netip.Addr{v6.Servers[:half], v6.Servers[half:]} {
		if n := lab.TCPScan(t, v6.Subscribers[i], targets, 25, time.Second); n != len(targets) {
			t.Fatalf("IPv6 scan from %s: %d of %d targets answered", v6.Subscribers[i], n, len(targets))
		}
	}

	// 3. The long runs end.
	t.Logf("sent: %d forged packets; zombie 40 SMTP attempts; scanner 8 dark + 10 live; IPv6 %d + %d TCP/25 from %s and %s",
		len(forged), half, len(v6.Servers)-half, v6.Subscribers[0], v6.Subscribers[1])
	t.Logf("sent: ICMP flood %s; UDP flood %s, its target %s", icmpFlood.Wait(t), udpFlood.Wait(t), udpSink.Wait(t))
	out, in := callOut.Wait(t), callIn.Wait(t)
	t.Logf("sent: call out %s, in %s; upload %s", out, in, upload.Wait(t))
	var outSent, outGot, inSent, inGot int
	fmt.Sscanf(out, "sent %d received %d", &outSent, &outGot)
	fmt.Sscanf(in, "sent %d received %d", &inSent, &inGot)
	if outSent < 20000 || inSent < 20000 || outGot < inSent*9/10 || inGot < outSent*9/10 {
		t.Errorf("the call lost packets: out %q, in %q", out, in)
	}
	sf.ExpireAll(t)

	// The forged packets reached the subscribers and were answered.
	for _, c := range []struct {
		filter string
		min    int
	}{
		{fmt.Sprintf("ip.src==%s && tcp.flags.reset==1 && tcp.dstport==25", f1), 40},
		{fmt.Sprintf("ip.src==%s && tcp.flags.reset==1 && tcp.flags.ack==1", f2), 6},
		{fmt.Sprintf("ip.src==%s && icmp.type==0", f2), 6},
		{fmt.Sprintf("ip.src==%s && tcp.flags.syn==1 && tcp.flags.ack==1 && tcp.dstport==25", f3), 30},
		{fmt.Sprintf("ip.src==%s && tcp.flags.reset==1", f3), 60},
		{fmt.Sprintf("ip.src==%s && udp.srcport==7", f4), 50},
	} {
		n := capture.Count(t, c.filter)
		t.Logf("answers on the router: %d × %s", n, c.filter)
		if n < c.min {
			t.Errorf("%d packets match %s, want at least %d: the framing did not happen", n, c.filter, c.min)
		}
	}

	// Wait for every culprit's incident, then a little for anything else.
	kind := func(k string) func(alert.Alert) bool { return func(a alert.Alert) bool { return a.Kind == k } }
	want := []struct {
		what, ip string
		match    func(alert.Alert) bool
	}{
		{"smtp_fanout", zombie.String(), kind(alert.KindSMTPFanout)},
		{"darknet", scanner.String(), kind(alert.KindDarknet)},
		{"outbound_flood icmp", icmpFlooder.String(), func(a alert.Alert) bool { return isFlood(a, "icmp", icmpVictim) }},
		{"outbound_flood udp", udpFlooder.String(), func(a alert.Alert) bool { return isFlood(a, "udp", udpVictim) }},
		{"smtp_fanout", v6Host, kind(alert.KindSMTPFanout)},
	}
	found := make([]bool, len(want))
	var all []alert.Alert
	deadline := time.After(60 * time.Second)
	for slices.Contains(found, false) {
		var a alert.Alert
		select {
		case a = <-alerts:
		case <-deadline:
		}
		if a.ID == "" {
			break
		}
		all = append(all, a)
		for i, w := range want {
			found[i] = found[i] || a.State == alert.StateOpen && a.SubscriberIP == w.ip && w.match(a)
		}
	}
	time.Sleep(3 * time.Second)
	list := readBlocklist(t, api)
	// A culprit missed because its flows came too late would be the
	// lab's fault, not the detector's.
	if late := lateFlows(t, api); late != 0 {
		t.Errorf("the detector dropped %v late flows: the culprits' verdicts below are not to be trusted", late)
	}
	p.stop(t)
	for a := range alerts {
		all = append(all, a)
	}

	for _, a := range all {
		t.Logf("flagged: %s %s %s (%s) id=%s trigger=%s dsts=%d flood=%+v", a.State, a.Kind, a.SubscriberIP,
			roles[a.SubscriberIP], a.ID, a.Evidence.Trigger, a.DistinctDsts, a.Evidence.Flood)
		if !culprit[a.SubscriberIP] {
			t.Errorf("%s alert for %s (%s): only the culprits may be flagged", a.Kind, a.SubscriberIP, role(roles, a.SubscriberIP))
		}
	}
	for i, w := range want {
		if !found[i] {
			t.Errorf("no open %s alert for %s (%s)", w.what, w.ip, roles[w.ip])
		}
	}
	ids := map[string]bool{}
	for _, a := range all {
		if a.SubscriberIP == v6Host && a.Kind == alert.KindSMTPFanout {
			ids[a.ID] = true
		}
	}
	if len(ids) != 1 {
		t.Errorf("IPv6 host %s: %d smtp_fanout incidents, want 1", v6Host, len(ids))
	}

	blocked := map[string]containment.JSONEntry{}
	for _, e := range append(list.Entries, list.Waiting...) {
		t.Logf("block list: %s %s %s (%s) %s", e.IP, e.State, e.Action, role(roles, e.IP), e.Kind)
		blocked[e.IP] = e
		if !culprit[e.IP] {
			t.Errorf("block list entry %s %s for %s (%s): only culprits may be contained", e.State, e.Action, e.IP, role(roles, e.IP))
		}
	}
	if e, ok := blocked[zombie.String()]; !ok || e.State != "active" || e.Action != "block_smtp" {
		t.Errorf("zombie %s on the block list: %+v, want an active block_smtp entry", zombie, e)
	}
	if _, ok := blocked[v6Host]; !ok {
		t.Errorf("IPv6 host %s is not on the block list as its prefix", v6Host)
	}
}

// isFlood tells an outbound_flood alert of the kind of traffic toward
// target.
func isFlood(a alert.Alert, traffic string, target netip.Addr) bool {
	f := a.Evidence.Flood
	return a.Kind == alert.KindOutboundFlood && f != nil && f.Traffic == traffic && f.Target == target.String()
}

func role(roles map[string]string, ip string) string {
	if r, ok := roles[ip]; ok {
		return r
	}
	return "not in the scenario"
}

// readAlerts delivers the alerts wormsign prints, until its stdout closes.
func readAlerts(t *testing.T, p *process) <-chan alert.Alert {
	ch := make(chan alert.Alert, 1024)
	go func() {
		defer close(ch)
		for p.stdout.Scan() {
			a, err := alert.Unmarshal(p.stdout.Bytes())
			if err != nil {
				t.Errorf("stdout line is not an alert: %q: %v", p.stdout.Text(), err)
				continue
			}
			ch <- a
		}
	}()
	return ch
}

// readBlocklist reads the block list through the API.
func readBlocklist(t *testing.T, api string) containment.JSONList {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+api+"/api/v1/blocklist?format=json", nil)
	req.Header.Set("Authorization", "Bearer lab-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list containment.JSONList
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blocklist: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("block list: %v", err)
	}
	return list
}

// lateFlows sums wormsign_detector_late_flows_total on the /metrics page.
func lateFlows(t *testing.T, api string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), " ")
		if strings.HasPrefix(name, "wormsign_detector_late_flows_total") {
			v, _ := strconv.ParseFloat(value, 64)
			sum += v
		}
	}
	return sum
}

// freeTCPAddr returns a loopback address with a TCP port nothing listens
// on now, for wormsign's API.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
