package remediation

import (
	"context"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
)

// TestCasesSurviveRestart: on both servers, the cases and their history
// are in ClickHouse before the alert is done with, and a new process
// restores them: the case goes on where it was (its ladder, its
// self-releases), a relapse reopens it instead of opening another.
func TestCasesSurviveRestart(t *testing.T) {
	testenv.ForEachClickHouse(t, func(t *testing.T, addr string) {
		cfg := clickhousedb.DefaultConfiguration()
		cfg.Addr = addr
		cfg.Database = testenv.Name(t, "wsrem")
		db := chtest.Database(t, cfg)
		rc := testConfig()
		rc.Ladder = []Step{{StepNotify, 0}, {StepWalled, 0}, {StepBlock, 24 * time.Hour}}
		start := func() (*Component, bus.Producer) {
			b := bus.NewMemory(64)
			c, err := New(rc, Dependencies{Bus: b, AlertsTopic: "alerts", ClickHouse: db})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			prod, _ := b.Producer("alerts")
			return c, prod
		}
		c, prod := start()
		publish(t, prod, zombieAlert("inc-1", alert.StateOpen, t0))
		// No containment here: the walled step is recorded as refused.
		cs, _ := waitCase(t, c, "cust-42", func(_ Case, evs []Event) bool { return len(evs) >= 4 })
		if err := c.act(context.Background(), func(b *Casebook, now time.Time) (Result, error) { return b.SelfRelease(cs.ID, now) }); err != nil {
			t.Fatal(err)
		}
		before, beforeEvents, _ := c.Case(cs.ID)
		c.Stop()

		var rows, events uint64
		db.Conn().QueryRow(context.Background(), "SELECT count() FROM "+cfg.Database+".cases FINAL").Scan(&rows)
		db.Conn().QueryRow(context.Background(), "SELECT count() FROM "+cfg.Database+".case_events FINAL").Scan(&events)
		if rows != 1 || int(events) != len(beforeEvents) {
			t.Errorf("ClickHouse holds %d cases and %d events, want 1 and %d", rows, events, len(beforeEvents))
		}

		c, prod = start()
		defer c.Stop()
		after, afterEvents, ok := c.Case(cs.ID)
		if !ok || after.Version != before.Version || after.State != StateReleased || len(after.SelfReleases) != 1 {
			t.Fatalf("restored case %+v, want %+v", after, before)
		}
		if len(afterEvents) != len(beforeEvents) || afterEvents[0].Type != EventOpen || afterEvents[len(afterEvents)-1].Type != EventSelfRelease {
			t.Errorf("restored history %v, want %v", eventTypes(afterEvents), eventTypes(beforeEvents))
		}
		publish(t, prod, zombieAlert("inc-2", alert.StateOpen, t0.Add(time.Hour)))
		got, _ := waitCase(t, c, "cust-42", func(cs Case, _ []Event) bool { return cs.State == StateBlocked })
		if got.ID != cs.ID || got.Reopens != 1 || len(c.Cases()) != 1 {
			t.Errorf("relapse after the restart: %+v, want the same case reopened and blocked", got)
		}
	})
}
