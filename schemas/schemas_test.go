package schemas

import (
	"strings"
	"testing"
)

func TestClickHouseMigrations(t *testing.T) {
	ms, err := ClickHouseMigrations("wsdb")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].Version != 1 {
		t.Fatalf("migrations = %+v, want version 1 first", ms)
	}
	for _, m := range ms {
		for _, s := range m.Statements {
			if strings.Contains(s, "{db}") || !strings.Contains(s, "wsdb.") {
				t.Errorf("migration %s: statement not bound to the database: %s", m.Name, s)
			}
			if strings.HasSuffix(s, ";") {
				t.Errorf("migration %s: statement keeps its separator: %s", m.Name, s)
			}
		}
	}
	if got := len(ms[0].Statements); got != 2 {
		t.Errorf("migration 1 has %d statements, want 2 (flows, alerts)", got)
	}
}
