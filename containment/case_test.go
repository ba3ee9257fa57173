package containment

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/config"
	"github.com/wormsign/wormsign/network"
)

func caseAction(id, action string, prefixes ...string) CaseAction {
	a := CaseAction{ID: id, Customer: "A", SubscriberID: "sub-A", Action: action, Actor: "remediation", Note: "case step"}
	for _, s := range prefixes {
		a.Prefixes = append(a.Prefixes, netip.MustParsePrefix(s))
	}
	return a
}

func changeTypes(changes []Change) []string {
	out := []string{}
	for _, c := range changes {
		out = append(out, c.Type+" "+c.Entry.Prefix.String())
	}
	return out
}

func entryOf(p *Policy, pfx string) *Entry {
	for _, e := range p.Records() {
		if e.Prefix.String() == pfx {
			return &e
		}
	}
	return nil
}

func TestActionRank(t *testing.T) {
	order := []string{ActionNone, ActionBlockSMTP, ActionWalled, ActionQuarantine}
	for i, a := range order {
		for j, b := range order {
			if got, want := stronger(a, b), i > j; got != want {
				t.Errorf("stronger(%s, %s) = %v, want %v", a, b, got, want)
			}
		}
	}
}

// TestContainNewEntries: a case step puts each of the customer's prefixes
// on the list at once, active, with the case's id, action and duration;
// the prefixes are masked; the same step again changes nothing.
func TestContainNewEntries(t *testing.T) {
	p := NewPolicy(testConfig(), nil, nil) // grace 30m: a case step does not wait for it
	a := caseAction("case-1:walled:1", ActionWalled, "203.0.113.7/32", "2001:db8:7::1/64")
	a.Duration = 2 * time.Hour
	changes, err := p.Contain(a, at(0))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changeTypes(changes), []string{"add 203.0.113.7/32", "add 2001:db8:7::/64"}; !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	for _, c := range changes {
		e := c.Entry
		if e.State != StateActive || e.Action != ActionWalled || e.Kind != "case" || e.IncidentID != a.ID ||
			e.Customer != "A" || e.SubscriberID != "sub-A" || e.Actor != "remediation" || !e.Expires.Equal(at(120)) ||
			!slices.Equal(e.Incidents, []string{a.ID}) || c.Actor != "remediation" || c.Note != "case step" {
			t.Errorf("entry %+v (change by %q, %q): want an active walled case entry of A until 2h", e, c.Actor, c.Note)
		}
	}
	if got := MakeList(p.Entries(), at(1), false).Active; len(got) != 2 {
		t.Errorf("exported %d entries, want 2", len(got))
	}
	if again, err := p.Contain(a, at(0)); err != nil || len(again) != 0 {
		t.Errorf("the same step again: %v, %v, want no change", changeTypes(again), err)
	}
	// Duration 0 is containment.duration.
	b := caseAction("case-2:walled:1", ActionWalled, "203.0.113.8/32")
	b.Customer = "B"
	changes, err = p.Contain(b, at(0))
	if err != nil || len(changes) != 1 || !changes[0].Entry.Expires.Equal(at(0).Add(testConfig().Duration)) {
		t.Errorf("duration 0: %+v, %v, want containment.duration", changes, err)
	}
}

