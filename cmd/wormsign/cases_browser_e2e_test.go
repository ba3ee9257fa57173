package main

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wormsign/wormsign/internal/testenv"
)

// The console's remediation pages on the lab scenario, in Chromium: the
// zombie's case appears on the cases page and the ladder walls it
// (notify:0s, walled:3s) without a reload; its page tells what was seen,
// the ladder and the history (the notice failed: no relay is configured);
// a hold and a false positive from its buttons show in the history and
// the state, and the buttons are off after; the desk counts the case and
// the false positive against smtp_fanout's precision.
func TestCasesBrowser(t *testing.T) {
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	addr := freeAPIAddr(t)
	base := "http://" + addr
	p := startWormsign(t, append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+addr,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
		"WORMSIGN_CONTAINMENT_TICK=1s",
		"WORMSIGN_REMEDIATION_ENABLED=true",
		"WORMSIGN_REMEDIATION_TICK=1s",
		"WORMSIGN_REMEDIATION_LADDER=notify:0s,walled:3s,block:24h",
	), "run")
	waitLog(t, p, "wormsign started")
	zombie := lab.Subscribers[0].String()
	b := newBrowser(t)
	// Numbers keep their units with no-break spaces.
	text := func(sel string) string { return strings.ReplaceAll(b.text(sel), "\u00a0", " ") }
	b.do("viewport", chromedp.EmulateViewport(1280, 800))
	b.do("log in", chromedp.Navigate(base+"/login?token=lab-token"))
	b.waitFor("board", `!!document.querySelector("#board")`, 30*time.Second)
	b.do("cases", chromedp.Navigate(base+"/cases"))
	b.waitFor("no cases yet", `!!document.querySelector("#cases")`, 30*time.Second)

	zombieScenario(t, lab, port)
	// The page refreshes itself every 5 s: no reload.
	b.waitFor("zombie walled", `!!document.querySelector('#cases tr[data-state="walled"]')`, 60*time.Second)
	if s := b.text(`#cases tbody`); !strings.Contains(s, zombie) || !strings.Contains(s, "smtp_fanout") || !strings.Contains(s, "block") {
		t.Errorf("cases row: %q", s)
	}
	if n := b.text(`#cases-counts`); !strings.Contains(n, "1 case") {
		t.Errorf("cases counts: %q", n)
	}
	b.shot("cases")
	// The filter keeps its state in the URL.
	b.do("filter closed", chromedp.SetValue(chromedp.CSS("#state-filter"), "closed"),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("#state-filter").dispatchEvent(new Event("change"))`))
	b.waitFor("no closed case", `location.search === "?state=closed" && document.querySelector("#cases").tagName === "P"`, 30*time.Second)
	b.do("filter walled", chromedp.Navigate(base+"/cases?state=walled"))
	b.waitFor("walled case", `document.querySelector("#state-filter").value === "walled" && !!document.querySelector('#cases tr[data-state="walled"]')`, 30*time.Second)

	b.do("open the case", chromedp.Click(chromedp.CSS(`#cases tr[data-state="walled"] a[href^="/cases/"]`)))
	b.waitFor("case page", `!!document.querySelector('#case-title[data-state="walled"]') && !!document.querySelector('#case-history tr[data-type="walled"]')`, 30*time.Second)
	if s := b.text("#saw"); !strings.Contains(s, "From "+zombie) || !strings.Contains(s, "sent e-mail directly to many mail servers") ||
		!strings.Contains(s, "port 25") || !strings.Contains(s, "distinct destinations") {
		t.Errorf("what we saw: %q", s)
	}
	h := b.text("#case-history")
	for _, want := range []string{"open", "notify_failed", "no relay configured", "walled", "policy"} {
		if !strings.Contains(h, want) {
			t.Errorf("history lacks %q: %q", want, h)
		}
	}
	if s := b.text("#ladder"); !strings.Contains(s, "notice failed") || !strings.Contains(s, "Walled garden 3 s after the start · taken") || !strings.Contains(s, "Block 24 h after the start · next") {
		t.Errorf("ladder: %q", s)
	}
	b.waitFor("latest incident link", `document.querySelector("#latest-incident").getAttribute("href").startsWith("/incidents/")`, 5*time.Second)
	// The X-ARF link answers with the console's cookie.
	b.do("fetch the X-ARF report", chromedp.Evaluate[chromedp.Void](`fetch(document.querySelector("#xarf-link").href).then((r) => { window.xarfStatus = r.status; })`))
	b.waitFor("X-ARF report", `window.xarfStatus === 200`, 10*time.Second)

	// An action without a note is refused by the page; a hold with one
	// is recorded.
	b.do("release without a note", chromedp.Click(chromedp.CSS("#case-release")))
	b.waitFor("note asked for", `document.querySelector("#case-status").textContent.startsWith("Write a note first")`, 10*time.Second)
	b.do("hold",
		chromedp.SetValue(chromedp.CSS("#hold-duration"), "1h"),
		chromedp.SendKeys(chromedp.CSS("#case-note"), "customer called, cleaning the PC"),
		chromedp.Click(chromedp.CSS("#case-hold")))
	b.waitFor("hold answered", `document.querySelector("#case-status").textContent.startsWith("Held until")`, 30*time.Second)
	b.waitFor("hold in the history", `!!document.querySelector('#case-history tr[data-type="hold"]')`, 30*time.Second)
	if s := b.text(`#case-history tr[data-type="hold"]`); !strings.Contains(s, "admin") || !strings.Contains(s, "customer called, cleaning the PC") || !strings.Contains(s, "1h0m0s") {
		t.Errorf("hold event: %q", s)
	}
	if s := b.text("#ladder"); !strings.Contains(s, "held until") {
		t.Errorf("ladder after the hold: %q", s)
	}
	b.do("top of the page", chromedp.Evaluate[chromedp.Void](`window.scrollTo(0,0)`))
	b.shot("case")

	b.do("false positive",
		chromedp.SendKeys(chromedp.CSS("#case-note"), "the customer's own mail server"),
		chromedp.Click(chromedp.CSS("#case-fp")))
	b.waitFor("confirm asked", `!document.querySelector("#case-fp-ask").hidden`, 10*time.Second)
	b.do("confirm", chromedp.Click(chromedp.CSS("#case-fp-confirm")))
	b.waitFor("false positive", `!!document.querySelector('#case-title[data-state="false_positive"]') && !!document.querySelector('#case-history tr[data-type="false_positive"]')`, 30*time.Second)
	b.waitFor("buttons off", `["#case-hold", "#case-skip", "#case-release", "#case-close", "#case-fp"].every((s) => document.querySelector(s).disabled)`, 10*time.Second)
	if s := b.text(`#case-history tr[data-type="false_positive"]`); !strings.Contains(s, "the customer's own mail server") {
		t.Errorf("false positive event: %q", s)
	}
	if got := getBlocklist(t, addr, "plain"); got != "" {
		t.Errorf("block list after the false positive: %q", got)
	}

	b.do("desk", chromedp.Navigate(base+"/desk"))
	b.waitFor("desk", `!!document.querySelector('#precision tr[data-kind="smtp_fanout"]')`, 30*time.Second)
	if s := text("#desk-cases"); s != "1 case" {
		t.Errorf("desk cases: %q", s)
	}
	if s := text("#desk-fp"); s != "1 false positive" {
		t.Errorf("desk false positives: %q", s)
	}
	if s := text(`#precision tr[data-kind="smtp_fanout"]`); !strings.Contains(s, "smtp_fanout") || !strings.Contains(s, "1") || !strings.Contains(s, "0 %") {
		t.Errorf("precision of smtp_fanout: %q", s)
	}
	if s := text("#open-to-notice"); !strings.Contains(s, "no case notified yet") {
		t.Errorf("open to notice (the notice failed): %q", s)
	}
	b.waitFor("state chart", `document.querySelector('#by-state g[data-state="false_positive"]').textContent.endsWith("1") && document.querySelectorAll("#days g[data-day]").length === 1`, 10*time.Second)
	b.shot("desk")
	p.stop(t)
}
