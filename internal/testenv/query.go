package testenv

import (
	"context"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Querier runs a SELECT (clickhousedb.DB, a driver.Conn).
type Querier interface {
	Query(ctx context.Context, query string, args ...any) (driver.Rows, error)
}

// QueryStrings returns the first column of every row of query.
func QueryStrings(t testing.TB, db Querier, query string, args ...any) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}
