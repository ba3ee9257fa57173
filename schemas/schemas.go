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
// database as {db} and the version-dependent types as {ip}, {lc} and
// {ms} (see Features); statements are separated by lines holding only
// ";".
type Migration struct {
	Version    int
	Name       string
	Statements []string
}

// Features are what the ClickHouse server can do beyond 18.16, the oldest
// release wormsign supports (Debian's package, used in CI).
type Features struct {
	// IPv6 is the IPv6 column type (a domain over FixedString(16)), from
	// 19.3. Without it addresses are stored as their text.
	IPv6 bool
	// LowCardinality(String), from 19.3 (experimental before).
	LowCardinality bool
	// TTL on MergeTree tables, from 19.6. The sink drops old partitions
	// itself on every version; TTL lets the server do it between runs.
	TTL bool
	// DateTime64 (sub-second times), from 20.1. Without it times are
	// whole seconds.
	DateTime64 bool
}

// FeaturesOf returns the features of a server from its version() text,
// e.g. "18.16.1" or "24.8.4.13".
func FeaturesOf(version string) (Features, error) {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return Features{}, fmt.Errorf("cannot parse ClickHouse version %q", version)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return Features{}, fmt.Errorf("cannot parse ClickHouse version %q", version)
	}
	atLeast := func(ma, mi int) bool { return major > ma || major == ma && minor >= mi }
	return Features{IPv6: atLeast(19, 3), LowCardinality: atLeast(19, 3), TTL: atLeast(19, 6), DateTime64: atLeast(20, 1)}, nil
}

// IPType is the column type of addresses.
func (f Features) IPType() string {
	if f.IPv6 {
		return "IPv6"
	}
	return "String"
}

// MillisType is the column type of times kept to the millisecond, in
// UTC: DateTime64(3), or whole seconds on 18.16.
func (f Features) MillisType() string {
	if f.DateTime64 {
		return "DateTime64(3, 'UTC')"
	}
	return "DateTime('UTC')"
}

func (f Features) lowCardinality() string {
	if f.LowCardinality {
		return "LowCardinality(String)"
	}
	return "String"
}

// ClickHouseMigrations returns the migrations in version order, with {db}
// replaced by database and the types chosen for a server with features.
func ClickHouseMigrations(database string, features Features) ([]Migration, error) {
	replacer := strings.NewReplacer("{db}", database, "{ip}", features.IPType(), "{lc}", features.lowCardinality(),
		"{ms}", features.MillisType())
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
			stmt = strings.TrimSpace(replacer.Replace(stmt))
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
