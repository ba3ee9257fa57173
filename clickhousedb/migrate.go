package clickhousedb

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/wormsign/wormsign/schemas"
)

// Migrate creates the database and applies the migrations not yet recorded
// in its schema_migrations table. Running it again changes nothing. The
// column types follow the server's version (schemas.Features).
func (db *DB) Migrate(ctx context.Context, logger *slog.Logger) error {
	name := db.config.Database
	if err := db.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+name); err != nil {
		return fmt.Errorf("cannot create database %s: %w", name, err)
	}
	if err := db.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+name+`.schema_migrations (
		version UInt32, name String, applied_at DateTime
	) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return fmt.Errorf("cannot create migrations table: %w", err)
	}
	applied := map[uint32]bool{}
	rows, err := db.conn.Query(ctx, "SELECT version FROM "+name+".schema_migrations")
	if err != nil {
		return fmt.Errorf("cannot read applied migrations: %w", err)
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("cannot read applied migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	migrations, err := schemas.ClickHouseMigrations(name, db.features)
	if err != nil {
		return fmt.Errorf("cannot load migrations: %w", err)
	}
	for _, m := range migrations {
		if applied[uint32(m.Version)] {
			continue
		}
		// Every statement is IF NOT EXISTS: a migration interrupted half
		// way is simply applied again.
		for _, stmt := range m.Statements {
			if err := db.conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s failed: %w", m.Name, err)
			}
		}
		if err := db.recordMigration(ctx, m); err != nil {
			return fmt.Errorf("cannot record migration %s: %w", m.Name, err)
		}
		logger.Info("applied clickhouse migration", "name", m.Name, "database", name, "server", db.version)
	}
	return nil
}

// recordMigration inserts through a batch: ClickHouse 18.16 does not answer
// an INSERT with bound VALUES over the native protocol.
func (db *DB) recordMigration(ctx context.Context, m schemas.Migration) error {
	batch, err := db.conn.PrepareBatch(ctx, "INSERT INTO "+db.config.Database+".schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	defer batch.Abort()
	if err := batch.Append(uint32(m.Version), m.Name, time.Now().UTC()); err != nil {
		return err
	}
	return batch.Send()
}
