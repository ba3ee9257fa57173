package console

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/network"
)

// kindAlert is an open incident of kind with the evidence the detector
// gives that kind; n varies its figures.
func kindAlert(kind, id, ip string, score float64, now time.Time, n int) alert.Alert {
	end := now.Truncate(time.Minute)
	a := alert.Alert{ID: id, Kind: kind, State: alert.StateOpen, SubscriberIP: ip,
		WindowStart: end.Add(-10 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-time.Duration(3+n%7) * time.Minute), LastSeen: end.Add(-20 * time.Second),
		Score: score, Exporter: "192.0.2.1", Evidence: alert.Evidence{Window: "10m0s"}}
	ev := &a.Evidence
	switch kind {
	case alert.KindSMTPFanout:
		a.WindowStart, ev.Window = end.Add(-5*time.Minute), "5m0s"
		a.DistinctDsts, a.Flows = uint64(412+n), uint64(520+n)
		ev.SampleDsts = []string{"198.18.3.17", "198.18.9.2", "198.18.44.120"}
		ev.FailedAttempts, ev.CompletedAttempts, ev.FailedShare = 442, 78, 0.85
		ev.Threshold, ev.DistinctDsts60m, ev.Trigger = 25, 1290, "sequential"
		ev.Sequential = &alert.Sequential{Decision: "infected", Odds: 1.2e6, Bound: 99, FirstContacts: 14, FirstFailed: 13}
	case alert.KindDstEntropy:
		a.DistinctDsts, a.Flows = uint64(950+n), 1020
		ev.SampleDsts = []string{"198.18.7.1", "198.18.7.2"}
		ev.Trigger = "worm_pattern"
		ev.Entropy = &alert.Entropy{DstAddr: 0.97, DstPort: 0.04, DistinctPorts: 2, TopPort: 445, TopPortShare: 0.98,
			BaselineDstAddr: 0.31, BaselineDstPort: 0.42, BaselineSteps: 1440}
	case alert.KindDarknet:
		a.DistinctDsts, a.Flows = uint64(37+n), 64
		ev.SampleDsts = []string{"198.18.255.1", "198.18.255.9", "198.18.255.77"}
		ev.Threshold, ev.Trigger = 3, "min_dsts"
		ev.Darknet = &alert.Darknet{Ports: []uint16{23, 445, 2323}, Protocols: []string{"tcp", "udp"}, FirstContact: end.Add(-8 * time.Minute)}
	case alert.KindRelayAbuse:
		a.DistinctDsts, a.Flows = 2, uint64(1240+n)
		ev.SampleDsts = []string{"192.0.2.25", "192.0.2.26"}
		ev.Threshold, ev.Trigger = 100, "max_connections"
		ev.Relay = &alert.Relay{Connections: uint64(1240 + n), Bytes: 48_200_000, Relays: ev.SampleDsts, Ports: []uint16{587},
			BaselineConnections: 12.4, BaselineStdDev: 4.1, BaselineSteps: 2880}
	case alert.KindOutboundFlood:
		a.WindowStart, ev.Window = end.Add(-5*time.Minute), "5m0s"
		a.DistinctDsts, a.Flows = 1, 300
		ev.SampleDsts = []string{"198.51.100.9"}
		ev.Trigger = "max_pps"
		ev.Flood = &alert.Flood{Target: "198.51.100.9", Protocol: "udp", Traffic: "udp", Ports: []uint16{80},
			PPS: 84213.4 + float64(n), BPS: 512e6, FlowsPerMinute: 60, Seconds: 240, Packets: 20_211_216, Bytes: 15_360_000_000,
			AnswerPackets: 0, AnswerRatio: 0, BaselinePPS: 35.2, BaselineSteps: 1440}
	}
	return a
}

