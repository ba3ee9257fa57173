package containment

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzManualAdd feeds POST /api/v1/blocklist's body parser, then the
// policy's checks of a manual entry, arbitrary bodies: no panic; an error
// is a 400, 409 or 413, never anything else; what is accepted is a valid
// prefix no wider than the configured widest.
func FuzzManualAdd(f *testing.F) {
	for _, s := range []string{
		`{"ip":"203.0.113.5","reason":"complaint","duration":"2h"}`, `{"ip":"203.0.113.5","by":"carol"}`,
		`{"ip":"203.0.113.0/24"}`, `{"ip":"2001:db8::/64","action":"quarantine"}`, `{"ip":"::ffff:203.0.113.5/128"}`,
		`{"ip":"203.0.113.6","duration":"-1h"}`, `{"ip":"203.0.113.6","duration":"9999999999h"}`, `{"ip":"x","colour":"red"}`,
		`{"ip":"10.0.0.1"}{}`, `not json`, `{"ip":"fe80::1%eth0"}`, `{"ip":"0.0.0.0/0","by":""}`,
	} {
		f.Add(s)
	}
	cfg := testConfig()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		m, err := parseAdd(strings.NewReader(body), "fuzz")
		if err != nil {
			if !errors.Is(err, ErrBadInput) && !errors.Is(err, errTooLarge) {
				t.Fatalf("%q: %v is not a 400", body, err)
			}
			return
		}
		p := NewPolicy(cfg, nil, nil)
		ch, err := p.Add(m.prefix.Prefix, m.action, m.by, m.reason, m.duration, now)
		if err != nil {
			if !errors.Is(err, ErrBadInput) && !errors.Is(err, ErrAllowed) && !errors.Is(err, ErrFull) {
				t.Fatalf("%q: policy error %v is not a 400 or 409", body, err)
			}
			return
		}
		pfx := ch.Entry.Prefix
		widest := cfg.WidestPrefixV4
		if pfx.Addr().Is6() {
			widest = cfg.WidestPrefixV6
		}
		if !pfx.IsValid() || pfx.Bits() < widest || pfx != pfx.Masked() || !ch.Entry.Expires.After(now) {
			t.Fatalf("%q: accepted %+v", body, ch.Entry)
		}
	})
}
