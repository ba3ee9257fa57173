package schemas

import (
	"embed"
	"fmt"
	"io/fs"
	"strings"
)

//go:embed analyst/*.sql
var analystFS embed.FS

// AnalystQueries returns the ready queries of docs/clickhouse.md by name (the file
// name without .sql), written for the default database "wormsign".
func AnalystQueries() (map[string]string, error) {
	entries, err := fs.ReadDir(analystFS, "analyst")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		raw, err := analystFS.ReadFile("analyst/" + e.Name())
		if err != nil {
			return nil, fmt.Errorf("cannot read analyst query %s: %w", e.Name(), err)
		}
		out[strings.TrimSuffix(e.Name(), ".sql")] = strings.TrimSpace(string(raw))
	}
	return out, nil
}
