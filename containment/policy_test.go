package containment

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/network"
)

var t0 = time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)

func at(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }

func mkAlert(id, kind, state, ip string, lastSeen time.Time) alert.Alert {
	return alert.Alert{ID: id, Kind: kind, State: state, SubscriberIP: ip, SubscriberID: "cust-" + ip,
		WindowEnd: lastSeen, LastSeen: lastSeen}
}

func testConfig() Configuration {
	c := DefaultConfiguration()
	c.Enabled = true
	c.Grace = 30 * time.Minute
	c.Hold = 2 * time.Hour
	c.Duration = 4 * time.Hour
	return c
}

// step is one input to the policy and what must follow.
type step struct {
	alert   *alert.Alert
	advance time.Time
	hold    string // incident id
	release string // prefix
	add     string
	at      time.Time
	want    []string // change types
	active  []string // exported addresses after the step
}

func runSteps(t *testing.T, p *Policy, steps []step) {
	t.Helper()
	for i, s := range steps {
		var got []Change
		now := s.at
		switch {
		case s.alert != nil:
			got = p.Apply(*s.alert)
			now = eventTime(*s.alert)
		case s.hold != "":
			ch, err := p.Hold(s.hold, "alice", "customer called", s.at)
			if err != nil {
				t.Fatalf("step %d: hold: %v", i, err)
			}
			got = []Change{ch}
		case s.release != "":
			ch, err := p.Release(netip.MustParsePrefix(s.release), "bob", "fixed", s.at)
			if err != nil {
				t.Fatalf("step %d: release: %v", i, err)
			}
			got = []Change{ch}
		case s.add != "":
			ch, err := p.Add(network.MustParsePrefix(s.add).Prefix, "", "carol", "complaint", 0, s.at)
			if err != nil {
				t.Fatalf("step %d: add: %v", i, err)
			}
			got = []Change{ch}
		default:
			got = p.Advance(s.advance)
			now = s.advance
		}
		types := []string{}
		for _, c := range got {
			types = append(types, c.Type)
		}
		want := s.want
		if want == nil {
			want = []string{}
		}
		if diff := cmp.Diff(want, types); diff != "" {
			t.Errorf("step %d: changes (-want +got):\n%s", i, diff)
		}
		active := []string{}
		for _, e := range MakeList(p.Entries(), now, false).Active {
			active = append(active, e.Action+" "+entryText(e))
		}
		wantActive := s.active
		if wantActive == nil {
			wantActive = []string{}
		}
		if diff := cmp.Diff(wantActive, active); diff != "" {
			t.Errorf("step %d: list (-want +got):\n%s", i, diff)
		}
	}
}

func ptr(a alert.Alert) *alert.Alert { return &a }

func TestPolicyOnEventTime(t *testing.T) {
	const z = "203.0.113.2"
	blocked := []string{"block_smtp " + z}
	for _, tc := range []struct {
		name  string
		grace time.Duration
		steps []step
	}{
		{"grace then block, extend while open, expire after last activity", 30 * time.Minute, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"schedule"}},
			{advance: at(29)},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(29)))},
			{advance: at(30), want: []string{"add"}, active: blocked},
			// Block lasts duration (4h) from the block; an update at 60
			// moves the expiry to 60+4h.
			{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(60))), want: []string{"extend"}, active: blocked},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(70))), want: []string{"incident"}, active: blocked},
			{advance: at(60 + 239), active: blocked},
			{advance: at(60 + 240), want: []string{"release"}},
			// The same incident does not come back; a new one does.
			{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(301)))},
			{alert: ptr(mkAlert("i2", "smtp_fanout", "open", z, at(400))), want: []string{"schedule"}},
		}},
		{"grace 0 blocks at once", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{advance: at(240), want: []string{"release"}},
		}},
		{"hold postpones the block; it comes when the hold ends", 30 * time.Minute, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"schedule"}},
			{hold: "i1", at: at(10), want: []string{"hold"}},
			{advance: at(129)},
			{advance: at(130), want: []string{"add"}, active: blocked},
		}},
		{"hold lifts an active block; resolved while held releases", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{hold: "i1", at: at(5), want: []string{"hold"}},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(20))), want: []string{"release"}},
			{advance: at(200)},
		}},
		{"manual release; the incident does not put it back", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{release: z + "/32", at: at(3), want: []string{"release"}},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(4)))},
		}},
		{"quarantine upgrades a block", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{alert: ptr(mkAlert("i2", "dst_entropy", "open", z, at(1))), want: []string{"add"}, active: []string{"quarantine " + z}},
			{alert: ptr(mkAlert("i3", "relay_abuse", "open", "203.0.113.9", at(2))), active: []string{"quarantine " + z}},
		}},
		{"manual add expires after duration", 0, []step{
			{add: "203.0.113.8", at: at(0), want: []string{"add"}, active: []string{"block_smtp 203.0.113.8"}},
			{advance: at(240), want: []string{"release"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Grace = tc.grace
			runSteps(t, NewPolicy(cfg, nil, nil), tc.steps)
		})
	}
}

