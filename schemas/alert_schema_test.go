package schemas

import (
	"encoding/json"
	"os"
	"slices"
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
	checkNestedEvidence(t, raw)
}

// checkNestedEvidence: for every kind, an alert with all its evidence
// objects filled emits only keys the schema describes, at every level,
// and its kind and trigger are among the schema's values.
func checkNestedEvidence(t *testing.T, raw []byte) {
	t.Helper()
	type node struct {
		Enum       []string        `json:"enum"`
		Properties map[string]node `json:"properties"`
	}
	var schema node
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	ev := alert.Evidence{SampleDsts: []string{"198.18.0.1"}, Saturated: true, SamplingRate: 10, Group: "g",
		Sequential: &alert.Sequential{Decision: "infected"}, Entropy: &alert.Entropy{Thinning: 2},
		Darknet: &alert.Darknet{Ports: []uint16{23}, Protocols: []string{"tcp"}, FirstContact: now},
		Relay:   &alert.Relay{Connections: 1, Relays: []string{"198.18.0.25"}, Ports: []uint16{587}},
		Flood:   &alert.Flood{Target: "198.18.0.7", Protocol: "udp", Traffic: "udp", Ports: []uint16{80}}}
	triggers := map[string][]string{
		alert.KindSMTPFanout: {"threshold", "slow_window", "sequential"}, alert.KindDstEntropy: {"worm_pattern", "baseline_departure"},
		alert.KindDarknet: {"min_dsts"}, alert.KindRelayAbuse: {"max_connections", "max_bytes", "baseline_departure"},
		alert.KindOutboundFlood: {"max_pps", "max_bps", "max_flows_per_minute", "baseline_departure"},
	}
	var check func(path string, v any, n node)
	check = func(path string, v any, n node) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, sub := range m {
			d, ok := n.Properties[k]
			if !ok {
				t.Errorf("alert emits %s.%s, which the schema does not describe", path, k)
				continue
			}
			check(path+"."+k, sub, d)
		}
	}
	for _, kind := range alert.Kinds {
		if !slices.Contains(schema.Properties["kind"].Enum, kind) {
			t.Errorf("kind %q is not in the schema's enum", kind)
		}
		for _, trig := range triggers[kind] {
			if !slices.Contains(schema.Properties["evidence"].Properties["trigger"].Enum, trig) {
				t.Errorf("trigger %q of %s is not in the schema's enum", trig, kind)
			}
		}
		e := ev
		e.Trigger = triggers[kind][0]
		a := alert.Alert{ID: "x", Kind: kind, State: alert.StateOpen, WindowStart: now, WindowEnd: now, FirstSeen: now, LastSeen: now, Evidence: e}
		b, err := a.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		check("alert", got, schema)
	}
}
