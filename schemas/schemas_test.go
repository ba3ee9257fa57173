package schemas

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestClickHouseMigrations(t *testing.T) {
	for _, f := range []Features{{}, {IPv6: true, LowCardinality: true, TTL: true, DateTime64: true}} {
		ms, err := ClickHouseMigrations("wsdb", f)
		if err != nil {
			t.Fatal(err)
		}
		var versions []int
		sawIPv6 := false
		for _, m := range ms {
			versions = append(versions, m.Version)
			for _, s := range m.Statements {
				if strings.ContainsAny(s, "{}") || !strings.Contains(s, "wsdb.") {
					t.Errorf("migration %s: placeholder left or statement not bound to the database: %s", m.Name, s)
				}
				if strings.HasSuffix(s, ";") {
					t.Errorf("migration %s: statement keeps its separator: %s", m.Name, s)
				}
				if strings.Contains(withoutComments(s), "IPv6") {
					sawIPv6 = true
				}
			}
		}
		if sawIPv6 != f.IPv6 {
			t.Errorf("with %+v: IPv6 column type used = %v", f, sawIPv6)
		}
		if diff := cmp.Diff([]int{1, 2, 3, 4, 5, 6, 7, 8}, versions); diff != "" {
			t.Errorf("versions (-want +got):\n%s", diff)
		}
		if got := len(ms[0].Statements); got != 2 {
			t.Errorf("migration 1 has %d statements, want 2 (flows, alerts)", got)
		}
	}
}

func TestFeaturesOf(t *testing.T) {
	cases := []struct {
		version string
		want    Features
		wantErr bool
	}{
		{version: "18.16.1", want: Features{}},
		{version: "19.3.4", want: Features{IPv6: true, LowCardinality: true}},
		{version: "19.6.2.11", want: Features{IPv6: true, LowCardinality: true, TTL: true}},
		{version: "20.1.2.4", want: Features{IPv6: true, LowCardinality: true, TTL: true, DateTime64: true}},
		{version: "24.8.4.13", want: Features{IPv6: true, LowCardinality: true, TTL: true, DateTime64: true}},
		{version: "banana", wantErr: true},
	}
	for _, tc := range cases {
		got, err := FeaturesOf(tc.version)
		if (err != nil) != tc.wantErr {
			t.Errorf("FeaturesOf(%q) error = %v, want error %v", tc.version, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("FeaturesOf(%q) (-want +got):\n%s", tc.version, diff)
		}
	}
}

func withoutComments(stmt string) string {
	var b strings.Builder
	for _, line := range strings.Split(stmt, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