// TestContainExistingEntry: a case step on an entry the policy made joins
// it: a stronger action replaces a weaker one, a weaker leaves it; a
// pending or held entry is active at once; the expiry only moves on.
func TestContainExistingEntry(t *testing.T) {
	const z = "203.0.113.2"
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("i1", "smtp_fanout", "open", z, at(0))) // block_smtp until 4h

	// Upgrade: walled over block_smtp.
	changes, err := p.Contain(caseAction("case-1:walled:1", ActionWalled, z+"/32"), at(10))
	if err != nil || len(changes) != 1 {
		t.Fatalf("upgrade: %v, %v, want one change", changeTypes(changes), err)
	}
	e := changes[0].Entry
	if got := changeTypes(changes); !slices.Equal(got, []string{"add " + z + "/32"}) || e.Action != ActionWalled ||
		e.IncidentID != "case-1:walled:1" || e.Kind != "case" || !slices.Equal(e.Incidents, []string{"i1", "case-1:walled:1"}) ||
		!e.Since.Equal(at(0)) || !e.Expires.Equal(at(10).Add(cfg.Duration)) {
		t.Fatalf("upgrade: %v %+v, want walled carrying i1 and the case, since 0, expiring 4h after the step", got, e)
	}
	// Weaker: block_smtp asked of a walled entry joins and leaves it
	// walled; a short duration does not shorten the block.
	weak := caseAction("case-1:block:2", ActionBlockSMTP, z+"/32")
	weak.Duration = time.Minute
	if changes, err = p.Contain(weak, at(20)); err != nil || len(changes) != 1 || changes[0].Type != ChangeIncident {
		t.Fatalf("weaker step: %v, %v, want an incident change", changeTypes(changes), err)
	}
	if e := changes[0].Entry; e.Action != ActionWalled || e.IncidentID != "case-1:walled:1" || !e.carries("case-1:block:2") ||
		!e.Expires.Equal(at(10).Add(cfg.Duration)) {
		t.Errorf("weaker step: %+v, want still walled by the first step, carrying the second, same expiry", e)
	}
	// Stronger again: quarantine.
	if changes, err = p.Contain(caseAction("case-1:quarantine:3", ActionQuarantine, z+"/32"), at(30)); err != nil || len(changes) != 1 ||
		changes[0].Type != ChangeAdd || changes[0].Entry.Action != ActionQuarantine {
		t.Fatalf("quarantine step: %v, %v", changeTypes(changes), err)
	}
	// An alert of another incident extends it as any entry; its
	// block_smtp does not downgrade it.
	p.Apply(mkAlert("i2", "smtp_fanout", "open", z, at(40)))
	if e := entryOf(p, z+"/32"); e.Action != ActionQuarantine || !e.carries("i2") {
		t.Errorf("after an alert: %+v, want still quarantine, carrying i2", e)
	}

	// Pending (grace running) and held entries become active.
	cfg.Grace = time.Hour
	p = NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("i3", "smtp_fanout", "open", "203.0.113.3", at(0)))
	p.Apply(mkAlert("i4", "smtp_fanout", "open", "203.0.113.4", at(0)))
	if _, err := p.Hold("i4", "alice", "customer called", at(1)); err != nil {
		t.Fatal(err)
	}
	changes, err = p.Contain(caseAction("case-2:walled:1", ActionWalled, "203.0.113.3/32", "203.0.113.4/32"), at(2))
	if err != nil {
		t.Fatal(err)
	}
	if got := changeTypes(changes); !slices.Equal(got, []string{"add 203.0.113.3/32", "add 203.0.113.4/32"}) {
		t.Fatalf("changes %v, want both added", got)
	}
	for _, c := range changes {
		if e := c.Entry; e.State != StateActive || e.Action != ActionWalled || !e.Since.Equal(at(2)) || !e.BlockAt.IsZero() || !e.HeldUntil.IsZero() {
			t.Errorf("%+v: want active walled since the step", e)
		}
	}
}

// TestContainIsExplicit: a case step blocks again a prefix whose own
// incident was released by hand, which no alert of that incident would.
func TestContainIsExplicit(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("i1", "smtp_fanout", "open", "203.0.113.2", at(0)))
	if _, err := p.Release(netip.MustParsePrefix("203.0.113.2/32"), "bob", "fixed", at(1)); err != nil {
		t.Fatal(err)
	}
	changes, err := p.Contain(caseAction("case-1:walled:1", ActionWalled, "203.0.113.2/32"), at(2))
	if err != nil || len(changes) != 1 || changes[0].Type != ChangeAdd {
		t.Fatalf("contain after a release: %v, %v, want an add", changeTypes(changes), err)
	}
	if e := changes[0].Entry; e.carries("i1") || !slices.Contains(e.ReleasedIncidents, "i1") {
		t.Errorf("%+v: want the case alone, i1 still released", e)
	}
}