func TestPolicyAllowListGroupsMaxEntries(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	cfg.MaxEntries = 2
	cfg.Groups = []GroupConfiguration{
		{Name: "business", Disable: true}, // networks from the detector group
		{Name: "lab", Networks: []network.Prefix{network.MustParsePrefix("203.0.113.64/28")},
			Actions: ActionsConfiguration{SMTPFanout: ActionQuarantine}},
	}
	p := NewPolicy(cfg, []network.Prefix{network.MustParsePrefix("203.0.113.25")},
		map[string][]network.Prefix{"business": {network.MustParsePrefix("198.51.100.0/24")}})
	runSteps(t, p, []step{
		{alert: ptr(mkAlert("a", "smtp_fanout", "open", "203.0.113.25", at(0)))}, // allow list
		{alert: ptr(mkAlert("b", "smtp_fanout", "open", "198.51.100.7", at(1)))}, // group disabled
		{alert: ptr(mkAlert("c", "smtp_fanout", "open", "203.0.113.66", at(2))), want: []string{"add"},
			active: []string{"quarantine 203.0.113.66"}},
		{alert: ptr(mkAlert("d", "smtp_fanout", "open", "203.0.113.2", at(3))), want: []string{"add"},
			active: []string{"block_smtp 203.0.113.2", "quarantine 203.0.113.66"}},
		{alert: ptr(mkAlert("e", "smtp_fanout", "open", "203.0.113.3", at(4))), want: []string{"refuse"},
			active: []string{"block_smtp 203.0.113.2", "quarantine 203.0.113.66"}},
	})
	if _, err := p.Add(netip.MustParsePrefix("203.0.113.4/32"), "", "carol", "", 0, at(5)); !errors.Is(err, ErrFull) {
		t.Errorf("manual add beyond max_entries: %v, want ErrFull", err)
	}
	if _, err := p.Add(netip.MustParsePrefix("203.0.113.25/32"), "", "carol", "", 0, at(5)); !errors.Is(err, ErrAllowed) {
		t.Errorf("manual add of an allow-listed address: %v, want ErrAllowed", err)
	}
	if _, err := p.Add(netip.MustParsePrefix("203.0.113.0/24"), "", "carol", "", 0, at(5)); !errors.Is(err, ErrBadInput) {
		t.Errorf("manual add of a /24 with widest_prefix_v4 32: %v, want ErrBadInput", err)
	}
}

// TestPolicyRestore: a second policy fed the first one's changes, in order,
// holds the same list; records read twice change nothing.
func TestPolicyRestore(t *testing.T) {
	cfg := testConfig()
	a := NewPolicy(cfg, nil, nil)
	var log []Change
	log = append(log, a.Apply(mkAlert("i1", "smtp_fanout", "open", "203.0.113.2", at(0)))...)
	log = append(log, a.Apply(mkAlert("i2", "dst_entropy", "open", "203.0.113.3", at(1)))...)
	log = append(log, a.Advance(at(40))...)
	ch, err := a.Hold("i2", "alice", "", at(41))
	if err != nil {
		t.Fatal(err)
	}
	log = append(log, ch)
	b := NewPolicy(cfg, nil, nil)
	for _, c := range append(log, log...) {
		b.Restore(c, false)
	}
	if diff := cmp.Diff(a.Entries(), b.Entries(), cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("restored list (-want +got):\n%s", diff)
	}
	// Timers on both give the same changes, with the same ids.
	ca, cb := a.Advance(at(300)), b.Advance(at(300))
	if diff := cmp.Diff(ca, cb, cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("timer changes differ (-a +b):\n%s", diff)
	}
}

