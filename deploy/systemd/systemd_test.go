// Package systemd holds the systemd units of wormsign's subcommands; its
// test checks them with systemd's own tools.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestUnits runs systemd-analyze verify on every unit (any warning fails:
// verify exits 0 on unknown keys) and systemd-analyze security, whose
// exposure must stay at "OK" (below 4 on its 0-10 scale).
func TestUnits(t *testing.T) {
	analyze := testenv.Tool(t, "systemd-analyze")
	units, err := filepath.Glob("*.service")
	if err != nil || len(units) < 5 {
		t.Fatalf("units: %v %v", units, err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// verify checks that the command exists: stand in for the
		// installed binary.
		text := strings.ReplaceAll(string(raw), "/usr/local/bin/wormsign", self)
		if err := os.WriteFile(filepath.Join(dir, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, u := range units {
		path := filepath.Join(dir, u)
		out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
		if err != nil || ownWarnings(string(out)) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
		out, _ = exec.Command(analyze, "security", "--offline=yes", path).CombinedOutput()
		m := exposure.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: no exposure level in:\n%s", u, out)
			continue
		}
		if level, _ := strconv.ParseFloat(string(m[1]), 64); level >= 4 {
			t.Errorf("%s: exposure level %.1f, want below 4 (OK):\n%s", u, level, out)
		}
		t.Logf("%s: exposure %s", u, m[1])
	}
}

// ownWarnings drops the lines of verify's output about the machine's units:
// verify also loads the machine's own units, and a warning about one of
// those (Debian's freeradius.service uses the old MemoryLimit=) says
// nothing about ours.
func ownWarnings(out string) string {
	var own []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" && !strings.HasPrefix(line, "/lib/systemd/") && !strings.HasPrefix(line, "/usr/lib/systemd/") && !strings.HasPrefix(line, "/etc/systemd/") {
			own = append(own, line)
		}
	}
	return strings.Join(own, "\n")
}
