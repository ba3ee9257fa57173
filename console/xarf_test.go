package console

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/network"
)

// newXARFConsole serves a console with a reporter configured, the role
// credentials, and the memory store holding as.
func newXARFConsole(t *testing.T, as ...alert.Alert) *httptest.Server {
	t.Helper()
	b := bus.NewMemory(64)
	cfg := DefaultConfiguration()
	cfg.XARF = XARFConfiguration{ReporterOrg: "Example ISP", ReporterDomain: "isp.example", ReporterContact: "abuse@isp.example"}
	c, err := New(cfg, Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: b,
		AlertsTopic: "alerts", FlowsTopic: "flows", Subscribers: network.NewSubscribers(nil),
		Token: testToken, Credentials: roleCredentials, Now: func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	c.guard.limiter.FreeFailures = 1000
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() {
		c.Stop()
		srv.Close()
		b.Close()
	})
	p, _ := b.Producer("alerts")
	ids := map[string]bool{}
	for _, a := range as {
		v, err := a.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(context.Background(), bus.Message{Value: v}); err != nil {
			t.Fatal(err)
		}
		ids[a.ID] = true
	}
	waitIncidents(t, c, len(ids))
	return srv
}

func getAs(t *testing.T, srv *httptest.Server, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// xarfAlerts is one incident of each kind, each with a customer.
func xarfAlerts() []alert.Alert {
	identity := &alert.Identity{Customer: "cust-secret-42", Source: "radius", Session: "sess-secret-7",
		Addresses: []alert.IdentityAddress{{Address: "203.0.113.7"}}}
	base := func(id, kind string) alert.Alert {
		a := testAlert(id, alert.StateOpen, 5, -1)
		a.Kind, a.SubscriberID = kind, "cust-secret-42"
		a.Evidence.Identity = identity
		a.Evidence.Window = "5m0s"
		return a
	}
	smtp := base("x-smtp", alert.KindSMTPFanout)
	// An earlier event: the report is of the latest.
	smtpOld := smtp
	smtpOld.WindowEnd, smtpOld.DistinctDsts = smtp.WindowEnd.Add(-time.Minute), 10
	entropy := base("x-entropy", alert.KindDstEntropy)
	entropy.SubscriberIP = "2001:db8:1:2::/64"
	entropy.Evidence.Trigger = "worm_pattern"
	entropy.Evidence.Entropy = &alert.Entropy{DstAddr: 0.99, DstPort: 0.01}
	dark := base("x-dark", alert.KindDarknet)
	dark.Evidence.Trigger = "min_dsts"
	dark.Evidence.Darknet = &alert.Darknet{Ports: []uint16{23, 445}, Protocols: []string{"tcp"}}
	relay := base("x-relay", alert.KindRelayAbuse)
	relay.Evidence.Trigger = "max_connections"
	relay.Evidence.Relay = &alert.Relay{Connections: 900, Bytes: 12345678, Relays: []string{"192.0.2.25"}, Ports: []uint16{587}}
	flood := base("x-flood", alert.KindOutboundFlood)
	flood.Evidence.Trigger = "max_pps"
	flood.Evidence.Flood = &alert.Flood{Target: "198.51.100.9", Protocol: "udp", PPS: 50000, BPS: 4e8, AnswerRatio: 0.001}
	return []alert.Alert{smtpOld, smtp, entropy, dark, relay, flood}
}

// xarfUUID4 is a UUID of version 4, RFC 4122 variant.
var xarfUUID4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestXARFReport(t *testing.T) {
	as := xarfAlerts()
	as[5].Evidence.Flood.Traffic, as[5].Evidence.Flood.Ports, as[5].Evidence.Flood.Seconds = "udp", []uint16{53}, 60
	srv := newXARFConsole(t, as...)
	end := testNow.Add(-time.Minute)
	contact := xarfContact{Org: "Example ISP", Contact: "abuse@isp.example", Domain: "isp.example"}
	common := func(id, kind, category, typ string) xarfReport {
		r := xarfReport{
			XARFVersion: "4.0.0", ReportID: xarfReportID(id, end), Timestamp: end.Format(time.RFC3339),
			Reporter: contact, Sender: contact, SourceIdentifier: "203.0.113.7", Category: category, Type: typ,
			Tags: []string{"wormsign:" + kind, "trigger:threshold"},
			Wormsign: xarfWormsign{
				IncidentID: id, Kind: kind, State: alert.StateOpen,
				FirstSeen: end.Add(-time.Minute).Format(time.RFC3339), LastSeen: end.Format(time.RFC3339),
				WindowStart: end.Add(-5 * time.Minute).Format(time.RFC3339), WindowEnd: end.Format(time.RFC3339), Window: "5m0s",
				DistinctDsts: 30, Flows: 40, SampleDestinations: []string{"198.18.0.2"}, Trigger: "threshold",
			},
		}
		if category == "connection" {
			r.EvidenceSource, r.FirstSeen, r.LastSeen = "flow_analysis", r.Wormsign.FirstSeen, r.Wormsign.LastSeen
		}
		return r
	}
	want := map[string]xarfReport{}
	r := common("x-smtp", alert.KindSMTPFanout, "messaging", "spam")
	r.Protocol = "smtp"
	r.Wormsign.SMTP = &xarfSMTP{FailedAttempts: 10, CompletedAttempts: 30, FailedShare: 0.25}
	want["x-smtp"] = r
	r = common("x-entropy", alert.KindDstEntropy, "connection", "port_scan")
	r.SourceIdentifier, r.Wormsign.SourcePrefixLength = "2001:db8:1:2::", 64
	r.Tags = []string{"wormsign:dst_entropy", "prefix:64", "trigger:worm_pattern"}
	r.Wormsign.Trigger = "worm_pattern"
	want["x-entropy"] = r
	r = common("x-dark", alert.KindDarknet, "connection", "port_scan")
	r.Protocol = "tcp"
	r.Tags[1], r.Wormsign.Trigger = "trigger:min_dsts", "min_dsts"
	r.Wormsign.Darknet = &xarfDarknet{Ports: []uint16{23, 445}, Protocols: []string{"tcp"}}
	want["x-dark"] = r
	r = common("x-relay", alert.KindRelayAbuse, "messaging", "spam")
	r.Protocol = "smtp"
	r.Tags[1], r.Wormsign.Trigger = "trigger:max_connections", "max_connections"
	r.Wormsign.Relay = &xarfRelay{Connections: 900, Bytes: 12345678}
	want["x-relay"] = r
	r = common("x-flood", alert.KindOutboundFlood, "connection", "ddos")
	r.Protocol, r.DestinationIP, r.DestinationPort, r.AttackVector = "udp", "198.51.100.9", 53, "udp_flood"
	r.PeakPPS, r.PeakBPS, r.DurationSeconds = 50000, 400000000, 60
	r.Tags[1], r.Wormsign.Trigger = "trigger:max_pps", "max_pps"
	r.Wormsign.Flood = &xarfFlood{Target: "198.51.100.9", Protocol: "udp", Ports: []uint16{53}, PPS: 50000, BPS: 4e8, Seconds: 60, AnswerRatio: 0.001}
	want["x-flood"] = r

	// The incident itself names the customer (the console's users may
	// know it) ...
	if _, body := getAs(t, srv, "/api/v1/incidents/x-smtp", "viewer-token-1"); !strings.Contains(string(body), "cust-secret-42") {
		t.Fatalf("the incident does not name its customer: %s", body)
	}
	tag := regexp.MustCompile(`^[a-z0-9][a-z0-9_+-]*:[a-z0-9][a-z0-9_+-.]*$`)
	ids := map[string]string{}
	// ... its report does not.
	for id, w := range want {
		// The viewer may read it, as the incident.
		status, body := getAs(t, srv, "/api/v1/incidents/"+id+"/xarf", "viewer-token-1")
		if status != http.StatusOK {
			t.Fatalf("%s: %d %s", id, status, body)
		}
		// No customer, in any field: subscriber_id and evidence.identity
		// are personal data and the report goes to third parties; nor the
		// ISP's relays.
		for _, secret := range []string{"cust-secret-42", "sess-secret-7", "radius", "subscriber_id", "identity", "192.0.2.25"} {
			if strings.Contains(string(body), secret) {
				t.Errorf("%s: the report carries %q: %s", id, secret, body)
			}
		}
		// The core schema's required fields, in their formats.
		var top map[string]any
		if err := json.Unmarshal(body, &top); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"xarf_version", "report_id", "timestamp", "reporter", "sender", "source_identifier", "category", "type"} {
			if _, ok := top[k]; !ok {
				t.Errorf("%s: no %s: %s", id, k, body)
			}
		}
		if top["xarf_version"] != "4.0.0" {
			t.Errorf("%s: xarf_version %v", id, top["xarf_version"])
		}
		rid, _ := top["report_id"].(string)
		if !xarfUUID4.MatchString(rid) {
			t.Errorf("%s: report_id %q is not a UUID v4", id, rid)
		}
		if other, ok := ids[rid]; ok {
			t.Errorf("%s: report_id %s also of %s", id, rid, other)
		}
		ids[rid] = id
		for _, k := range []string{"timestamp", "first_seen", "last_seen"} {
			if v, ok := top[k].(string); ok {
				if _, err := time.Parse(time.RFC3339, v); err != nil {
					t.Errorf("%s: %s: %v", id, k, err)
				}
			} else if k == "timestamp" || top["category"] == "connection" {
				t.Errorf("%s: no %s: %s", id, k, body)
			}
		}
		for _, k := range []string{"reporter", "sender"} {
			c, _ := top[k].(map[string]any)
			if diff := cmp.Diff([]string{"contact", "domain", "org"}, slices.Sorted(maps.Keys(c))); diff != "" {
				t.Errorf("%s: %s keys (-want +got):\n%s", id, k, diff)
			}
		}
		if _, ok := top["protocol"]; !ok && id != "x-entropy" {
			t.Errorf("%s: no protocol: %s", id, body)
		}
		if d, _ := top["description"].(string); d == "" || len(d) > 1000 {
			t.Errorf("%s: description %q", id, d)
		}
		for _, s := range w.Tags {
			if !tag.MatchString(s) {
				t.Errorf("%s: tag %q is not namespace:predicate", id, s)
			}
		}
		// No PascalCase X-ARF left.
		for _, k := range []string{"Version", "ReporterInfo", "Report", "Disclosure"} {
			if _, ok := top[k]; ok {
				t.Errorf("%s: old X-ARF field %s: %s", id, k, body)
			}
		}
		var got xarfReport
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: %v: %s", id, err, body)
		}
		// Description is checked above, not word for word.
		got.Description = ""
		if diff := cmp.Diff(w, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", id, diff)
		}
	}
	// The JSON names are XARF's; the prefix is said in the description.
	_, body := getAs(t, srv, "/api/v1/incidents/x-entropy/xarf", testToken)
	for _, s := range []string{`"xarf_version":"4.0.0"`, `"reporter":{"org":"Example ISP","contact":"abuse@isp.example","domain":"isp.example"}`,
		`"category":"connection"`, `"type":"port_scan"`, `"source_identifier":"2001:db8:1:2::"`, `"evidence_source":"flow_analysis"`,
		`"prefix:64"`, `2001:db8:1:2::/64`, `"timestamp":"2026-11-27T11:59:00Z"`, `"sample_destinations":["198.18.0.2"]`, `"source_prefix_length":64`} {
		if !strings.Contains(string(body), s) {
			t.Errorf("the report has no %s: %s", s, body)
		}
	}
	// The same event gives the same report.
	if _, again := getAs(t, srv, "/api/v1/incidents/x-entropy/xarf", "viewer-token-1"); string(again) != string(body) {
		t.Errorf("the report changed:\n%s\n%s", body, again)
	}
}