// boardAlerts are 55 open incidents: one of each kind ahead of the others
// (with the identity evidence of their customers, one of whom moved
// within the window), then 50 more of the five kinds in turn.
func boardAlerts(now time.Time) []alert.Alert {
	smtp := kindAlert(alert.KindSMTPFanout, "smtp-1", "203.0.113.10", 16.5, now, 0)
	smtp.SubscriberID = "cust-10"
	smtp.Evidence.Identity = &alert.Identity{Customer: "cust-10", Source: "radius", Session: "acct-10", Since: now.Add(-3 * time.Hour).Truncate(time.Second),
		Addresses: []alert.IdentityAddress{{Address: "203.0.113.10", FirstSeen: now.Add(-9 * time.Minute).Truncate(time.Second), LastSeen: now.Add(-time.Minute).Truncate(time.Second)}}}
	ent := kindAlert(alert.KindDstEntropy, "ent-1", "203.0.113.20", 8.2, now, 0)
	ent.SubscriberID = "cust-20"
	ent.Evidence.Identity = &alert.Identity{Customer: "cust-20", Source: "dhcp", Session: "01:00:11:22:33:44:20",
		Addresses: []alert.IdentityAddress{{Address: "203.0.113.20", FirstSeen: now.Add(-9 * time.Minute).Truncate(time.Second), LastSeen: now.Truncate(time.Second)}}}
	dark := kindAlert(alert.KindDarknet, "dark-1", "203.0.113.31", 12.3, now, 0)
	dark.SubscriberID = "cust-30"
	dark.Evidence.Identity = &alert.Identity{Customer: "cust-30", Source: "radius", Session: "acct-31", Since: now.Add(-6 * time.Minute).Truncate(time.Second), Changed: true,
		Addresses: []alert.IdentityAddress{
			{Address: "203.0.113.30", FirstSeen: now.Add(-9 * time.Minute).Truncate(time.Second), LastSeen: now.Add(-7 * time.Minute).Truncate(time.Second)},
			{Address: "203.0.113.31", FirstSeen: now.Add(-6 * time.Minute).Truncate(time.Second), LastSeen: now.Add(-time.Minute).Truncate(time.Second)}}}
	relay := kindAlert(alert.KindRelayAbuse, "relay-1", "203.0.113.40", 12.4, now, 0)
	relay.SubscriberID = "cust-40"
	relay.Evidence.Identity = &alert.Identity{Customer: "cust-40", Source: "radius", Session: "acct-40", Since: now.Add(-26 * time.Hour).Truncate(time.Second),
		Addresses: []alert.IdentityAddress{{Address: "203.0.113.40", FirstSeen: now.Add(-10 * time.Minute).Truncate(time.Second), LastSeen: now.Truncate(time.Second)}}}
	flood := kindAlert(alert.KindOutboundFlood, "flood-1", "203.0.113.50", 10.5, now, 0)
	out := []alert.Alert{smtp, ent, dark, relay, flood}
	for i := 0; i < 50; i++ {
		kind := alert.Kinds[i%len(alert.Kinds)]
		out = append(out, kindAlert(kind, fmt.Sprintf("more-%02d", i), fmt.Sprintf("203.0.113.%d", 100+i), 5-float64(i)*0.05, now, i))
	}
	return out
}

// boardFlows is a day of traffic: the flooder's web browsing, following
// the day, then 20 minutes of UDP toward one target, sampled 1:100; a few
// ordinary subscribers; the spammer's and the relay abuser's last half
// hour.
func boardFlows(now time.Time) []flow.Flow {
	var out []flow.Flow
	add := func(at time.Time, src, dst string, proto uint8, port uint16, bytes, packets uint64, sampling uint32) {
		out = append(out, flow.Flow{EndMs: at.UnixMilli(), Proto: proto, DstPort: port, Bytes: bytes, Packets: packets, SamplingRate: sampling,
			SrcAddr: mustAddr(src), DstAddr: mustAddr(dst)})
	}
	start := now.Add(-23 * time.Hour).Truncate(time.Minute)
	for m := 0; m < 23*60; m++ {
		at := start.Add(time.Duration(m) * time.Minute)
		day := 0.5 - 0.5*math.Cos(2*math.Pi*float64(at.Hour()*60+at.Minute())/1440) // 0 at midnight, 1 at noon
		for i := 0; i < 2+int(8*day)+m%3; i++ {
			add(at.Add(time.Duration(i)*time.Second), "203.0.113.50", fmt.Sprintf("198.18.20.%d", 1+(m+i)%40), 6, 443, 20_000+uint64(i)*30_000, 40, 0)
		}
		if m%5 == 0 {
			for k := 0; k < 5; k++ {
				add(at, fmt.Sprintf("203.0.113.%d", 200+k), fmt.Sprintf("198.18.30.%d", 1+m%50), 6, 443, uint64(100_000*(k+1))+uint64(day*2e6), uint64(100*(k+1)), 0)
			}
		}
		if ago := 23*60 - m; ago <= 30 {
			for i := 0; i < 14; i++ {
				add(at.Add(time.Duration(i)*time.Second), "203.0.113.10", fmt.Sprintf("198.18.%d.%d", 40+m%10, 1+i), 6, 25, 180, 3, 0)
			}
			for i := 0; i < 40; i++ {
				add(at.Add(time.Duration(i)*time.Second), "203.0.113.40", fmt.Sprintf("192.0.2.%d", 25+i%2), 6, 587, 40_000, 60, 0)
			}
		}
		if ago := 23*60 - m; ago <= 20 {
			for s := 0; s < 60; s += 10 {
				add(at.Add(time.Duration(s)*time.Second), "203.0.113.50", "198.51.100.9", 17, 80, 7_600_000, 10_000, 100)
			}
		}
	}
	return out
}

