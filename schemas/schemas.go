// Package schemas holds wormsign's wire and storage contracts: the flow
// protobuf (flow.proto), the alert JSON schema and the ClickHouse DDL.
package schemas

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed clickhouse/*.sql
var clickhouseFS embed.FS

// Migration is one versioned ClickHouse DDL step. Its SQL names the
// database as {db}; statements are separated by lines holding only ";".
type Migration struct {
	Version    int
	Name       string
	Statements []string
}

// ClickHouseMigrations returns the migrations in version order, with {db}
// replaced by database.
func ClickHouseMigrations(database string) ([]Migration, error) {
	entries, err := fs.ReadDir(clickhouseFS, "clickhouse")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".sql")
		num, _, ok := strings.Cut(name, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %s: want NNN_name.sql", e.Name())
		}
		raw, err := clickhouseFS.ReadFile("clickhouse/" + e.Name())
		if err != nil {
			return nil, err
		}
		m := Migration{Version: version, Name: name}
		for _, stmt := range strings.Split(string(raw), "\n;\n") {
			stmt = strings.TrimSpace(strings.ReplaceAll(stmt, "{db}", database))
			if stmt != "" && !isComment(stmt) {
				m.Statements = append(m.Statements, stmt)
			}
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

func isComment(stmt string) bool {
	for _, line := range strings.Split(stmt, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "--") {
			return false
		}
	}
	return true
}
