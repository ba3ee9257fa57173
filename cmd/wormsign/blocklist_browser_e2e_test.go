package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wormsign/wormsign/internal/testenv"
)

// shot is a 1280x800 screenshot of the viewport, for the docs.
func (b *browser) shot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800), chromedp.Sleep(300*time.Millisecond)); err != nil {
		b.t.Errorf("viewport for %s: %v", name, err)
		return ""
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
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

// The console's containment pages on the lab scenario, in Chromium: the
// zombie's block appears on the block list page as waiting, then blocked
// after the grace; a hold from the incident page shows it held there; a
// release by hand from the block list page takes it off; the audit page
// shows every change and filters them by address and actor; the
// subscriber page shows its block history.
func TestConsoleBlocklistBrowser(t *testing.T) {
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	addr := freeAPIAddr(t)
	base := "http://" + addr
	p := startWormsign(t, append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+addr,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=6s",
		"WORMSIGN_CONTAINMENT_TICK=1s",
	), "run")
	waitLog(t, p, "wormsign started")
	zombie := lab.Subscribers[0].String()
	row := func(state string) string {
		return fmt.Sprintf(`!!document.querySelector('#blocklist tr[data-ip=%q][data-state=%q]')`, zombie, state)
	}

	b := newBrowser(t)
	b.do("viewport", chromedp.EmulateViewport(1280, 800))
	b.do("log in", chromedp.Navigate(base+"/login?token=lab-token"))
	b.waitFor("board", `!!document.querySelector("#board")`, 30*time.Second)
	b.do("block list", chromedp.Navigate(base+"/blocklist"))
	b.waitFor("empty block list", `!!document.querySelector("#blocklist") && !!document.querySelector("#add-form")`, 30*time.Second)

	zombieScenario(t, lab, port)
	// The page refreshes itself every 5 s: no reload.
	b.waitFor("zombie waiting", row("pending"), 60*time.Second)
	if s := b.text(fmt.Sprintf(`#blocklist tr[data-ip=%q]`, zombie)); !strings.Contains(s, "waiting") || !strings.Contains(s, "grace until") || !strings.Contains(s, "smtp_fanout") {
		t.Errorf("waiting row: %q", s)
	}
	b.shot("blocklist-waiting")
	b.waitFor("zombie blocked after the grace", row("active"), 30*time.Second)
	if s := b.text(fmt.Sprintf(`#blocklist tr[data-ip=%q]`, zombie)); !strings.Contains(s, "blocked since") || !strings.Contains(s, "policy") {
		t.Errorf("active row: %q", s)
	}

	// A manual add, with the API's answer shown; a bad one in words.
	b.do("add by hand",
		chromedp.SendKeys(chromedp.CSS("#add-ip"), "203.0.113.77"),
		chromedp.SetValue(chromedp.CSS("#add-action"), "quarantine"),
		chromedp.SendKeys(chromedp.CSS("#add-duration"), "2h"),
		chromedp.SendKeys(chromedp.CSS("#add-note"), "abuse report #4711"),
		chromedp.Click(chromedp.CSS("#add-submit")))
	b.waitFor("add answered", `document.querySelector("#add-status").textContent.startsWith("Added 203.0.113.77/32")`, 30*time.Second)
	b.waitFor("manual entry listed", `!!document.querySelector('#blocklist tr[data-ip="203.0.113.77"][data-state="active"]')`, 30*time.Second)
	b.do("bad add",
		chromedp.SetValue(chromedp.CSS("#add-ip"), "not-an-address"),
		chromedp.Click(chromedp.CSS("#add-submit")))
	b.waitFor("bad add answered", `document.querySelector("#add-status").textContent.includes("Not added") && document.querySelector("#add-status").textContent.includes("not an address")`, 30*time.Second)
	b.do("clear add form", chromedp.Evaluate[chromedp.Void](`document.querySelector("#add-ip").value = ""`))

	// Hold from the incident page.
	req, _ := http.NewRequest("GET", base+"/api/v1/incidents?subscriber="+zombie, nil)
	req.Header.Set("Authorization", "Bearer lab-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Incidents []struct{ ID string } }
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Incidents) != 1 {
		t.Fatalf("incidents of the zombie: %+v", list.Incidents)
	}
	id := list.Incidents[0].ID
	b.do("incident page", chromedp.Navigate(base+"/incidents/"+id))
	b.waitFor("containment state blocked", `!!document.querySelector('#containment [data-state="active"]') && !!document.querySelector("#hold-form")`, 30*time.Second)
	if s := b.text("#containment"); !strings.Contains(s, "blocked since") || !strings.Contains(s, zombie) {
		t.Errorf("incident containment: %q", s)
	}
	b.do("hold",
		chromedp.SendKeys(chromedp.CSS("#hold-note"), "customer is cleaning the PC"),
		chromedp.Click(chromedp.CSS("#hold-submit")))
	b.waitFor("held on the incident page", `!!document.querySelector('#containment [data-state="held"]')`, 30*time.Second)
	if s := b.text("#containment"); !strings.Contains(s, "held until") {
		t.Errorf("incident containment after the hold: %q", s)
	}
	if s := b.text("#incident-audit"); !strings.Contains(s, "hold") || !strings.Contains(s, "customer is cleaning the PC") || !strings.Contains(s, "schedule") {
		t.Errorf("incident's changes: %q", s)
	}
	b.do("scroll to containment", chromedp.ScrollIntoView(chromedp.CSS("#containment-section")))
	b.shot("incident-containment")

	// Release by hand from the block list page.
	b.do("block list again", chromedp.Navigate(base+"/blocklist"))
	b.waitFor("zombie held on the list", row("held"), 30*time.Second)
	b.shot("blocklist-held")
	b.do("release",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#blocklist tr[data-ip=%q] button`, zombie))),
		chromedp.SendKeys(chromedp.CSS("#rel-note"), "customer cleaned the PC"),
		chromedp.Click(chromedp.CSS("#rel-submit")))
	b.waitFor("release answered", fmt.Sprintf(`document.querySelector("#rel-status").textContent.startsWith("Released %s/32")`, zombie), 30*time.Second)
	b.waitFor("zombie released", row("released"), 30*time.Second)
	if s := b.text(fmt.Sprintf(`#blocklist tr[data-ip=%q]`, zombie)); !strings.Contains(s, "by admin") || !strings.Contains(s, "customer cleaned the PC") {
		t.Errorf("released row: %q", s)
	}
	if got := getBlocklist(t, addr, "plain"); got != "203.0.113.77\n" {
		t.Errorf("plain export after the release: %q", got)
	}
	b.do("top of the page", chromedp.Evaluate[chromedp.Void](`window.scrollTo(0,0)`))
	b.shot("blocklist")

	// The audit trail, filtered.
	b.do("audit page", chromedp.Navigate(base+"/blocklist/actions"))
	b.waitFor("audit rows", `document.querySelectorAll("#audit tbody tr").length >= 5`, 30*time.Second)
	b.shot("audit-all")
	b.do("filter by address",
		chromedp.SendKeys(chromedp.CSS("#f-prefix"), zombie),
		chromedp.Submit(chromedp.CSS("#audit-filter")))
	b.waitFor("audit of the zombie", `location.search.includes("prefix=") && document.querySelectorAll("#audit tbody tr").length > 0`, 30*time.Second)
	types := b.text("#audit tbody")
	for _, want := range []string{"schedule", "add", "hold", "release", "customer cleaned the PC"} {
		if !strings.Contains(types, want) {
			t.Errorf("audit of %s lacks %q: %q", zombie, want, types)
		}
	}
	if strings.Contains(types, "203.0.113.77") {
		t.Errorf("audit filtered by %s shows the manual entry: %q", zombie, types)
	}
	b.shot("audit")
	b.do("filter by actor", chromedp.Navigate(base+"/blocklist/actions?actor=policy"))
	b.waitFor("audit of the policy", `document.querySelectorAll("#audit tbody tr").length > 0`, 30*time.Second)
	if s := b.text("#audit tbody"); strings.Contains(s, "admin") {
		t.Errorf("audit of actor policy shows admin's changes: %q", s)
	}

	// The incident page now says who released it; the subscriber page
	// shows its block history.
	b.do("incident page after release", chromedp.Navigate(base+"/incidents/"+id))
	b.waitFor("released on the incident page", `!!document.querySelector('#containment [data-state="released"]')`, 30*time.Second)
	if s := b.text("#containment"); !strings.Contains(s, "by admin") || !strings.Contains(s, "customer cleaned the PC") {
		t.Errorf("incident containment after the release: %q", s)
	}
	b.do("subscriber page", chromedp.Navigate(base+"/subscribers/"+zombie))
	b.waitFor("block history", `document.querySelectorAll("#block-history tbody tr").length >= 4`, 30*time.Second)
	p.stop(t)
}
