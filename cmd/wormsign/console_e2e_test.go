package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/wormsign/wormsign/internal/testenv"
)

// artifacts is where the console tests write their screenshots:
// $TEST_ARTIFACTS/<test> when set, else a directory of the test's own. (Not
// WORMSIGN_*: wormsign refuses unknown variables under its prefix.)
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// logMatch waits until the process's log has a match of re and returns its
// first group.
func logMatch(t *testing.T, p *process, re *regexp.Regexp) string {
	t.Helper()
	path := p.cmd.Stderr.(*os.File).Name()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		raw, _ := os.ReadFile(path)
		if m := re.FindSubmatch(raw); m != nil {
			return string(m[1])
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("wormsign did not log %s", re)
	return ""
}

// browser is a headless Chromium (Debian's package) under chromedp.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string

	mu       sync.Mutex
	problems []string // CSP violations and uncaught exceptions
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe := testenv.Tool(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // root
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1600, 1000),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{t: t, dir: artifacts(t)}
	ctx, cancelC := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
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
	b.ctx = ctx
	// The browser lives as long as the context of the first run: start
	// it on the long one, not on a step's timeout.
	if err := chromedp.Do(ctx); err != nil {
		cancelC()
		cancelA()
		t.Fatalf("cannot start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelC()
		cancelA()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.problems {
			t.Errorf("browser: %s", p)
		}
	})
	t.Logf("console screenshots in %s", b.dir)
	return b
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

// waitFor evaluates a JavaScript condition until it holds; errors while a
// navigation replaces the page count as "not yet".
func (b *browser) waitFor(what, cond string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		cancel()
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	b.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
	b.t.Fatalf("browser: %s: not within %s (last error: %v)", what, timeout, last)
}

func (b *browser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

var consoleURLRe = regexp.MustCompile(`(http://\S+/login\?token=[0-9a-f]+)`)

// The console of `wormsign run` in a browser: the zombie's incident appears
// on the board without a reload, its page shows the evidence, an ack is
// recorded and still shown after a reload; the subscriber and top pages
// show its traffic. The token is the one wormsign made up and printed.
func TestConsoleEmbeddedBrowser(t *testing.T) {
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	p := startWormsign(t, labEnv(port), "run")
	waitLog(t, p, "wormsign started")
	loginURL := consoleURLRe.FindString(logMatch(t, p, consoleURLRe))
	base := loginURL[:strings.Index(loginURL, "/login")]
	token := loginURL[strings.Index(loginURL, "token=")+len("token="):]
	if raw, _ := os.ReadFile(p.cmd.Stderr.(*os.File).Name()); strings.Count(string(raw), token) != 1 {
		t.Errorf("the generated token is printed %d times, want once", strings.Count(string(raw), token))
	}
	// The API wants it.
	resp, err := http.Get(base + "/api/v1/incidents")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("API without the token: %d, want 401", resp.StatusCode)
	}

	b := newBrowser(t)
	b.do("open the board", chromedp.Navigate(loginURL))
	b.waitFor("board and live stream", `!!document.querySelector("#board") && document.querySelector("#live").classList.contains("on")`, 30*time.Second)

	zombie := lab.Subscribers[0].String()
	zombieScenario(t, lab, port)
	// No reload: the row comes through the stream.
	b.waitFor("zombie on the board", fmt.Sprintf(`[...document.querySelectorAll("#board tbody tr")].some(r => r.textContent.includes(%q))`, zombie), 60*time.Second)
	row := b.text("#board tbody tr")
	for _, want := range []string{"smtp_fanout", zombie, "open", "not acked"} {
		if !strings.Contains(row, want) {
			t.Errorf("board row %q lacks %q", row, want)
		}
	}
	if n := b.text("#counts"); !strings.Contains(n, "1 smtp_fanout") {
		t.Errorf("counts %q, want 1 smtp_fanout", n)
	}
	b.screenshot("board")

	b.do("open the incident", chromedp.Click(chromedp.CSS(`#board tbody tr td:nth-child(3) a`)))
	b.waitFor("incident page", `!!document.querySelector("#evidence li")`, 30*time.Second)
	evidence := b.text("#evidence")
	for _, want := range []string{"distinct mail servers on TCP port 25", "SMTP attempts failed", "Opened by"} {
		if !strings.Contains(evidence, want) {
			t.Errorf("evidence %q lacks %q", evidence, want)
		}
	}
	if s := b.text("#samples"); !strings.Contains(s, "198.18.") {
		t.Errorf("sample destinations %q", s)
	}
	if tl := b.text("#timeline tbody"); !strings.Contains(tl, "open") {
		t.Errorf("timeline %q lacks the open event", tl)
	}
	b.screenshot("incident")

	// The ack is the logged-in name's: the made-up token is http.token's,
	// "admin".
	if s := b.text("#ack-as"); !strings.Contains(s, "admin") {
		t.Errorf("ack form: %q, want it to name admin", s)
	}
	b.do("acknowledge",
		chromedp.SendKeys(chromedp.CSS("#ack-note"), "customer called"),
		chromedp.Click(chromedp.CSS("#ack-submit")))
	b.waitFor("ack shown", `!!document.querySelector("#acks li")`, 30*time.Second)
	b.do("reload", chromedp.Reload())
	b.waitFor("incident page after reload", `!!document.querySelector("#ack-state")`, 30*time.Second)
	if s := b.text("#ack-state"); !strings.Contains(s, "by admin") || !strings.Contains(s, "customer called") {
		t.Errorf("ack after reload: %q", s)
	}
	b.screenshot("incident-acked")

	// The API agrees, with the token.
	req, _ := http.NewRequest("GET", base+"/api/v1/incidents?subscriber="+zombie, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Incidents []struct {
			ID, Kind string
			Ack      *struct{ By string }
		}
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Incidents) != 1 || list.Incidents[0].Ack == nil || list.Incidents[0].Ack.By != "admin" {
		t.Errorf("API incidents of the zombie: %+v", list.Incidents)
	}

	b.do("back to the board", chromedp.Navigate(base+"/"))
	b.waitFor("board with ack", `[...document.querySelectorAll("#board tbody tr")].some(r => r.textContent.includes("admin"))`, 30*time.Second)
	b.screenshot("board-acked")

	b.do("subscriber page", chromedp.Navigate(base+"/subscribers/"+zombie))
	b.waitFor("charts drawn", `document.querySelectorAll("#charts img").length === 6 && [...document.querySelectorAll("#charts img")].every(i => i.complete && i.naturalWidth > 0)`, 30*time.Second)
	if s := b.text("main"); !strings.Contains(s, "of them to TCP port 25") || !strings.Contains(s, "smtp_fanout") {
		t.Errorf("subscriber page: %q", s)
	}
	b.screenshot("subscriber")

	b.do("top talkers", chromedp.Navigate(base+"/top"))
	b.waitFor("top table", `!!document.querySelector("#top tbody tr")`, 30*time.Second)
	if s := b.text("#top tbody tr"); !strings.Contains(s, zombie) || !strings.Contains(s, "40") {
		t.Errorf("first top talker %q, want the zombie with 40 destinations", s)
	}
	b.screenshot("top")

	// Log out and in again with the form: both are same-origin POSTs the
	// CSRF rule lets through.
	b.do("log out", chromedp.Click(chromedp.CSS(`form.logout button`)))
	b.waitFor("login form", `location.pathname === "/login" && !!document.querySelector("#token")`, 30*time.Second)
	b.do("log in with the form",
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	b.waitFor("board after the form login", `location.pathname === "/" && !!document.querySelector("#board tbody tr")`, 30*time.Second)
	p.stop(t)
}

var httpAddrRe = regexp.MustCompile(`msg="http server listening" addr=(\S+)`)

// `wormsign console` in a Kafka + ClickHouse deployment shows the incident
// that a separate `wormsign detector` raised, and records acks in
// ClickHouse as the name of the token (an operator of http.tokens, from
// the environment); the configured token never shows in its log.
func TestConsoleKafkaClickHouse(t *testing.T) {
	brokers := strings.Join(testenv.KafkaBrokers(t), ",")
	chAddr := testenv.ClickHouseAddr(t)
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	db := testenv.Name(t, "wscon")
	const token = "configured-console-token-1234"
	env := append(pipelineEnv(t, brokers, chAddr, db, port), "WORMSIGN_HTTP_TOKENS=noc-2=operator;token="+token)
	t.Cleanup(func() {
		cfg := clickhouse.Options{Addr: []string{chAddr}}
		if conn, err := clickhouse.Open(&cfg); err == nil {
			conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
			conn.Close()
		}
	})
	sink := startWormsign(t, env, "sink")
	waitLog(t, sink, "wormsign started")
	con := startWormsign(t, env, "console")
	waitLog(t, con, "wormsign started")
	base := "http://" + logMatch(t, con, httpAddrRe)
	detector := startWormsign(t, env, "detector")
	waitLog(t, detector, "wormsign started")
	collector := startWormsign(t, env, "collector")
	waitLog(t, collector, "wormsign started")

	b := newBrowser(t)
	b.do("open the board", chromedp.Navigate(base+"/login?token="+token))
	b.waitFor("board and live stream", `!!document.querySelector("#board") && document.querySelector("#live").classList.contains("on")`, 30*time.Second)
	zombie := lab.Subscribers[0].String()
	zombieScenario(t, lab, port)
	// Live through the alerts topic, or at the latest on the board's
	// minute refresh from ClickHouse.
	b.waitFor("zombie on the board", fmt.Sprintf(`[...document.querySelectorAll("#board tbody tr")].some(r => r.textContent.includes(%q))`, zombie), 90*time.Second)
	b.screenshot("board")

	// The incident, from ClickHouse, and an ack recorded there.
	api := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw json.RawMessage
		json.NewDecoder(resp.Body).Decode(&raw)
		return resp.StatusCode, raw
	}
	var list struct {
		Incidents []struct{ ID, Kind, SubscriberIP string }
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		_, raw := api("GET", "/api/v1/incidents?subscriber="+zombie, "")
		if json.Unmarshal(raw, &list); len(list.Incidents) > 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(list.Incidents) != 1 || list.Incidents[0].Kind != "smtp_fanout" {
		t.Fatalf("incidents of the zombie from ClickHouse: %+v", list.Incidents)
	}
	if code, raw := api("POST", "/api/v1/incidents/"+list.Incidents[0].ID+"/ack", `{"note":"blocked"}`); code != 201 {
		t.Fatalf("ack: %d %s", code, raw)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var by string
	if err := conn.QueryRow(context.Background(), "SELECT actor FROM "+db+".incident_actions WHERE incident_id = ?", list.Incidents[0].ID).Scan(&by); err != nil || by != "noc-2" {
		t.Errorf("incident_actions: %q, %v; want the ack of noc-2", by, err)
	}
	b.do("reload", chromedp.Reload())
	b.waitFor("ack on the board", `[...document.querySelectorAll("#board tbody tr")].some(r => r.textContent.includes("noc-2"))`, 30*time.Second)
	b.screenshot("board-acked")

	collector.stop(t)
	detector.stop(t)
	con.stop(t)
	sink.stop(t)
	if raw, _ := os.ReadFile(con.cmd.Stderr.(*os.File).Name()); strings.Contains(string(raw), token) {
		t.Errorf("the configured token is in the console's log")
	}
}
