package console

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/containment"
)

// failingAcks is a store whose acks cannot be written.
type failingAcks struct{ Store }

func (failingAcks) AddAck(context.Context, string, Ack) error {
	return errors.New("clickhouse: connection refused")
}

// ackAnswerJSON is what the tests read of an ack's answer.
type ackAnswerJSON struct {
	Error    string `json:"error"`
	ID       string `json:"id"`
	Ack      *Ack   `json:"ack"`
	Recorded bool   `json:"recorded"`
	Hold     string `json:"hold"`
}

func postAck(t *testing.T, url, id, body string) (int, ackAnswerJSON) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/api/v1/incidents/"+id+"/ack", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a ackAnswerJSON
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("ack answer %q: %v", raw, err)
	}
	return resp.StatusCode, a
}

// TestAckHoldAtomic: an ack that asks for a hold records both or neither,
// with containment itself as the holder, and says which: a hold that
// cannot be applied stores no ack; an ack that cannot be stored takes its
// hold back.
func TestAckHoldAtomic(t *testing.T) {
	c, srv, publish := newTestConsole(t)
	cb := bus.NewMemory(64)
	ccfg := containment.DefaultConfiguration()
	ccfg.Enabled, ccfg.Grace = true, 0
	cont, err := containment.New(ccfg, containment.Dependencies{Logger: slog.New(slog.DiscardHandler), Bus: cb, AlertsTopic: "alerts",
		Now: func() time.Time { return testNow.Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := cont.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cont.Stop() })
	c.deps.Holder = cont

	// The console knows incidents h1 and h2; containment blocks h1 only.
	publish(testAlert("h1", alert.StateOpen, 2, 0), testAlert("h2", alert.StateOpen, 2, 0))
	waitIncidents(t, c, 2)
	prod, _ := cb.Producer("alerts")
	h1 := testAlert("h1", alert.StateOpen, 2, 0)
	v, _ := h1.Marshal()
	if err := prod.Publish(context.Background(), bus.Message{Value: v}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(cont.List().Active) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("containment never blocked h1")
		}
		time.Sleep(10 * time.Millisecond)
	}
	acks := func(id string) int {
		t.Helper()
		_, body := get(t, srv, "/api/v1/incidents/"+id, true)
		var d struct{ Acks []Ack }
		json.Unmarshal(body, &d)
		return len(d.Acks)
	}

	// A hold that cannot be applied (h2 has no block): no ack either.
	code, a := postAck(t, srv.URL, "h2", `{"note":"calling","hold":true}`)
	if code != 400 || a.Recorded || a.Ack != nil || a.Hold != "refused" || !strings.Contains(a.Error, "hold") {
		t.Errorf("ack with a hold that fails: %d %+v, want 400, not recorded, hold refused", code, a)
	}
	if n := acks("h2"); n != 0 {
		t.Errorf("h2 has %d acks after its hold failed, want none", n)
	}

	// An ack that cannot be stored: the hold it asked for is undone.
	store := c.store
	c.store = failingAcks{store}
	code, a = postAck(t, srv.URL, "h1", `{"note":"calling","hold":true}`)
	c.store = store
	if code != 503 || a.Recorded || a.Ack != nil || a.Hold != "undone" {
		t.Errorf("ack that cannot be stored: %d %+v, want 503, not recorded, hold undone", code, a)
	}
	if l := cont.List(); len(l.Active) != 1 || len(l.Waiting) != 0 {
		t.Errorf("after the undone hold: active %+v, waiting %+v, want h1's block back as it was", l.Active, l.Waiting)
	}

	// Both: 201, the ack and the hold.
	code, a = postAck(t, srv.URL, "h1", `{"note":"calling","hold":true}`)
	if code != 201 || !a.Recorded || a.Ack == nil || a.Ack.By == "" || a.Hold != "held" || a.ID != "h1" {
		t.Errorf("ack with hold: %d %+v, want 201, recorded, held", code, a)
	}
	if l := cont.List(); len(l.Active) != 0 || len(l.Waiting) != 1 || l.Waiting[0].State != containment.StateHeld {
		t.Errorf("after the ack with hold: active %+v, waiting %+v, want h1 held", l.Active, l.Waiting)
	}
	if n := acks("h1"); n != 1 {
		t.Errorf("h1 has %d acks, want 1", n)
	}
	// Without hold: recorded, hold "none".
	if code, a = postAck(t, srv.URL, "h2", `{"note":"called"}`); code != 201 || !a.Recorded || a.Hold != "none" {
		t.Errorf("ack without hold: %d %+v", code, a)
	}
}
