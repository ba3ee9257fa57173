package schemas

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// TestAlertMatchesSchema keeps alert.schema.json and the Go encoder in step:
// every required property is emitted with the declared JSON type, and the
// encoder emits nothing the schema does not name.
func TestAlertMatchesSchema(t *testing.T) {
	raw, err := os.ReadFile("alert.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Required   []string `json:"required"`
		Properties map[string]struct {
			Type       string                     `json:"type"`
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatalf("alert.schema.json: %v", err)
	}
	now := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	a := alert.Alert{ID: "x", Kind: alert.KindSMTPFanout, State: alert.StateOpen, SubscriberIP: "203.0.113.2",
		WindowStart: now, WindowEnd: now, FirstSeen: now, LastSeen: now, DistinctDsts: 1, Flows: 1, Score: 1,
		Evidence: alert.Evidence{Saturated: true, Trigger: "sequential", SamplingRate: 10, Group: "g",
			Sequential: &alert.Sequential{}, Entropy: &alert.Entropy{}}}
	b, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, name := range schema.Required {
		v, ok := got[name]
		if !ok {
			t.Errorf("required property %q missing from %s", name, b)
			continue
		}
		want := schema.Properties[name].Type
		var have string
		switch v.(type) {
		case string:
			have = "string"
		case float64:
			have = "number"
			if want == "integer" {
				have = "integer"
			}
		case map[string]any:
			have = "object"
		}
		if have != want {
			t.Errorf("property %q is a JSON %s, schema says %s", name, have, want)
		}
	}
	for name := range got {
		if _, ok := schema.Properties[name]; !ok {
			t.Errorf("alert emits %q, which the schema does not describe", name)
		}
	}
	for name := range got["evidence"].(map[string]any) {
		if _, ok := schema.Properties["evidence"].Properties[name]; !ok {
			t.Errorf("alert evidence emits %q, which the schema does not describe", name)
		}
	}
}
