package clickhousedb

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/wormsign/wormsign/schemas"
)

// Migrate creates the database and applies the migrations not yet recorded
// in its schema_migrations table. Running it again changes nothing. The
// column types follow the server's version (schemas.Features).
//
// With clickhouse.cluster every statement runs ON CLUSTER (the server
// queues it in ZooKeeper and every server of the cluster runs it; the
// call returns when all have, or fails after the server's
// distributed_ddl_task_timeout, 180 s, when one is down) in its cluster
// form (schemas.ClickHouseClusterMigrations). Every statement is IF NOT
// EXISTS, so two instances migrating at once, or one again, change
// nothing: each server runs the second copy of a statement as a no-op.
// schema_migrations is replicated to every server of the cluster (one
// ZooKeeper path for all shards), so any server tells what was applied.
func (db *DB) Migrate(ctx context.Context, logger *slog.Logger) error {
	name := db.config.Database
	if err := db.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+name+db.OnCluster()); err != nil {
		return fmt.Errorf("cannot create database %s: %w", name, err)
	}
	engine := "MergeTree()"
	if db.config.Cluster != "" {
		engine = "ReplicatedMergeTree('/clickhouse/tables/all/" + name + "/schema_migrations', '{replica}')"
	}
	if err := db.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+name+`.schema_migrations`+db.OnCluster()+` (
		version UInt32, name String, applied_at DateTime
	) ENGINE = `+engine+` ORDER BY version`); err != nil {
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
	var migrations []schemas.Migration
	if db.config.Cluster != "" {
		migrations, err = schemas.ClickHouseClusterMigrations(name, db.features, db.config.Cluster)
	} else {
		migrations, err = schemas.ClickHouseMigrations(name, db.features)
	}
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
	if err := db.addColumns(ctx); err != nil {
		return err
	}
	return db.applyDeduplication(ctx)
}

// addedColumns are columns added to a table after its migration: a new
// database gets them from the CREATE, one created before them here.
// 18.16 knows no ADD COLUMN IF NOT EXISTS, so system.columns is asked
// first. {ip} is the address type, as in the migrations. In a cluster
// the column goes to the local table and to its Distributed table, on
// every server.
var addedColumns = []struct{ table, name, typ, after string }{
	// Who held the subscriber's address at the flow's time (identity),
	// and the inside address behind a CGNAT.
	{"flows", "customer", "String", "flow_type"},
	{"flows", "inside_addr", "{ip}", "customer"},
}

func (db *DB) addColumns(ctx context.Context) error {
	for _, c := range addedColumns {
		var n uint64
		if err := db.conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
			db.config.Database, db.LocalName(c.table), c.name).Scan(&n); err != nil {
			return fmt.Errorf("cannot read the columns of %s: %w", c.table, err)
		}
		if n > 0 {
			continue
		}
		typ := strings.ReplaceAll(c.typ, "{ip}", db.features.IPType())
		tables := []string{db.Local(c.table)}
		if db.config.Cluster != "" {
			tables = append(tables, db.config.Database+"."+c.table)
		}
		for _, table := range tables {
			if err := db.conn.Exec(ctx, "ALTER TABLE "+table+db.OnCluster()+" ADD COLUMN "+c.name+" "+typ+" AFTER "+c.after); err != nil {
				return fmt.Errorf("cannot add column %s.%s: %w", table, c.name, err)
			}
		}
	}
	return nil
}

// DeduplicationWindow is how many recent INSERT blocks of flows and alerts
// a server with insert deduplication for non-replicated tables remembers,
// by a hash of their content, so that it drops a block identical to one of
// them: a retry racing the earlier try it repeats, or two sink instances
// writing the same batch at once. The sink's ledger keeps re-deliveries
// out on every version; this closes what the ledger cannot see (see
// schemas/clickhouse/README.md).
const DeduplicationWindow = 10000

// deduplicatedTables are the tables the sink writes from bus messages and
// the targets of their views: a current server passes a block it dropped
// as a duplicate on to the views all the same, each target deduplicating
// by its own window (the view's block id derives from the source block's
// with deduplicate_blocks_in_dependent_materialized_views, see
// InsertContext).
var deduplicatedTables = []string{"flows", "alerts", "flows_1m", "sink_ledger"}

// applyDeduplication sets non_replicated_deduplication_window on the
// tables where the server knows it (not 18.16), unless already set.
// Replicated tables (a cluster) deduplicate INSERT blocks on every
// version, 18.16 included, by hashes kept in ZooKeeper
// (replicated_deduplication_window, 100 blocks by default): nothing to
// set there.
func (db *DB) applyDeduplication(ctx context.Context) error {
	if !db.insertDeduplication || db.config.Cluster != "" {
		return nil
	}
	setting := fmt.Sprintf("non_replicated_deduplication_window = %d", DeduplicationWindow)
	for _, table := range deduplicatedTables {
		var engine string
		if err := db.conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?",
			db.config.Database, table).Scan(&engine); err != nil {
			return fmt.Errorf("cannot read the engine of %s: %w", table, err)
		}
		if strings.Contains(engine, setting) {
			continue
		}
		if err := db.conn.Exec(ctx, "ALTER TABLE "+db.config.Database+"."+table+" MODIFY SETTING "+setting); err != nil {
			return fmt.Errorf("cannot set the insert deduplication window of %s: %w", table, err)
		}
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