// chrome is a headless Chromium under chromedp for one test, that records
// CSP violations and script errors.
type chrome struct {
	t        *testing.T
	ctx      context.Context
	dir      string
	mu       sync.Mutex
	problems []string
}

func newChrome(t *testing.T, width, height int) *chrome {
	t.Helper()
	exe := testenv.Tool(t, "chromium")
	b := &chrome{t: t, dir: os.Getenv("TEST_ARTIFACTS")}
	if b.dir == "" {
		b.dir = t.TempDir()
	} else if b.dir = filepath.Join(b.dir, t.Name()); os.MkdirAll(b.dir, 0o755) != nil {
		t.Fatalf("cannot make %s", b.dir)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.Headless,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *log.EventEntryAdded:
			if ev.Entry != nil && strings.Contains(ev.Entry.Text, "Content Security Policy") {
				msg = "CSP: " + ev.Entry.Text
			}
		case *runtime.EventExceptionThrown:
			msg = "exception: " + ev.ExceptionDetails.Text
			if ev.ExceptionDetails.Exception != nil {
				msg += " " + ev.ExceptionDetails.Exception.Description
			}
		}
		if msg != "" {
			b.mu.Lock()
			b.problems = append(b.problems, msg)
			b.mu.Unlock()
		}
	}))
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		t.Fatalf("cannot start chromium: %v", err)
	}
	b.ctx = ctx
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.problems {
			t.Errorf("browser: %s", p)
		}
	})
	return b
}

func (b *chrome) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, c := context.WithTimeout(b.ctx, 30*time.Second)
	defer c()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func (b *chrome) waitFor(what, cond string) {
	b.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, c := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		c()
		if err == nil && ok {
			return
		}
	}
	b.t.Fatalf("%s: %s did not hold", what, cond)
}

func (b *chrome) text(sel string) string {
	b.t.Helper()
	ctx, c := context.WithTimeout(b.ctx, 10*time.Second)
	defer c()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// shot saves the viewport as name.png and the whole page as
// name-full.png.
func (b *chrome) shot(name string) {
	b.t.Helper()
	ctx, c := context.WithTimeout(b.ctx, 30*time.Second)
	defer c()
	for _, s := range []struct {
		file string
		act  chromedp.Action[[]byte]
	}{{name + ".png", chromedp.CaptureScreenshot()}, {name + "-full.png", chromedp.FullScreenshot(100)}} {
		png, err := chromedp.Run(ctx, s.act)
		if err != nil {
			b.t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(b.dir, s.file)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.t.Logf("screenshot: %s", path)
	}
}

// wantText checks that got holds each of want, no-break spaces read as
// spaces.
func wantText(t *testing.T, where, got string, want ...string) {
	t.Helper()
	got = strings.ReplaceAll(got, "\u00a0", " ")
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q lacks %q", where, got, w)
		}
	}
}

