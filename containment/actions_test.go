package containment

import (
	"context"
	"encoding/json"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
)

// actionChanges are four changes of two prefixes, two actors and two
// customers, oldest first.
func actionChanges(t0 time.Time) []Change {
	mk := func(i int, typ, prefix, actor, customer, incident string) Change {
		return Change{ID: "id-" + string(rune('a'+i)), Event: "containment", Type: typ, At: t0.Add(time.Duration(i) * time.Second),
			Actor: actor, Note: "n" + typ, Entry: Entry{Prefix: netip.MustParsePrefix(prefix), State: StateActive, Action: "block_smtp",
				SubscriberID: customer, Customer: customer, IncidentID: incident, Kind: "smtp_fanout"}}
	}
	return []Change{
		mk(0, ChangeSchedule, "203.0.113.5/32", PolicyActor, "cust-1", "inc-1"),
		mk(1, ChangeAdd, "203.0.113.5/32", PolicyActor, "cust-1", "inc-1"),
		mk(2, ChangeAdd, "2001:db8:1:2::/64", "ada", "cust-2", "manual"),
		mk(3, ChangeRelease, "203.0.113.5/32", "ada", "cust-1", "inc-1"),
	}
}

func actionIDs(t *testing.T, body string) ([]string, string) {
	t.Helper()
	var page ActionsPage
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var ids []string
	for _, ch := range page.Actions {
		ids = append(ids, ch.ID)
	}
	return ids, page.Next
}

// checkActionFilters asks the handler for filtered pages of actionChanges.
func checkActionFilters(t *testing.T, c *Component) {
	t.Helper()
	h := c.Handler()
	for _, tc := range []struct{ query, want string }{
		{"", "id-d id-c id-b id-a"},
		{"prefix=203.0.113.5", "id-d id-b id-a"},
		{"prefix=2001:db8:1:2::7", "id-c"}, // an address finds its /64
		{"prefix=198.51.100.1", ""},
		{"customer=cust-2", "id-c"},
		{"actor=ada", "id-d id-c"},
		{"actor=policy&prefix=203.0.113.5/32", "id-b id-a"},
		{"incident=inc-1", "id-d id-b id-a"},
		{"limit=2", "id-d id-c"},
	} {
		code, body := call(t, h, "GET", "/api/v1/blocklist/actions?"+tc.query, "")
		if code != 200 {
			t.Errorf("%s: %d %s", tc.query, code, body)
			continue
		}
		if ids, _ := actionIDs(t, body); strings.Join(ids, " ") != tc.want {
			t.Errorf("%s: %v, want %s", tc.query, ids, tc.want)
		}
	}
	// Pages: the cursor of one is where the next starts.
	var all []string
	before := ""
	for range 5 {
		q := url.Values{"limit": {"1"}}
		if before != "" {
			q.Set("before", before)
		}
		code, body := call(t, h, "GET", "/api/v1/blocklist/actions?"+q.Encode(), "")
		if code != 200 {
			t.Fatalf("page: %d %s", code, body)
		}
		ids, next := actionIDs(t, body)
		all = append(all, ids...)
		if next == "" {
			break
		}
		before = next
	}
	if strings.Join(all, " ") != "id-d id-c id-b id-a" {
		t.Errorf("pages: %v", all)
	}
	for _, q := range []string{"colour=red", "limit=0", "prefix=nope", "before=yesterday", "actor=a&actor=b"} {
		if code, body := call(t, h, "GET", "/api/v1/blocklist/actions?"+q, ""); code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s, want 400", q, code, body)
		}
	}
}

func TestActionsFiltersInMemory(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	c.mu.Lock()
	c.recent = actionChanges(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	c.mu.Unlock()
	checkActionFilters(t, c)
}

func TestActionsFiltersClickHouse(t *testing.T) {
	testenv.ForEachClickHouse(t, func(t *testing.T, addr string) {
		chCfg := clickhousedb.DefaultConfiguration()
		chCfg.Addr, chCfg.Database = addr, testenv.Name(t, "wsact")
		db := chtest.Database(t, chCfg)
		c, err := New(testConfig(), Dependencies{ClickHouse: db, Authorize: authorize})
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range actionChanges(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)) {
			if err := c.insert(context.Background(), ch); err != nil {
				t.Fatal(err)
			}
		}
		checkActionFilters(t, c)
	})
}

// The json export adds released entries (and each entry's customer and
// incidents) without changing the fields routers read.
func TestJSONListReleased(t *testing.T) {
	c := startComponent(t, testConfig(), bus.NewMemory(64), Dependencies{})
	h := c.Handler()
	for _, ip := range []string{"203.0.113.5", "203.0.113.6"} {
		if code, body := call(t, h, "POST", "/api/v1/blocklist", `{"ip":"`+ip+`","reason":"complaint"}`); code != 201 {
			t.Fatalf("add: %d %s", code, body)
		}
	}
	if code, body := call(t, h, "POST", "/api/v1/blocklist/203.0.113.6/release", `{"note":"fixed"}`); code != 200 {
		t.Fatalf("release: %d %s", code, body)
	}
	_, body := call(t, h, "GET", "/api/v1/blocklist?format=json", "")
	var l struct {
		Entries, Waiting, Released []map[string]any
	}
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != 1 || l.Entries[0]["ip"] != "203.0.113.5" || l.Entries[0]["timeout_seconds"] == nil || len(l.Waiting) != 0 {
		t.Errorf("entries %v waiting %v", l.Entries, l.Waiting)
	}
	if len(l.Released) != 1 || l.Released[0]["ip"] != "203.0.113.6" || l.Released[0]["state"] != StateReleased || l.Released[0]["released_at"] == nil {
		t.Errorf("released %v", l.Released)
	}
	if _, body := call(t, h, "GET", "/api/v1/blocklist?format=plain", ""); body != "203.0.113.5\n" {
		t.Errorf("plain %q", body)
	}
}
