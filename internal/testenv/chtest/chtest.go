// Package chtest gives a test a ClickHouse database of its own with the
// project's migrations applied. It sits apart from testenv because
// clickhousedb's own tests use testenv.
package chtest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/wormsign/wormsign/clickhousedb"
)

// Database opens cfg (its Addr and Database set by the caller, the
// database named for the test), migrates it, and drops it at cleanup.
func Database(t testing.TB, cfg clickhousedb.Configuration) *clickhousedb.DB {
	t.Helper()
	ctx := context.Background()
	db, err := clickhousedb.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database)
		db.Close()
	})
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return db
}
