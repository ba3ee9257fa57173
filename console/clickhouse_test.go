package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/network"
)

// openTestDB migrates a database of its own on the test ClickHouse and
// fills it with an incident (open, update, resolved), an open one, and the
// flows of the first subscriber: 30 TCP/25 destinations and 5 DNS flows.
func openTestDB(t *testing.T) (*clickhousedb.DB, time.Time) {
	t.Helper()
	return openTestDBAt(t, testenv.ClickHouseAddr(t))
}

// openTestDBAt is openTestDB on the server at addr.
func openTestDBAt(t *testing.T, server string) (*clickhousedb.DB, time.Time) {
	t.Helper()
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr = server
	cfg.Database = testenv.Name(t, "wscons")
	ctx := context.Background()
	db := chtest.Database(t, cfg)
	now := time.Now().UTC().Truncate(time.Second)
	batch, err := db.PrepareBatch(ctx, "INSERT INTO "+cfg.Database+".alerts (date, id, kind, state, subscriber_ip, subscriber_id, "+
		"window_start, window_end, first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence, sink_partition, sink_offset)")
	if err != nil {
		t.Fatal(err)
	}
	add := func(a alert.Alert, offset uint64) {
		ev, _ := json.Marshal(a.Evidence)
		d := a.WindowEnd.Truncate(24 * time.Hour)
		if err := batch.Append(d, a.ID, a.Kind, a.State, a.SubscriberIP, a.SubscriberID, a.WindowStart, a.WindowEnd,
			a.FirstSeen, a.LastSeen, a.DistinctDsts, a.Flows, a.Score, a.Exporter, string(ev), uint32(0), offset); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(id, state, ip string, score float64, ago time.Duration) alert.Alert {
		end := now.Add(-ago)
		return alert.Alert{ID: id, Kind: alert.KindSMTPFanout, State: state, SubscriberIP: ip, SubscriberID: "cust-" + ip,
			WindowStart: end.Add(-5 * time.Minute), WindowEnd: end, FirstSeen: end.Add(-time.Minute), LastSeen: end,
			DistinctDsts: 30, Flows: 40, Score: score, Exporter: "192.0.2.1",
			Evidence: alert.Evidence{SampleDsts: []string{"198.18.0.2", "198.18.0.3"}, FailedShare: 0.25, Trigger: "sequential",
				Sequential: &alert.Sequential{Decision: "infected", Odds: 1.2e6, Bound: 990000, FirstContacts: 12, FirstFailed: 10}}}
	}
	add(mk("done", "open", "203.0.113.9", 1.5, 50*time.Minute), 1)
	add(mk("done", "update", "203.0.113.9", 2.5, 45*time.Minute), 2)
	add(mk("done", "resolved", "203.0.113.9", 2.5, 30*time.Minute), 3)
	add(mk("live", "open", "203.0.113.7", 1.6, 5*time.Minute), 4)
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}

	ipType := db.Features().IPType()
	fb, err := db.PrepareBatch(ctx, "INSERT INTO "+cfg.Database+".flows (date, time_received, time_start, time_end, subscriber_ip, "+
		"exporter, src_addr, dst_addr, dst_port, proto, bytes, packets, sampling_rate, sink_partition, sink_offset)")
	if err != nil {
		t.Fatal(err)
	}
	addr := func(s string) any {
		if ipType == "IPv6" {
			return net.ParseIP(s).To16()
		}
		return s
	}
	flowAt := now.Add(-10 * time.Minute)
	for i := 0; i < 35; i++ {
		port, proto, dst := uint16(25), uint8(6), fmt.Sprintf("198.18.0.%d", i+2)
		if i >= 30 {
			port, proto, dst = 53, 17, "198.18.1.1"
		}
		if err := fb.Append(flowAt.Truncate(24*time.Hour), flowAt, flowAt, flowAt, "203.0.113.7", addr("192.0.2.1"),
			addr("203.0.113.7"), addr(dst), port, proto, uint64(100), uint64(2), uint32(0), uint32(0), uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fb.Send(); err != nil {
		t.Fatal(err)
	}
	return db, now
}

func newCHConsole(t *testing.T, db *clickhousedb.DB) *httptest.Server {
	t.Helper()
	c, err := New(DefaultConfiguration(), Dependencies{
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Bus: bus.NewMemory(16),
		AlertsTopic: "alerts", FlowsTopic: "flows", ClickHouse: db, Subscribers: network.NewSubscribers(nil), Token: testToken,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() { c.Stop(); srv.Close() })
	return srv
}

// Two console instances on one ClickHouse: history from the sink's
// tables, an ack made on one is seen by the other.
func TestClickHouseStore(t *testing.T) {
	db, _ := openTestDB(t)
	a, b := newCHConsole(t, db), newCHConsole(t, db)

	code, body := get(t, a, "/api/v1/incidents?state=any", true)
	var l incidentList
	if err := json.Unmarshal(body, &l); err != nil || code != 200 {
		t.Fatalf("incidents: %d %s", code, body)
	}
	if len(l.Incidents) != 2 || l.Incidents[0].ID != "live" || l.Incidents[1].ID != "done" || l.Incidents[1].State != "resolved" ||
		l.Incidents[0].Evidence.Sequential == nil || l.Incidents[0].SubscriberID != "cust-203.0.113.7" {
		t.Errorf("incidents from ClickHouse: %s", body)
	}
	code, body = get(t, a, "/api/v1/incidents/done", true)
	var d incidentDetail
	json.Unmarshal(body, &d)
	if code != 200 || len(d.Events) != 3 || d.Events[0].State != "open" || d.Events[2].State != "resolved" {
		t.Errorf("incident detail: %d %s", code, body)
	}
	if code, _ := get(t, a, "/api/v1/incidents/nope", true); code != 404 {
		t.Errorf("unknown incident: %d, want 404", code)
	}

	if code, body := postJSON(t, a, "/api/v1/incidents/live/ack", `{"note":"ticket 42"}`); code != 201 {
		t.Fatalf("ack: %d %s", code, body)
	}
	code, body = get(t, b, "/api/v1/incidents/live", true)
	json.Unmarshal(body, &d)
	if code != 200 || len(d.Acks) != 1 || d.Acks[0].By != "admin" || d.Incident.Ack == nil || d.Incident.Ack.Note != "ticket 42" {
		t.Errorf("ack seen by the other instance: %d %s", code, body)
	}

	code, body = get(t, b, "/api/v1/subscribers/203.0.113.7?hours=2", true)
	var v subscriberView
	json.Unmarshal(body, &v)
	if code != 200 || len(v.Series) != 1 || v.Series[0].Flows != 35 || v.Series[0].SMTPFlows != 30 ||
		v.Series[0].SMTPDestinations != 30 || v.Series[0].Destinations != 31 || v.SubscriberID != "cust-203.0.113.7" || len(v.Incidents) != 1 {
		t.Errorf("subscriber from flows_1m: %d %s", code, body)
	}
	code, body = get(t, b, "/api/v1/top/smtp?window=1h", true)
	if code != 200 || !strings.Contains(string(body), `"talkers":[{"subscriber_ip":"203.0.113.7","smtp_destinations":30,"smtp_flows":30,"flows":35}]`) {
		t.Errorf("top from flows_1m: %d %s", code, body)
	}
	code, body = get(t, b, "/api/v1/subscribers/203.0.113.7/chart.svg?metric=smtp_flows", true)
	if code != 200 || !strings.Contains(string(body), "peak 30") {
		t.Errorf("chart: %d %.300s", code, body)
	}
}

// The top lists of every kind from flows_1m, on both servers: each ranks
// by its own figure, scaled by sampling; top/smtp keeps its shape; the
// subscriber's series carries bytes and packets, and so do its charts.
func TestClickHouseTop(t *testing.T) {
	testenv.ForEachClickHouse(t, func(t *testing.T, server string) {
		db, now := openTestDBAt(t, server)
		// A second subscriber: 2 UDP flows of 1 MB and 1,000 packets to
		// one target, sampled 1:10.
		fb, err := db.PrepareBatch(context.Background(), "INSERT INTO "+db.Database()+".flows (date, time_received, time_start, time_end, subscriber_ip, "+
			"exporter, src_addr, dst_addr, dst_port, proto, bytes, packets, sampling_rate, sink_partition, sink_offset)")
		if err != nil {
			t.Fatal(err)
		}
		addr := func(s string) any {
			if db.Features().IPType() == "IPv6" {
				return net.ParseIP(s).To16()
			}
			return s
		}
		at := now.Add(-20 * time.Minute)
		for i := 0; i < 2; i++ {
			if err := fb.Append(at.Truncate(24*time.Hour), at, at, at, "203.0.113.8", addr("192.0.2.1"), addr("203.0.113.8"), addr("198.51.100.9"),
				uint16(80), uint8(17), uint64(1_000_000), uint64(1000), uint32(10), uint32(1), uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := fb.Send(); err != nil {
			t.Fatal(err)
		}
		srv := newCHConsole(t, db)
		seven := TopTalker{SubscriberIP: "203.0.113.7", Flows: 35, Bytes: 3500, Packets: 70, Destinations: 31, SMTPFlows: 30, SMTPDestinations: 30}
		eight := TopTalker{SubscriberIP: "203.0.113.8", Flows: 20, Bytes: 20_000_000, Packets: 20_000, Destinations: 1}
		for _, tc := range []struct {
			kind string
			want []TopTalker
		}{
			{"smtp", []TopTalker{seven}},
			{"flows", []TopTalker{seven, eight}},
			{"destinations", []TopTalker{seven, eight}},
			{"bytes", []TopTalker{eight, seven}},
			{"packets", []TopTalker{eight, seven}},
		} {
			l := getJSON[topList](t, srv, "/api/v1/top?kind="+tc.kind+"&window=1h&limit=10")
			if diff := cmp.Diff(tc.want, l.Talkers); diff != "" || l.Kind != tc.kind || l.Window != "1h0m0s" {
				t.Errorf("top %s: kind %q window %q (-want +got):\n%s", tc.kind, l.Kind, l.Window, diff)
			}
		}
		if l := getJSON[topList](t, srv, "/api/v1/top?kind=bytes&limit=1"); len(l.Talkers) != 1 || l.Talkers[0].SubscriberIP != "203.0.113.8" {
			t.Errorf("top bytes limit 1: %+v", l.Talkers)
		}
		if l := getJSON[topList](t, srv, "/api/v1/top?kind=bytes&window=15m"); len(l.Talkers) != 1 || l.Talkers[0].SubscriberIP != "203.0.113.7" {
			t.Errorf("top bytes of 15 minutes (the 1 MB flows are 20 minutes old): %+v", l.Talkers)
		}
		code, body := get(t, srv, "/api/v1/top/smtp?window=1h", true)
		if code != 200 || !strings.Contains(string(body), `"talkers":[{"subscriber_ip":"203.0.113.7","smtp_destinations":30,"smtp_flows":30,"flows":35}]`) {
			t.Errorf("top/smtp: %d %s", code, body)
		}
		v := getJSON[subscriberView](t, srv, "/api/v1/subscribers/203.0.113.8?hours=1")
		if len(v.Series) != 1 || v.Series[0].Bytes != 20_000_000 || v.Series[0].Packets != 20_000 || v.Series[0].Flows != 20 {
			t.Errorf("series of 203.0.113.8: %+v", v.Series)
		}
		for metric, peak := range map[string]string{"bytes": "peak 20 MB", "packets": "peak 20k"} {
			code, body := get(t, srv, "/api/v1/subscribers/203.0.113.8/chart.svg?hours=1&metric="+metric, true)
			if code != 200 || !strings.Contains(string(body), peak) {
				t.Errorf("chart %s: %d %.300s, want %q", metric, code, body, peak)
			}
		}
	})
}

func postJSON(t *testing.T, srv *httptest.Server, path, body string) (int, string) {
	t.Helper()
	req, _ := httpNewRequest("POST", srv.URL+path, body)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpDo(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.code, resp.body
}

// grafanaMacros are what grafana-clickhouse-datasource replaces in a
// panel's SQL, as it renders them.
func grafanaSQL(sql, database string, from, to time.Time) string {
	f, tt := fmt.Sprint(from.Unix()), fmt.Sprint(to.Unix())
	sql = regexp.MustCompile(`\$__timeFilter\(([^)]+)\)`).ReplaceAllString(sql, "$1 >= toDateTime("+f+") AND $1 <= toDateTime("+tt+")")
	sql = regexp.MustCompile(`\$__dateFilter\(([^)]+)\)`).ReplaceAllString(sql, "$1 >= toDate(toDateTime("+f+")) AND $1 <= toDate(toDateTime("+tt+"))")
	sql = regexp.MustCompile(`\$__timeInterval\(([^)]+)\)`).ReplaceAllString(sql, "toStartOfInterval(toDateTime($1), INTERVAL 60 second)")
	r := strings.NewReplacer("$__fromTime", "toDateTime("+f+")", "$__toTime", "toDateTime("+tt+")",
		"$__interval_s", "60", "${database}", database, "$database", database)
	return r.Replace(sql)
}

// Every panel of the Grafana dashboard runs on the real server with the
// macros substituted, and finds the rows openTestDB wrote.
func TestGrafanaDashboard(t *testing.T) {
	db, now := openTestDB(t)
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "grafana", "wormsign.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct {
				RawSQL     string `json:"rawSql"`
				Datasource struct{ Type string }
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"Alert events per minute by kind": 4, "Flows per minute": 1, "Open incidents": 1, "Top TCP/25 talkers": 1}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource.Type != "grafana-clickhouse-datasource" {
				t.Errorf("panel %q: data source %q", p.Title, tg.Datasource.Type)
			}
			sql := grafanaSQL(tg.RawSQL, db.Database(), now.Add(-6*time.Hour), now.Add(time.Minute))
			if strings.Contains(sql, "$") {
				t.Errorf("panel %q: macro left in %s", p.Title, sql)
				continue
			}
			rows, err := db.Query(context.Background(), sql)
			if err != nil {
				t.Errorf("panel %q: %v\n%s", p.Title, err, sql)
				continue
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := rows.Err(); err != nil {
				t.Errorf("panel %q: %v", p.Title, err)
			}
			rows.Close()
			if w, ok := want[p.Title]; !ok || n != w {
				t.Errorf("panel %q: %d rows, want %d", p.Title, n, w)
			}
			delete(want, p.Title)
		}
	}
	if len(want) > 0 {
		t.Errorf("panels missing from the dashboard: %v", want)
	}
}

type httpResult struct {
	code int
	body string
}

func httpNewRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}

func httpDo(req *http.Request) (httpResult, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return httpResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{resp.StatusCode, string(b)}, nil
}