// TestContainFollowsCustomer: the case's entries move with the customer
// as the policy's do, and are still the case's where they land.
func TestContainFollowsCustomer(t *testing.T) {
	p := NewPolicy(testConfig(), nil, nil)
	held := map[string][]netip.Prefix{"A": {netip.MustParsePrefix("203.0.113.7/32")}}
	p.SetHoldings(func(c string, _ time.Time) []netip.Prefix { return held[c] })
	if _, err := p.Contain(caseAction("case-1:walled:1", ActionWalled, "203.0.113.7/32"), at(0)); err != nil {
		t.Fatal(err)
	}
	held["A"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}
	p.FollowAll(at(1))
	if got := activePrefixes(p); got != "203.0.113.9/32" {
		t.Fatalf("active %q after the move, want .9 alone", got)
	}
	if e := entryOf(p, "203.0.113.9/32"); e.Action != ActionWalled || e.IncidentID != "case-1:walled:1" || e.Kind != "case" {
		t.Errorf("moved entry %+v, want the walled case entry", e)
	}
	// B's block on .7, which A holds again before B's follow came,
	// waits for B's next address instead of becoming A's.
	held["B"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.8/32")}
	b := caseAction("case-2:walled:1", ActionQuarantine, "203.0.113.8/32")
	b.Customer = "B"
	if _, err := p.Contain(b, at(1)); err != nil {
		t.Fatal(err)
	}
	held["B"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}
	p.Follow("B", at(1))
	held["A"], held["B"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}, nil
	if _, err := p.Contain(caseAction("case-1:walled:2", ActionWalled, "203.0.113.7/32"), at(1)); err != nil {
		t.Fatal(err)
	}
	if e := entryOf(p, "203.0.113.7/32"); e.Customer != "A" || e.Action != ActionWalled || e.carries("case-2:walled:1") {
		t.Errorf(".7: %+v, want A's walled entry alone", e)
	}
	if e := entryOf(p, unboundPrefix("B").String()); e == nil || e.State != StateUnbound || e.Action != ActionQuarantine {
		t.Errorf("B's entry %+v, want it waiting for B's next address", e)
	}
	// Releasing the step finds it where it is now.
	held["A"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}
	p.FollowAll(at(2))
	changes, err := p.ReleaseIncidents([]string{"case-1:walled:1"}, "remediation", "cleaned", at(2))
	if err != nil || !slices.Equal(changeTypes(changes), []string{"release 203.0.113.9/32"}) {
		t.Errorf("release after the move: %v, %v", changeTypes(changes), err)
	}
}

// TestContainRefused: bad input, an allow-listed or too wide prefix, and a
// full list are refused, and nothing changes: not even one of the
// prefixes goes on.
func TestContainRefused(t *testing.T) {
	cfg := testConfig()
	cfg.MaxEntries = 2
	p := NewPolicy(cfg, []network.Prefix{network.MustParsePrefix("203.0.113.25")}, nil)
	for _, tc := range []struct {
		name string
		a    CaseAction
		want error
	}{
		{"allow-listed", caseAction("c:1", ActionWalled, "203.0.113.5/32", "203.0.113.25/32"), ErrAllowed},
		{"too wide", caseAction("c:1", ActionWalled, "203.0.113.0/24"), ErrBadInput},
		{"no prefix", caseAction("c:1", ActionWalled), ErrBadInput},
		{"no id", caseAction("", ActionWalled, "203.0.113.5/32"), ErrBadInput},
		{"bad action", caseAction("c:1", "none", "203.0.113.5/32"), ErrBadInput},
		{"full", caseAction("c:1", ActionWalled, "203.0.113.5/32", "203.0.113.6/32", "203.0.113.7/32"), ErrFull},
	} {
		changes, err := p.Contain(tc.a, at(0))
		if !errors.Is(err, tc.want) || len(changes) != 0 {
			t.Errorf("%s: %v, %v, want %v and no change", tc.name, changeTypes(changes), err, tc.want)
		}
	}
	noActor := caseAction("c:1", ActionWalled, "203.0.113.5/32")
	noActor.Actor = ""
	if _, err := p.Contain(noActor, at(0)); !errors.Is(err, ErrBadInput) {
		t.Errorf("no actor: %v, want ErrBadInput", err)
	}
	if n := len(p.Records()); n != 0 {
		t.Fatalf("%d entries after refusals, want none", n)
	}
	// Two fit; an entry already active takes no more room.
	if _, err := p.Contain(caseAction("c:1", ActionWalled, "203.0.113.5/32", "203.0.113.6/32"), at(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Contain(caseAction("c:2", ActionQuarantine, "203.0.113.5/32"), at(1)); err != nil {
		t.Errorf("a step on an active entry of a full list: %v", err)
	}
	if _, err := p.Contain(caseAction("c:3", ActionWalled, "203.0.113.7/32"), at(1)); !errors.Is(err, ErrFull) {
		t.Errorf("a new entry beyond max_entries: %v, want ErrFull", err)
	}
}

// TestReleaseIncidents: the step's entries come off the list, final: the
// incidents they carried do not put them back.
func TestReleaseIncidents(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("i1", "smtp_fanout", "open", "203.0.113.2", at(0)))
	if _, err := p.Contain(caseAction("case-1:walled:1", ActionWalled, "203.0.113.2/32", "2001:db8:2::/64"), at(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Contain(caseAction("case-2:walled:1", ActionWalled, "203.0.113.3/32"), at(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReleaseIncidents([]string{"case-9"}, "remediation", "", at(2)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: %v, want ErrNotFound", err)
	}
	if _, err := p.ReleaseIncidents([]string{"case-1:walled:1"}, "", "", at(2)); !errors.Is(err, ErrBadInput) {
		t.Errorf("no actor: %v, want ErrBadInput", err)
	}
	if _, err := p.ReleaseIncidents(nil, "remediation", "", at(2)); !errors.Is(err, ErrBadInput) {
		t.Errorf("no ids: %v, want ErrBadInput", err)
	}
	changes, err := p.ReleaseIncidents([]string{"case-0", "case-1:walled:1"}, "remediation", "customer cleaned up", at(3))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changeTypes(changes), []string{"release 203.0.113.2/32", "release 2001:db8:2::/64"}; !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	if c := changes[0]; c.Actor != "remediation" || c.Note != "customer cleaned up" || !slices.Contains(c.Entry.ReleasedIncidents, "i1") {
		t.Errorf("release %+v: want by remediation with the note, i1 released too", c)
	}
	if got := activePrefixes(p); got != "203.0.113.3/32" {
		t.Errorf("active %q, want the other case's entry alone", got)
	}
	// Final: the alert's incident does not block the prefix again.
	if ch := p.Apply(mkAlert("i1", "smtp_fanout", "update", "203.0.113.2", at(4))); len(ch) != 0 {
		t.Errorf("i1 after the release: %v, want nothing", changeTypes(ch))
	}
	if _, err := p.ReleaseIncidents([]string{"case-1:walled:1"}, "remediation", "", at(5)); !errors.Is(err, ErrNotBlocked) {
		t.Errorf("released again: %v, want ErrNotBlocked", err)
	}
}

// TestActionsNameWalled: containment.actions and a manual add may name
// walled; an alert's walled entry goes up to quarantine, not down.
func TestActionsNameWalled(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	cfg.Actions.DstEntropy = ActionWalled
	if err := cfg.Validate(); err != nil {
		t.Fatalf("actions.dst_entropy walled: %v", err)
	}
	p := NewPolicy(cfg, nil, nil)
	runSteps(t, p, []step{
		{alert: ptr(mkAlert("i1", "dst_entropy", "open", "203.0.113.2", at(0))), want: []string{"add"}, active: []string{"walled 203.0.113.2"}},
		{alert: ptr(mkAlert("i2", "smtp_fanout", "open", "203.0.113.2", at(1))), want: []string{"extend"}, active: []string{"walled 203.0.113.2"}},
		{alert: ptr(mkAlert("i3", "darknet", "open", "203.0.113.2", at(2))), want: []string{"add"}, active: []string{"quarantine 203.0.113.2"}},
	})
	if ch, err := p.Add(netip.MustParsePrefix("203.0.113.9/32"), ActionWalled, "carol", "", 0, at(3)); err != nil || ch.Entry.Action != ActionWalled {
		t.Errorf("manual walled add: %+v, %v", ch, err)
	}
	cfg.Actions.Darknet = "garden"
	if err := cfg.Validate(); err == nil {
		t.Error("actions.darknet garden validated")
	}
}

func TestWalledValidate(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name string
		w    WalledConfiguration
		ok   bool
	}{
		{"none", WalledConfiguration{}, true},
		{"one per family", WalledConfiguration{Redirect: []netip.AddrPort{ap("192.0.2.80:8080"), ap("[2001:db8::80]:80")},
			Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::/48")}}, true},
		{"two IPv4", WalledConfiguration{Redirect: []netip.AddrPort{ap("192.0.2.80:80"), ap("192.0.2.81:80")}}, false},
		{"two IPv6", WalledConfiguration{Redirect: []netip.AddrPort{ap("[2001:db8::80]:80"), ap("[2001:db8::81]:80")}}, false},
		{"port 0", WalledConfiguration{Redirect: []netip.AddrPort{ap("192.0.2.80:0")}}, false},
		{"unspecified", WalledConfiguration{Redirect: []netip.AddrPort{ap("0.0.0.0:80")}}, false},
		{"zero", WalledConfiguration{Redirect: []netip.AddrPort{{}}}, false},
		{"zone", WalledConfiguration{Redirect: []netip.AddrPort{ap("[fe80::1%eth0]:80")}}, false},
		{"bad allow", WalledConfiguration{Allow: []netip.Prefix{{}}}, false},
		{"mapped allow", WalledConfiguration{Allow: []netip.Prefix{netip.MustParsePrefix("::ffff:198.51.100.0/120")}}, false},
	} {
		err := tc.w.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
		cfg := testConfig()
		cfg.Walled = tc.w
		if err2 := cfg.Validate(); (err2 == nil) != tc.ok {
			t.Errorf("%s: Configuration.Validate %v, want ok %v", tc.name, err2, tc.ok)
		}
	}
}

// The walled garden's shape comes from the remediation section alone:
// the loader knows no containment.walled key, in the file or the
// environment.
func TestWalledNotAKey(t *testing.T) {
	var cfg struct {
		Containment Configuration `yaml:"containment"`
	}
	cfg.Containment = DefaultConfiguration()
	err := config.Load(&cfg, "", []string{"WORMSIGN_CONTAINMENT_WALLED_ALLOW=198.51.100.0/24"})
	if err == nil || !strings.Contains(err.Error(), "WORMSIGN_CONTAINMENT_WALLED_ALLOW") {
		t.Errorf("environment: %v, want WORMSIGN_CONTAINMENT_WALLED_ALLOW unknown", err)
	}
	file := filepath.Join(t.TempDir(), "wormsign.yaml")
	if err := os.WriteFile(file, []byte("containment:\n  walled:\n    allow: [198.51.100.0/24]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := config.Load(&cfg, file, nil); err == nil {
		t.Error("containment.walled in the file loaded, want an unknown key")
	}
}