// The board with incidents of all five kinds in headless Chromium: each
// kind's row shows its own figure and evidence (no column of another
// kind's zeros), the customers; the board pages with the API's cursor and
// its first page stays live; each kind's incident page tells its evidence
// in words; the subscriber page draws bytes and packets beside flows; the
// top talkers rank by bytes. No CSP violation or script error on the way.
// Screenshots (1280x800, and whole pages) go to $TEST_ARTIFACTS/<test>.
func TestBoardKindsBrowser(t *testing.T) {
	now := time.Now().UTC()
	b := bus.NewMemory(256)
	c, err := New(DefaultConfiguration(), Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: b,
		AlertsTopic: "alerts", FlowsTopic: "flows", Subscribers: network.NewSubscribers(nil), Token: testToken,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() { c.Stop(); srv.Close(); b.Close() })
	alerts, _ := b.Producer("alerts")
	publish := func(as ...alert.Alert) {
		t.Helper()
		for _, a := range as {
			v, _ := a.Marshal()
			if err := alerts.Publish(context.Background(), bus.Message{Value: v}); err != nil {
				t.Fatal(err)
			}
		}
	}
	all := boardAlerts(now)
	publish(all...)
	for deadline := time.Now().Add(5 * time.Second); c.memory.incidentCount() < len(all); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("alerts not read")
		}
	}
	c.memory.addFlows(boardFlows(now))

	br := newChrome(t, 1280, 800)
	row := func(id string) string { return fmt.Sprintf(`#board tbody tr[data-id=%q]`, id) }
	rows := `document.querySelectorAll("#board tbody tr").length`

	br.do("log in", chromedp.Navigate(srv.URL+"/login?token="+testToken))
	br.waitFor("first page of the board, live", rows+` === 50 && document.querySelector("#live").classList.contains("on")`)
	wantText(t, "pager", br.text("#page-info"), "1–50 of 55", "page 1")
	wantText(t, "counts", br.text("#counts"), "55 open", "11 darknet", "11 dst_entropy", "11 outbound_flood", "11 relay_abuse", "11 smtp_fanout")
	for id, want := range map[string][]string{
		"smtp-1":  {"smtp_fanout", "412 mail servers", "85 % failed (442 of 520)", "odds 1.2M:1", "cust-10", "radius", "sequential"},
		"ent-1":   {"dst_entropy", "0.97 address entropy", "baseline 0.31", "port 445 in 98 %", "port entropy 0.04", "cust-20", "dhcp", "worm_pattern"},
		"dark-1":  {"darknet", "37 dark destinations", "tcp, udp", "ports 23, 445, 2323", "cust-30", "moved", "min_dsts"},
		"relay-1": {"relay_abuse", "1,240 relay connections", "48.2 MB to 2 relays (port 587)", "baseline 12 ± 4", "cust-40", "max_connections"},
		"flood-1": {"outbound_flood", "84,213 pps", "udp/80 → 198.51.100.9", "512 Mbit/s", "answers 0 %", "max_pps"},
	} {
		wantText(t, "board row "+id, br.text(row(id)), want...)
	}
	// Each row's figure is its own kind's: no "destinations" of a flood.
	for id, unit := range map[string]string{"smtp-1": "mail servers", "ent-1": "address entropy", "dark-1": "dark destinations", "relay-1": "relay connections", "flood-1": "pps"} {
		if got := strings.TrimSpace(br.text(row(id) + " td.fig .figline .unit")); got != unit {
			t.Errorf("figure of %s: %q, want %q", id, got, unit)
		}
	}
	if s := br.text(row("flood-1")); strings.Contains(s, "destinations") || strings.Contains(s, "failed") {
		t.Errorf("flood row %q shows another kind's columns", s)
	}
	br.shot("board")

	// Live on the first page: a new incident takes its place at the top
	// without a reload, and the counts follow.
	live := kindAlert(alert.KindSMTPFanout, "live-1", "203.0.113.60", 30, now, 1)
	publish(live)
	br.waitFor("live incident on the first page", `document.querySelector("#board tbody tr").dataset.id === "live-1"`)
	br.waitFor("counts after the live incident", `document.querySelector("#counts").textContent.includes("56 open") && document.querySelector("#page-info").textContent.includes("of 56")`)
	br.waitFor("still one page's rows", rows+` === 50`)

	// The second page: the six lowest, not live.
	br.do("next page", chromedp.Click(chromedp.CSS("#page-next")))
	br.waitFor("second page", `document.querySelector("#page-info").textContent.includes("51–56 of 56") && `+rows+` === 6`)
	wantText(t, "second page", br.text("#page-info"), "page 2", "not live")
	if s := br.text("#board tbody"); strings.Contains(s, "live-1") || !strings.Contains(s, "203.0.113.149") {
		t.Errorf("second page %q", s)
	}
	br.shot("board-page2")
	publish(kindAlert(alert.KindDarknet, "live-2", "203.0.113.61", 25, now, 2))
	br.waitFor("missed alert counted", `document.querySelector("#page-info").textContent.includes("1 new alert event on the first page")`)
	if strings.Contains(br.text("#board tbody"), "203.0.113.61") {
		t.Errorf("a live alert shown on the second page")
	}
	br.do("previous page", chromedp.Click(chromedp.CSS("#page-prev")))
	br.waitFor("first page again, with the alert it missed", rows+` === 50 && !!document.querySelector(`+fmt.Sprintf("%q", row("live-2"))+`) && document.querySelector("#page-info").textContent.includes("1–50 of 57")`)
	br.do("keyboard: next page", chromedp.KeyEvent("n"))
	br.waitFor("second page by key", `document.querySelector("#page-info").textContent.includes("51–57 of 57")`)
	br.do("keyboard: previous page", chromedp.KeyEvent("p"))
	br.waitFor("first page by key", `document.querySelector("#page-info").textContent.includes("1–50 of 57")`)

	// Each kind's incident page.
	for _, tc := range []struct {
		id, shot string
		evidence []string
		identity []string
	}{
		{"smtp-1", "incident-smtp_fanout", []string{"412 distinct mail servers on TCP port 25 within 5m0s (threshold 25)", "442 of 520 SMTP attempts failed (85 %)",
			"odds of infected against benign are 1,200,000 to 1 after 14 first contacts (13 failed)", "1,290 distinct TCP/25 destinations"},
			[]string{"cust-10", "radius", "acct-10", "203.0.113.10", "no"}},
		{"ent-1", "incident-dst_entropy", []string{"Destination address entropy 0.97 against this subscriber's baseline of 0.31 (1,440 minutes learnt)",
			"port 445 in 98 % of flows", "scanning worm"}, []string{"cust-20", "dhcp", "01:00:11:22:33:44:20"}},
		{"dark-1", "incident-darknet", []string{"37 distinct dark destinations", "threshold 3", "Protocols tcp, udp; ports 23, 445, 2323", "First dark contact"},
			[]string{"cust-30", "203.0.113.30", "203.0.113.31", "yes: the binding changed within the window"}},
		{"relay-1", "incident-relay_abuse", []string{"1,240 connections and 48.2 MB (48,200,000 bytes) to the ISP's own submission servers 192.0.2.25, 192.0.2.26 on port 587",
			"usually makes 12 ± 4 connections", "2,880 minutes learnt", "ceiling of relay connections"}, []string{"cust-40", "acct-40"}},
		{"flood-1", "incident-outbound_flood", []string{"84,213 packets/s and 512 Mbit/s of udp toward 198.51.100.9", "answered 0 packets, 0 % of those sent",
			"usual rate toward its busiest target is 35 packets/s", "ceiling of packets per second (max_pps)"}, []string{"No identity source knew"}},
	} {
		br.do("incident "+tc.id, chromedp.Navigate(srv.URL+"/incidents/"+tc.id))
		br.waitFor("incident page "+tc.id, `!!document.querySelector("#evidence li") && !!document.querySelector("#identity")`)
		wantText(t, tc.id+" evidence", br.text("#evidence"), tc.evidence...)
		wantText(t, tc.id+" identity", br.text("#identity"), tc.identity...)
		wantText(t, tc.id+" timeline", br.text("#timeline"), br.text("#headline b"))
		br.shot(tc.shot)
	}

	// The flooder's page: bytes and packets beside flows.
	br.do("subscriber page", chromedp.Navigate(srv.URL+"/subscribers/203.0.113.50"))
	br.waitFor("charts drawn", `document.querySelectorAll("#charts img").length === 6 && [...document.querySelectorAll("#charts img")].every(i => i.complete && i.naturalWidth > 0)`)
	for _, m := range []string{"flows", "bytes", "packets"} {
		br.waitFor("chart "+m, fmt.Sprintf(`!!document.querySelector('#charts img[data-metric=%q]')`, m))
	}
	wantText(t, "traffic", br.text("#traffic"), "GB in", "packets")
	br.waitFor("scrolled to the charts", `(document.querySelector("#traffic").scrollIntoView({block: "start"}), true)`)
	br.shot("subscriber")

	br.do("top talkers by bytes", chromedp.Navigate(srv.URL+"/top?kind=bytes"))
	br.waitFor("top table", `!!document.querySelector("#top tbody tr")`)
	wantText(t, "top by bytes", br.text("#top tbody tr"), "203.0.113.50", "GB")
	wantText(t, "top heading", br.text("#top-what"), "by bytes")
	br.shot("top-bytes")
}
