package alert

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMarshalRoundTrip(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	a := Alert{
		ID: "abc", Kind: KindDstEntropy, State: StateUpdate, SubscriberIP: "203.0.113.9", SubscriberID: "cust-9",
		WindowStart: time.Date(2026, 11, 27, 11, 0, 0, 0, paris), WindowEnd: time.Date(2026, 11, 27, 11, 5, 0, 0, paris),
		FirstSeen: time.Date(2026, 11, 27, 11, 1, 0, 0, paris), LastSeen: time.Date(2026, 11, 27, 11, 4, 0, 0, paris),
		DistinctDsts: 200, Flows: 210, Score: 3.9, Exporter: "192.0.2.1",
		Evidence: Evidence{Trigger: "worm_pattern", SamplingRate: 100,
			Entropy: &Entropy{DstAddr: 0.99, DstPort: 0, DistinctPorts: 1, TopPort: 445, TopPortShare: 1}},
	}
	b, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"window_start":"2026-11-27T10:00:00Z"`, `"sample_dsts":[]`, `"trigger":"worm_pattern"`,
		`"entropy":{"dst_addr":0.99,"dst_port":0,"distinct_ports":1,"top_port":445`, `"sampling_rate":100`} {
		if !strings.Contains(s, want) {
			t.Errorf("encoding lacks %s:\n%s", want, s)
		}
	}
	for _, absent := range []string{`"sequential"`, `"saturated"`, `"group"`} {
		if strings.Contains(s, absent) {
			t.Errorf("encoding has empty %s:\n%s", absent, s)
		}
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	want := a
	for _, tm := range []*time.Time{&want.WindowStart, &want.WindowEnd, &want.FirstSeen, &want.LastSeen} {
		*tm = tm.UTC()
	}
	want.Evidence.SampleDsts = []string{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, err := Unmarshal([]byte("{")); err == nil {
		t.Error("Unmarshal accepted truncated JSON")
	}
}