// TestPolicyReleaseFinalAfterUpgrade: a release by hand is final for every
// incident the entry carried, also the one an upgrade (a stronger action
// from another incident) replaced as the entry's latest, also after a
// restart from the state file, and for a customer's entry wherever the
// customer goes.
func TestPolicyReleaseFinalAfterUpgrade(t *testing.T) {
	const z = "203.0.113.2"
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	runSteps(t, p, []step{
		{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: []string{"block_smtp " + z}},
		{alert: ptr(mkAlert("i2", "dst_entropy", "open", z, at(1))), want: []string{"add"}, active: []string{"quarantine " + z}},
		{release: z + "/32", at: at(2), want: []string{"release"}},
		// The upgraded-from incident's next update must not block again.
		{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(3)))},
		{alert: ptr(mkAlert("i2", "dst_entropy", "update", z, at(4)))},
	})
	// The same after a restart from the state file.
	raw, err := json.Marshal(p.Records())
	if err != nil {
		t.Fatal(err)
	}
	var records []Entry
	if err := json.Unmarshal(raw, &records); err != nil {
		t.Fatal(err)
	}
	q := NewPolicy(cfg, nil, nil)
	for _, e := range records {
		q.Restore(Change{Entry: e}, true)
	}
	runSteps(t, q, []step{
		{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(5)))},
		{alert: ptr(mkAlert("i2", "dst_entropy", "update", z, at(6)))},
		// A new incident blocks; the released ones neither extend nor
		// upgrade it.
		{alert: ptr(mkAlert("i3", "smtp_fanout", "open", z, at(7))), want: []string{"add"}, active: []string{"block_smtp " + z}},
		{alert: ptr(mkAlert("i2", "dst_entropy", "update", z, at(8))), active: []string{"block_smtp " + z}},
		{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(9))), active: []string{"block_smtp " + z}},
		{release: z + "/32", at: at(10), want: []string{"release"}},
		{alert: ptr(mkAlert("i3", "smtp_fanout", "update", z, at(11)))},
		{alert: ptr(mkAlert("i1", "smtp_fanout", "update", z, at(12)))},
	})

	// A customer's entry released by hand does not come back on the
	// customer's next address.
	c := NewPolicy(cfg, nil, nil)
	held := map[string][]netip.Prefix{"A": {netip.MustParsePrefix("203.0.113.7/32")}}
	c.SetHoldings(func(cu string, _ time.Time) []netip.Prefix { return held[cu] })
	withCustomer := func(a alert.Alert) *alert.Alert {
		a.Evidence.Identity = &alert.Identity{Customer: "A"}
		return &a
	}
	runSteps(t, c, []step{
		{alert: withCustomer(mkAlert("c1", "smtp_fanout", "open", "203.0.113.7", at(0))), want: []string{"add"}, active: []string{"block_smtp 203.0.113.7"}},
		{alert: withCustomer(mkAlert("c2", "dst_entropy", "open", "203.0.113.7", at(1))), want: []string{"add"}, active: []string{"quarantine 203.0.113.7"}},
		{release: "203.0.113.7/32", at: at(2), want: []string{"release"}},
	})
	held["A"] = []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}
	runSteps(t, c, []step{
		{alert: withCustomer(mkAlert("c1", "smtp_fanout", "update", "203.0.113.9", at(3)))},
		{alert: withCustomer(mkAlert("c2", "dst_entropy", "update", "203.0.113.9", at(4)))},
	})
}

// TestPolicyHoldEndsOnResolvedIncident: a hold that ends after its
// incident resolved (before the hold or while it ran, on this instance or
// on the one that decided on the alert) releases the entry rather than
// blocking it again; one that ends while an incident of the entry is
// still open blocks.
func TestPolicyHoldEndsOnResolvedIncident(t *testing.T) {
	const z = "203.0.113.2"
	blocked := []string{"block_smtp " + z}
	for _, tc := range []struct {
		name  string
		grace time.Duration
		steps []step
	}{
		{"resolved before the hold", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(10))), want: []string{"incident"}, active: blocked},
			{hold: "i1", at: at(20), want: []string{"hold"}},
			{advance: at(139)},
			{advance: at(140), want: []string{"release"}},
			{advance: at(600)},
		}},
		{"resolved within the grace, held after", 30 * time.Minute, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"schedule"}},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(10))), want: []string{"incident"}},
			{hold: "i1", at: at(20), want: []string{"hold"}},
			{advance: at(140), want: []string{"release"}},
		}},
		{"one of two incidents resolved while held: the other blocks", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{alert: ptr(mkAlert("i2", "smtp_fanout", "open", z, at(1))), want: []string{"extend"}, active: blocked},
			{hold: "i1", at: at(20), want: []string{"hold"}},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(30))), want: []string{"incident"}},
			{advance: at(140), want: []string{"add"}, active: blocked},
		}},
		{"both resolved while held", 0, []step{
			{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: blocked},
			{alert: ptr(mkAlert("i2", "smtp_fanout", "open", z, at(1))), want: []string{"extend"}, active: blocked},
			{hold: "i2", at: at(20), want: []string{"hold"}},
			{alert: ptr(mkAlert("i1", "smtp_fanout", "resolved", z, at(30))), want: []string{"incident"}},
			{alert: ptr(mkAlert("i2", "smtp_fanout", "resolved", z, at(40))), want: []string{"release"}},
			{advance: at(600)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Grace = tc.grace
			runSteps(t, NewPolicy(cfg, nil, nil), tc.steps)
		})
	}
	// Another instance learns of the resolution from the topic alone
	// and releases at the hold's end with the same change.
	cfg := testConfig()
	cfg.Grace = 0
	a := NewPolicy(cfg, nil, nil)
	var log []Change
	log = append(log, a.Apply(mkAlert("i1", "smtp_fanout", "open", z, at(0)))...)
	log = append(log, a.Apply(mkAlert("i1", "smtp_fanout", "resolved", z, at(10)))...)
	ch, err := a.Hold("i1", "alice", "", at(20))
	if err != nil {
		t.Fatal(err)
	}
	log = append(log, ch)
	b := NewPolicy(cfg, nil, nil)
	for _, c := range log {
		b.Restore(c, true)
	}
	ca, cb := a.Advance(at(140)), b.Advance(at(140))
	if diff := cmp.Diff(ca, cb, cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("timer changes differ (-a +b):\n%s", diff)
	}
	if len(cb) != 1 || cb[0].Type != ChangeRelease {
		t.Errorf("hold end on the other instance: %+v, want a release", cb)
	}
}