// The report id is a UUID v4 fixed by the incident and the event's
// last_seen.
func TestXARFReportID(t *testing.T) {
	a := xarfReportID("x-smtp", testNow)
	if !xarfUUID4.MatchString(a) {
		t.Fatalf("%q is not a UUID v4", a)
	}
	if b := xarfReportID("x-smtp", testNow.In(time.FixedZone("x", 3600))); b != a {
		t.Errorf("the zone changed the id: %s %s", a, b)
	}
	for _, b := range []string{xarfReportID("x-smtp", testNow.Add(time.Second)), xarfReportID("x-smtq", testNow)} {
		if b == a || !xarfUUID4.MatchString(b) {
			t.Errorf("%s for another event, %s", b, a)
		}
	}
}

func TestXARFErrors(t *testing.T) {
	srv := newXARFConsole(t, xarfAlerts()...)
	for _, tc := range []struct {
		path, token string
		status      int
	}{
		{"/api/v1/incidents/nope/xarf", testToken, http.StatusNotFound},
		{"/api/v1/incidents/x-smtp/xarf?format=json", testToken, http.StatusBadRequest},
		{"/api/v1/incidents/x-smtp/xarf?x=1", "viewer-token-1", http.StatusBadRequest},
		{"/api/v1/incidents/x-smtp/xarf", "", http.StatusUnauthorized},
		{"/api/v1/incidents/x-smtp/xarf", "export-token-1", http.StatusForbidden},
		{"/api/v1/incidents/x-smtp/xarf", "viewer-token-1", http.StatusOK},
		{"/api/v1/incidents/x-smtp/xarf", "operator-token-1", http.StatusOK},
	} {
		status, body := getAs(t, srv, tc.path, tc.token)
		if status != tc.status {
			t.Errorf("GET %s as %q: %d %s, want %d", tc.path, tc.token, status, body, tc.status)
		}
		if status != http.StatusOK {
			var e apiError
			if json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Errorf("GET %s: %s, want {\"error\":...}", tc.path, body)
			}
		}
	}
}

// Without console.xarf the reporter is sent empty.
func TestXARFDefaultReporter(t *testing.T) {
	if got := DefaultConfiguration().XARF; got != (XARFConfiguration{}) {
		t.Errorf("default console.xarf: %+v, want empty", got)
	}
	a := xarfAlerts()[1]
	r := newXARFReport(XARFConfiguration{}, &a)
	if r.Reporter != (xarfContact{}) || r.Sender != (xarfContact{}) || r.XARFVersion != "4.0.0" || r.Type != "spam" {
		t.Errorf("%+v", r)
	}
}
