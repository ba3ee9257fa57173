package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/network"
)

const testToken = "s3cret-token"

var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// newTestConsole starts a console on an in-process bus with the in-memory
// store and serves it; publish puts alerts on the bus.
func newTestConsole(t *testing.T) (*Component, *httptest.Server, func(...alert.Alert)) {
	t.Helper()
	b := bus.NewMemory(1024)
	cfg := DefaultConfiguration()
	cfg.StreamBacklog = 5
	cfg.Heartbeat = 200 * time.Millisecond
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: b,
		AlertsTopic: "alerts", FlowsTopic: "flows", Subscribers: network.NewSubscribers(nil),
		Token: testToken, Now: func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() {
		c.Stop()
		srv.Close()
		b.Close()
	})
	alerts, _ := b.Producer("alerts")
	publish := func(as ...alert.Alert) {
		t.Helper()
		for _, a := range as {
			v, err := a.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if err := alerts.Publish(context.Background(), bus.Message{Value: v}); err != nil {
				t.Fatal(err)
			}
		}
	}
	flows, _ := b.Producer("flows")
	_ = flows
	return c, srv, publish
}

func testAlert(id, state string, score float64, minute int) alert.Alert {
	end := testNow.Add(time.Duration(minute) * time.Minute)
	return alert.Alert{
		ID: id, Kind: alert.KindSMTPFanout, State: state, SubscriberIP: "203.0.113.7",
		WindowStart: end.Add(-5 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-time.Minute), LastSeen: end,
		DistinctDsts: 30, Flows: 40, Score: score, Exporter: "192.0.2.1",
		Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.2"}, FailedAttempts: 10, CompletedAttempts: 30, FailedShare: 0.25, Trigger: "threshold"},
	}
}

