package console

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/testenv"
)

// The subscriber and customer pages in headless Chromium: who holds the
// address, its history with the bindings' sources, the customer's
// addresses and incidents, and the search box that takes an address or a
// customer id; no CSP violation or script error on the way. Screenshots
// go to $TEST_ARTIFACTS/<test> (else a temporary directory).
func TestIdentityPagesBrowser(t *testing.T) {
	exe := testenv.Tool(t, "chromium")
	now := time.Now().UTC().Truncate(time.Second)
	table := identity.NewTable(0, 0)
	for _, b := range bindingsAround(now) {
		table.Apply(b)
	}
	srv, publish := newIdentityConsole(t, Dependencies{Identity: table, Now: time.Now})
	var as []alert.Alert
	for _, a := range customerAlerts() {
		as = append(as, moved(a, now.Sub(testNow)))
	}
	publish(as...)

	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if dir = filepath.Join(dir, t.Name()); os.MkdirAll(dir, 0o755) != nil {
		t.Fatalf("cannot make %s", dir)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.Headless,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1500, 950))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	var mu sync.Mutex
	var problems []string
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
			mu.Lock()
			problems = append(problems, msg)
			mu.Unlock()
		}
	}))
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("cannot start chromium: %v", err)
	}
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, c := context.WithTimeout(ctx, 30*time.Second)
		defer c()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitFor := func(what, cond string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			sctx, c := context.WithTimeout(ctx, 5*time.Second)
			ok, err := chromedp.Run(sctx, chromedp.Evaluate[bool](cond))
			c()
			if err == nil && ok {
				return
			}
		}
		t.Fatalf("%s: %s did not hold", what, cond)
	}
	text := func(sel string) string {
		t.Helper()
		sctx, c := context.WithTimeout(ctx, 10*time.Second)
		defer c()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		sctx, c := context.WithTimeout(ctx, 30*time.Second)
		defer c()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(dir, name+".png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", path)
	}
	contains := func(where, got string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", where, got, w)
			}
		}
	}

	step("log in", chromedp.Navigate(srv.URL+"/login?token="+testToken))
	waitFor("board", `!!document.querySelector("#board")`)
	search := func(q string) {
		t.Helper()
		step("search "+q, chromedp.SetValue(chromedp.CSS("#search-q"), q), chromedp.Submit(chromedp.CSS("#search-q")))
	}

	search("203.0.113.7")
	waitFor("subscriber page", `location.pathname === "/subscribers/203.0.113.7" && !!document.querySelector("#holders tbody tr")`)
	contains("customer now", text("#customer"), "cust-7")
	holders := text("#holders")
	contains("holders", holders, "cust-42", "cust-7", "cust-biz", "radius", "dhcp", "static", "acct-1", "bras-1", "stop", "held now")
	contains("bindings from", text("#who"), "radius", "dhcp", "static", "identity table")
	shot("subscriber")

	step("follow the earlier holder", chromedp.Click(chromedp.CSS(`#holders a[href="/customers/cust-42"]`)))
	waitFor("customer page", `location.pathname === "/customers/cust-42" && !!document.querySelector("#history tbody tr")`)
	contains("customer", text("#customer-id"), "cust-42")
	contains("holds now", text("#holds-now"), "203.0.113.9/32")
	contains("address history", text("#history"), "203.0.113.7/32", "203.0.113.9/32", "acct-1", "acct-2", "stop", "held now")
	contains("incidents", text("#customer-incidents"), "smtp_fanout", "203.0.113.9")
	shot("customer")

	// A MAC address is a customer id (a DHCP client), not an IPv6 one.
	search("00:11:22:33:44:55")
	waitFor("customer page of a MAC", `location.pathname === "/customers/00%3A11%3A22%3A33%3A44%3A55" && !!document.querySelector("#customer-id")`)
	contains("unknown customer", text("main"), "No address known")
	search("2001:db8::/64")
	waitFor("subscriber page of a prefix", `location.pathname.startsWith("/subscribers/2001") && !!document.querySelector("#who")`)

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
}