// TestPolicyRemovesReleased: a released entry is removed
// released_retention after its release (a "remove" change: a tombstone on
// the topic), not before; it then no longer remembers its incidents.
func TestPolicyRemovesReleased(t *testing.T) {
	const z = "203.0.113.2"
	cfg := testConfig()
	cfg.Grace = 0
	cfg.ReleasedRetention = 48 * time.Hour
	p := NewPolicy(cfg, nil, nil)
	runSteps(t, p, []step{
		{alert: ptr(mkAlert("i1", "smtp_fanout", "open", z, at(0))), want: []string{"add"}, active: []string{"block_smtp " + z}},
		{release: z + "/32", at: at(10), want: []string{"release"}},
		{add: "203.0.113.8", at: at(20), want: []string{"add"}, active: []string{"block_smtp 203.0.113.8"}},
		{advance: at(20 + 240), want: []string{"release"}}, // the manual add expires
		{advance: at(10 + 48*60 - 1)},
	})
	if n := len(p.Records()); n != 2 {
		t.Fatalf("%d records before the retention ends, want 2", n)
	}
	got := p.Advance(at(20 + 240 + 48*60))
	var removed []string
	for _, c := range got {
		if c.Type != ChangeRemove || c.Entry.State != StateReleased {
			t.Errorf("change %+v, want remove of a released entry", c)
		}
		removed = append(removed, c.Entry.Prefix.String())
	}
	if diff := cmp.Diff([]string{z + "/32", "203.0.113.8/32"}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if n := len(p.Records()); n != 0 {
		t.Errorf("%d records after the retention, want 0", n)
	}
	// A tombstone read back removes the entry (Remove), and only a
	// released one is ever removed by the timer.
	q := NewPolicy(cfg, nil, nil)
	q.Apply(mkAlert("i2", "smtp_fanout", "open", "203.0.113.3", at(0)))
	if !q.Remove(netip.MustParsePrefix("203.0.113.3/32")) || len(q.Records()) != 0 {
		t.Errorf("Remove left %+v", q.Records())
	}
	if q.Remove(netip.MustParsePrefix("203.0.113.3/32")) {
		t.Errorf("a second Remove removed something")
	}
}

// TestPolicyAddOverlappingAllowList: a manual prefix that covers any
// allow-listed address is refused, not only one whose first address is
// allow-listed.
func TestPolicyAddOverlappingAllowList(t *testing.T) {
	cfg := testConfig()
	cfg.WidestPrefixV4, cfg.WidestPrefixV6 = 24, 48
	cfg.AllowList = []network.Prefix{network.MustParsePrefix("2001:db8:0:1::/64")}
	p := NewPolicy(cfg, []network.Prefix{network.MustParsePrefix("203.0.113.25"), network.MustParsePrefix("198.51.100.128/25")}, nil)
	for _, pfx := range []string{"203.0.113.25/32", "203.0.113.16/28", "203.0.113.0/24", "198.51.100.0/24", "198.51.100.200/32", "2001:db8::/48"} {
		if _, err := p.Add(netip.MustParsePrefix(pfx), "", "carol", "", 0, at(0)); !errors.Is(err, ErrAllowed) {
			t.Errorf("manual add of %s: %v, want ErrAllowed", pfx, err)
		}
	}
	for _, pfx := range []string{"203.0.113.32/28", "198.51.100.0/25", "2001:db8:0:2::/64"} {
		if _, err := p.Add(netip.MustParsePrefix(pfx), "", "carol", "", 0, at(0)); err != nil {
			t.Errorf("manual add of %s: %v", pfx, err)
		}
	}
	if n := len(p.Entries()); n != 3 {
		t.Errorf("%d entries, want the 3 that do not overlap the allow list", n)
	}
}

// TestPolicyUnhold: a hold taken back leaves the entry as it was before:
// a pending one blocks when its grace ends, an active one keeps its
// expiry; a hold that is over cannot be taken back.
func TestPolicyUnhold(t *testing.T) {
	const z = "203.0.113.2"
	cfg := testConfig()
	p := NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("i1", "smtp_fanout", "open", z, at(0)))
	befores, helds, err := p.hold("i1", "alice", "", at(5))
	if err != nil {
		t.Fatal(err)
	}
	before, held := befores[0], helds[0]
	got, err := p.Unhold(before, held, "alice", "ack not stored", at(6))
	if err != nil || len(got) != 1 || got[0].Type != ChangeSchedule || got[0].Entry.State != StatePending || !got[0].Entry.BlockAt.Equal(at(30)) {
		t.Fatalf("unhold of a pending entry: %+v %v, want it pending until 30", got, err)
	}
	if got := p.Advance(at(30)); len(got) != 1 || got[0].Type != ChangeAdd {
		t.Fatalf("grace end after the unhold: %+v, want add", got)
	}
	expires := p.Entries()[0].Expires
	befores, helds, err = p.hold("i1", "alice", "", at(40))
	if err != nil {
		t.Fatal(err)
	}
	before, held = befores[0], helds[0]
	got, err = p.Unhold(before, held, "alice", "ack not stored", at(41))
	if err != nil || len(got) != 1 || got[0].Type != ChangeAdd || !got[0].Entry.Expires.Equal(expires) {
		t.Fatalf("unhold of an active entry: %+v %v, want it active until %s", got, err, expires)
	}
	if _, err := p.Unhold(before, held, "alice", "again", at(42)); err == nil {
		t.Errorf("a second unhold of the same hold succeeded")
	}
}