func get(t *testing.T, srv *httptest.Server, path string, auth bool) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	if auth {
		req.Header.Set("Authorization", "Bearer "+testToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// waitIncidents waits until the console has read n incidents.
func waitIncidents(t *testing.T, c *Component, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.memory.incidentCount() < n {
		if time.Now().After(deadline) {
			t.Fatalf("console holds %d incidents, want %d", c.memory.incidentCount(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnauthorized(t *testing.T) {
	c, srv, _ := newTestConsole(t)
	c.guard.limiter.FreeFailures = 1000 // throttling: TestLoginThrottle
	for _, path := range []string{"/api/v1/incidents", "/api/v1/incidents/x", "/api/v1/top/smtp", "/api/v1/top?kind=bytes", "/api/v1/alerts/stream", "/api/v1/subscribers/203.0.113.7", "/api/v1/customers/cust-1", "/api/v1/nope"} {
		for _, header := range []string{"", "Bearer wrong", "Bearer " + testToken + "x", "Basic " + testToken, testToken} {
			req, _ := http.NewRequest("GET", srv.URL+path, nil)
			if header != "" {
				req.Header.Set("Authorization", header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var e apiError
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || e.Error == "" {
				t.Errorf("GET %s with %q: %d %q, want 401 with a message", path, header, resp.StatusCode, e.Error)
			}
		}
	}
	// A wrong session cookie is refused too; the page redirects to the login.
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/incidents", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: "forged"})
	resp, _ := http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("forged cookie: %d, want 401", resp.StatusCode)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, _ = noRedirect.Get(srv.URL + "/")
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		t.Errorf("board without session: %d to %q, want 303 to /login", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestLoginCookie(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.PostForm(srv.URL+"/login", map[string][]string{"token": {"wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) != 0 || !strings.Contains(resp.Header.Get("Location"), "failed") {
		t.Errorf("wrong token: cookies %v, location %q", resp.Cookies(), resp.Header.Get("Location"))
	}
	resp, err = noRedirect.PostForm(srv.URL+"/login", map[string][]string{"token": {testToken}, "next": {"//evil.example/"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode || strings.Contains(cookies[0].Value, testToken) {
		t.Fatalf("login cookie %+v, want one HttpOnly SameSite=Strict cookie without the token", cookies)
	}
	if loc := resp.Header.Get("Location"); loc != "/" {
		t.Errorf("redirect after login to %q, want / (an off-site next is refused)", loc)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/incidents", nil)
	req.AddCookie(cookies[0])
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("API with the session cookie: %d, want 200", resp.StatusCode)
	}
	// The static files and the open endpoints need no login.
	for _, p := range []string{"/static/app.js", "/static/app.css", "/login"} {
		if code, _ := get(t, srv, p, false); code != 200 {
			t.Errorf("GET %s without login: %d, want 200", p, code)
		}
	}
}

func TestBadParameters(t *testing.T) {
	_, srv, _ := newTestConsole(t)
	for _, path := range []string{
		"/api/v1/incidents?state=closed",
		"/api/v1/incidents?limit=0",
		"/api/v1/incidents?limit=abc",
		"/api/v1/incidents?limit=1001",
		"/api/v1/incidents?since=yesterday",
		"/api/v1/incidents?subscriber=not-an-ip",
		"/api/v1/incidents?kind=DROP%20TABLE",
		"/api/v1/incidents?cursor=garbage",
		"/api/v1/incidents?sort=score",
		"/api/v1/incidents?state=open&state=any",
		"/api/v1/subscribers/not-an-ip",
		"/api/v1/subscribers/203.0.113.7?hours=0",
		"/api/v1/subscribers/203.0.113.7?hours=100000",
		"/api/v1/subscribers/203.0.113.7/chart.svg?metric=joules",
		"/api/v1/top/smtp?window=forever",
		"/api/v1/top/smtp?window=1s",
		"/api/v1/top/smtp?limit=-1",
		"/api/v1/top/smtp?kind=bytes",
		"/api/v1/top?kind=ports",
		"/api/v1/top?kind=bytes&kind=flows",
		"/api/v1/top?window=25h",
		"/api/v1/top?limit=1001",
		"/api/v1/top?sort=bytes",
	} {
		code, body := get(t, srv, path, true)
		var e apiError
		if err := json.Unmarshal(body, &e); err != nil || code != 400 || e.Error == "" {
			t.Errorf("GET %s: %d %s, want 400 with a JSON message", path, code, body)
		}
	}
	if code, body := get(t, srv, "/api/v1/incidents/unknown", true); code != 404 {
		t.Errorf("unknown incident: %d %s, want 404", code, body)
	}
}

func TestPaginationAndAck(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	var want []string
	for i := 0; i < 25; i++ {
		id := fmt.Sprintf("inc%02d", i)
		// Scores repeat, so the id must break ties for a stable order.
		publish(testAlert(id, alert.StateOpen, float64(i%5), -10))
	}
	publish(testAlert("inc03", alert.StateUpdate, 9, -5)) // a grown incident moves up
	publish(testAlert("gone", alert.StateOpen, 100, -60), testAlert("gone", alert.StateResolved, 100, -20))
	waitIncidents(t, c, 26)
	want = append(want, "inc03")
	for s := 4; s >= 0; s-- {
		for i := 0; i < 25; i++ {
			if i%5 == s && i != 3 {
				want = append(want, fmt.Sprintf("inc%02d", i))
			}
		}
	}
	var got []string
	cursor := ""
	for page := 0; page < 10; page++ {
		code, body := get(t, srv, "/api/v1/incidents?limit=7"+cursor, true)
		if code != 200 {
			t.Fatalf("page %d: %d %s", page, code, body)
		}
		var l incidentList
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		for _, i := range l.Incidents {
			got = append(got, i.ID)
			if i.Ack != nil {
				t.Errorf("incident %s acked before any ack", i.ID)
			}
		}
		if page == 0 {
			// A new incident arriving between pages does not shift the
			// pages after the cursor.
			publish(testAlert("late", alert.StateOpen, 50, -1))
			waitIncidents(t, c, 27)
		}
		if l.NextCursor == nil {
			break
		}
		cursor = "&cursor=" + *l.NextCursor
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("open incidents over pages (-want +got):\n%s", diff)
	}
	code, body := get(t, srv, "/api/v1/incidents?state=resolved", true)
	if code != 200 || !strings.Contains(string(body), `"id":"gone"`) || strings.Contains(string(body), "inc03") {
		t.Errorf("resolved list: %d %s", code, body)
	}
	code, body = get(t, srv, "/api/v1/incidents?state=any&limit=1000", true)
	var all incidentList
	json.Unmarshal(body, &all)
	if code != 200 || len(all.Incidents) != 27 || all.Counts["smtp_fanout"] != 27 {
		t.Errorf("state=any: %d, %d incidents, counts %v; want 27", code, len(all.Incidents), all.Counts)
	}

	// Ack: refused with a "by" (who acks is the token's name), with an
	// unknown field or as a form; recorded as JSON.
	post := func(id, ctype, body string) (int, string) {
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/incidents/"+id+"/ack", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		id, ctype, body string
		code            int
	}{
		{"inc03", "application/json", `{"by":"ann","note":"x"}`, 400},
		{"inc03", "application/json", `{"note":"x","extra":1}`, 400},
		{"inc03", "application/json", `not json`, 400},
		{"inc03", "application/x-www-form-urlencoded", `note=x`, 415},
		{"inc03", "application/json", `{"hold":true}`, 400}, // no containment here
		{"nope", "application/json", `{"note":"x"}`, 404},
		{"inc03", "application/json", `{"note":"called the customer"}`, 201},
	} {
		if code, body := post(tc.id, tc.ctype, tc.body); code != tc.code {
			t.Errorf("ack %s %s %s: %d %s, want %d", tc.id, tc.ctype, tc.body, code, body, tc.code)
		}
	}
	code, body = get(t, srv, "/api/v1/incidents/inc03", true)
	var d incidentDetail
	if err := json.Unmarshal(body, &d); err != nil || code != 200 {
		t.Fatalf("incident: %d %s", code, body)
	}
	if len(d.Events) != 2 || d.Events[0].State != "open" || d.Events[1].State != "update" || d.Incident.State != "update" {
		t.Errorf("events %+v, want open then update, latest update", d.Events)
	}
	wantAck := Ack{By: "admin", Note: "called the customer", At: testNow} // http.token's name
	if diff := cmp.Diff([]Ack{wantAck}, d.Acks); diff != "" || d.Incident.Ack == nil || *d.Incident.Ack != wantAck {
		t.Errorf("acks (-want +got):\n%s\nincident ack %+v", diff, d.Incident.Ack)
	}
	_, body = get(t, srv, "/api/v1/incidents?limit=2", true) // late (50), then inc03 (9)
	if !strings.Contains(string(body), `"ack":{"by":"admin","note":"called the customer","at":"2026-11-27T12:00:00Z"}`) {
		t.Errorf("list does not carry the ack: %s", body)
	}
}

// readEvents reads n SSE events (id and data) from a stream.
func readEvents(t *testing.T, r *bufio.Reader, n int) (ids []string, data []string) {
	t.Helper()
	id := ""
	for len(data) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %d events: %v", len(data), err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			ids = append(ids, id)
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
	return ids, data
}

func openStream(t *testing.T, srv *httptest.Server, lastID string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/alerts/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp, bufio.NewReader(resp.Body)
}

func TestStreamOrderResumeHeartbeat(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	_, r := openStream(t, srv, "")
	// Wait for the client to be registered before publishing.
	for deadline := time.Now().Add(5 * time.Second); ; {
		c.hub.mu.Lock()
		n := len(c.hub.clients)
		c.hub.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stream client not registered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var sent []alert.Alert
	for i := 0; i < 4; i++ {
		sent = append(sent, testAlert(fmt.Sprintf("s%d", i), alert.StateOpen, float64(i), i))
	}
	publish(sent...)
	ids, data := readEvents(t, r, 4)
	if diff := cmp.Diff([]string{"1", "2", "3", "4"}, ids); diff != "" {
		t.Errorf("event ids (-want +got):\n%s", diff)
	}
	for i, d := range data {
		a, err := alert.Unmarshal([]byte(d))
		if err != nil || a.ID != sent[i].ID {
			t.Errorf("event %d: %s (%v), want alert %s", i, d, err, sent[i].ID)
		}
	}
	// A heartbeat comes while nothing happens.
	deadline := time.Now().Add(3 * time.Second)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, ": heartbeat") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no heartbeat")
		}
	}
	// Resume after id 2: events 3 and 4 again, then the new ones.
	publish(testAlert("s4", alert.StateOpen, 4, 4))
	waitIncidents(t, c, 5)
	_, r2 := openStream(t, srv, "2")
	ids, data = readEvents(t, r2, 3)
	if diff := cmp.Diff([]string{"3", "4", "5"}, ids); diff != "" {
		t.Errorf("resumed ids (-want +got):\n%s", diff)
	}
	if !strings.Contains(data[2], `"id":"s4"`) {
		t.Errorf("resumed event 5 = %s", data[2])
	}
	// The backlog holds 5 events: resuming after id 0 gets ids 2.. only
	// once a sixth arrived.
	publish(testAlert("s5", alert.StateOpen, 5, 5))
	waitIncidents(t, c, 6)
	_, r3 := openStream(t, srv, "0")
	ids, _ = readEvents(t, r3, 5)
	if diff := cmp.Diff([]string{"2", "3", "4", "5", "6"}, ids); diff != "" {
		t.Errorf("ids after the backlog wrapped (-want +got):\n%s", diff)
	}
	if code, _ := get(t, srv, "/api/v1/alerts/stream?last_event_id=abc", true); code != 400 {
		t.Errorf("bad Last-Event-ID: %d, want 400", code)
	}
}

func TestMemorySubscriberAndTop(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	sub := network.NewSubscribers(nil)
	_ = sub
	var flows []flow.Flow
	end := testNow.Add(-10 * time.Minute).UnixMilli()
	for i := 0; i < 40; i++ {
		f := flow.Flow{EndMs: end + int64(i)*1000, Proto: 6, DstPort: 25}
		f.SrcAddr = mustAddr("203.0.113.7")
		f.DstAddr = mustAddr(fmt.Sprintf("198.18.0.%d", i+2))
		flows = append(flows, f)
	}
	other := flow.Flow{EndMs: end, Proto: 17, DstPort: 53, SrcAddr: mustAddr("203.0.113.8"), DstAddr: mustAddr("198.18.1.1")}
	flows = append(flows, other, other)
	c.memory.addFlows(flows)
	publish(testAlert("z", alert.StateOpen, 2, -9))
	waitIncidents(t, c, 1)

	code, body := get(t, srv, "/api/v1/top/smtp?window=1h&limit=5", true)
	var top struct{ Talkers []Talker }
	json.Unmarshal(body, &top)
	if diff := cmp.Diff([]Talker{{SubscriberIP: "203.0.113.7", SMTPDestinations: 40, SMTPFlows: 40, Flows: 40}}, top.Talkers); code != 200 || diff != "" {
		t.Errorf("top: %d (-want +got):\n%s", code, diff)
	}
	code, body = get(t, srv, "/api/v1/subscribers/203.0.113.7?hours=1", true)
	var v subscriberView
	json.Unmarshal(body, &v)
	if code != 200 || len(v.Series) != 1 || v.Series[0].SMTPDestinations != 40 || v.Series[0].Flows != 40 || len(v.Incidents) != 1 || v.Incidents[0].ID != "z" {
		t.Errorf("subscriber: %d %s", code, body)
	}
	code, body = get(t, srv, "/api/v1/subscribers/203.0.113.7/chart.svg?metric=smtp_destinations", true)
	if code != 200 || !strings.HasPrefix(string(body), "<svg") || !strings.Contains(string(body), "peak 40") {
		t.Errorf("chart: %d %.200s", code, body)
	}
}

// The top lists of every kind from the memory store: each ranks by its
// own figure (bytes and packets scaled by sampling), the subscriber's
// series and charts carry bytes and packets.
func TestMemoryTop(t *testing.T) {
	c, srv, _ := newTestConsole(t)
	end := testNow.Add(-10 * time.Minute).UnixMilli()
	var flows []flow.Flow
	// 203.0.113.7: 30 TCP/25 flows of 100 bytes, 2 packets, to 30 servers,
	// and 5 DNS flows to one.
	for i := 0; i < 35; i++ {
		f := flow.Flow{EndMs: end, Proto: 6, DstPort: 25, Bytes: 100, Packets: 2, SrcAddr: mustAddr("203.0.113.7"), DstAddr: mustAddr(fmt.Sprintf("198.18.0.%d", i+2))}
		if i >= 30 {
			f.Proto, f.DstPort, f.DstAddr = 17, 53, mustAddr("198.18.1.1")
		}
		flows = append(flows, f)
	}
	// 203.0.113.8: 2 UDP flows of 1 MB and 1,000 packets, sampled 1:10,
	// one of them 20 minutes old and one an hour and a half old.
	flood := flow.Flow{EndMs: end - 10*60000, Proto: 17, DstPort: 80, Bytes: 1_000_000, Packets: 1000, SamplingRate: 10,
		SrcAddr: mustAddr("203.0.113.8"), DstAddr: mustAddr("198.51.100.9")}
	old := flood
	old.EndMs = end - 80*60000
	flows = append(flows, flood, flood, old)
	c.memory.addFlows(flows)

	seven := TopTalker{SubscriberIP: "203.0.113.7", Flows: 35, Bytes: 3500, Packets: 70, Destinations: 31, SMTPFlows: 30, SMTPDestinations: 30}
	eight := TopTalker{SubscriberIP: "203.0.113.8", Flows: 20, Bytes: 20_000_000, Packets: 20_000, Destinations: 1}
	for _, tc := range []struct {
		query string
		want  []TopTalker
	}{
		{"", []TopTalker{seven}},
		{"kind=smtp", []TopTalker{seven}},
		{"kind=flows", []TopTalker{seven, eight}},
		{"kind=destinations&window=1h", []TopTalker{seven, eight}},
		{"kind=bytes", []TopTalker{eight, seven}},
		{"kind=packets&limit=1", []TopTalker{eight}},
		{"kind=bytes&window=15m", []TopTalker{seven}},
	} {
		l := getJSON[topList](t, srv, "/api/v1/top?"+tc.query)
		if diff := cmp.Diff(tc.want, l.Talkers); diff != "" || l.Window != "1h0m0s" && !strings.Contains(tc.query, "window=15m") {
			t.Errorf("top?%s: window %q (-want +got):\n%s", tc.query, l.Window, diff)
		}
	}
	if l := getJSON[topList](t, srv, "/api/v1/top?kind=bytes&window=2h"); len(l.Talkers) != 2 || l.Talkers[0].Bytes != 30_000_000 {
		t.Errorf("top bytes over 2 hours: %+v", l.Talkers)
	}
	v := getJSON[subscriberView](t, srv, "/api/v1/subscribers/203.0.113.8?hours=1")
	if len(v.Series) != 1 || v.Series[0].Bytes != 20_000_000 || v.Series[0].Packets != 20_000 {
		t.Errorf("series: %+v", v.Series)
	}
	for metric, peak := range map[string]string{"bytes": "peak 20 MB", "packets": "peak 20k", "flows": "peak 20<"} {
		code, body := get(t, srv, "/api/v1/subscribers/203.0.113.8/chart.svg?hours=1&metric="+metric, true)
		if code != 200 || !strings.Contains(string(body), peak) {
			t.Errorf("chart %s: %d %.300s, want %q", metric, code, body, peak)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// fakeHolder records the holds the console passes on.
type fakeHolder struct{ holds []string }

func (f *fakeHolder) Hold(_ context.Context, id, by, note string) error {
	f.holds = append(f.holds, id+" "+by+" "+note)
	return nil
}

// TestAckHold: an ack with hold reaches containment, one without does not.
func TestAckHold(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	holder := &fakeHolder{}
	c.deps.Holder = holder
	publish(testAlert("h1", alert.StateOpen, 2, -1))
	waitIncidents(t, c, 1)
	for _, body := range []string{`{"note":"calling"}`, `{"note":"customer cleans the PC","hold":true}`} {
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/incidents/h1/ack", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("ack %s: %d", body, resp.StatusCode)
		}
	}
	if diff := cmp.Diff([]string{"h1 admin customer cleans the PC"}, holder.holds); diff != "" {
		t.Errorf("holds (-want +got):\n%s", diff)
	}
}