// A hold lifts every block of the incident: a dual-stack customer's IPv4
// address and IPv6 prefix are an entry each.
func TestPolicyHoldsEveryEntryOfTheIncident(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	held := []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("2001:db8:7::/64")}
	p.SetHoldings(func(string, time.Time) []netip.Prefix { return held })
	a := mkAlert("i1", "smtp_fanout", "open", "203.0.113.7", at(0))
	a.Evidence.Identity = &alert.Identity{Customer: "A"}
	p.Apply(a)
	if n := len(MakeList(p.Entries(), at(1), false).Active); n != 2 {
		t.Fatalf("%d active entries, want the customer's two", n)
	}
	if _, err := p.Hold("i1", "ann", "calling the customer", at(2)); err != nil {
		t.Fatal(err)
	}
	if l := MakeList(p.Entries(), at(3), false); len(l.Active) != 0 {
		t.Errorf("after the hold still active: %+v, want every entry of the incident held", l.Active)
	}
}

// TestManualCallsKeepTimerChanges: a manual add, release or hold first runs
// the timers up to its time; the expiry they make is handed over
// (Deferred) to be recorded, not lost.
func TestManualCallsKeepTimerChanges(t *testing.T) {
	cfg := testConfig()
	cfg.Grace = 0
	p := NewPolicy(cfg, nil, nil)
	p.Apply(mkAlert("inc-1", "smtp_fanout", alert.StateOpen, "203.0.113.7", at(0)))
	if d := p.Deferred(); len(d) != 0 {
		t.Fatalf("deferred after an alert: %v", d)
	}
	// The block expires at 4 h; the add comes at 5 h.
	if _, err := p.Add(netip.MustParsePrefix("203.0.113.9/32"), ActionBlockSMTP, "alice", "", 0, at(300)); err != nil {
		t.Fatal(err)
	}
	d := p.Deferred()
	if len(d) != 1 || d[0].Type != ChangeRelease || d[0].Entry.Prefix != netip.MustParsePrefix("203.0.113.7/32") {
		t.Fatalf("deferred after the add: %+v, want the expiry of 203.0.113.7", d)
	}
	if d := p.Deferred(); len(d) != 0 {
		t.Errorf("deferred twice: %v", d)
	}
}
