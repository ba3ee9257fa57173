package clickhousedb

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// The pieces of retention that every table shares, whoever owns the table:
// the sink for flows and alerts, identity for subscriber_bindings. Each
// decides which partitions have expired; these list, drop and set TTLs,
// with nothing newer than 18.16 except the TTL itself.

// Partitions returns the ids of the partitions of table that have active
// parts, sorted. In a cluster: those of table's local parts on any shard
// (cluster() asks one replica of each).
func (db *DB) Partitions(ctx context.Context, table string) ([]string, error) {
	parts := "system.parts"
	if db.config.Cluster != "" {
		parts = "cluster(" + db.config.Cluster + ", system, parts)"
	}
	rows, err := db.conn.Query(ctx, "SELECT DISTINCT partition_id FROM "+parts+" WHERE database = ? AND table = ? AND active",
		db.config.Database, db.LocalName(table))
	if err != nil {
		return nil, fmt.Errorf("cannot list partitions of %s: %w", table, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("cannot list partitions of %s: %w", table, err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list partitions of %s: %w", table, err)
	}
	sort.Strings(out)
	return out, nil
}

// DropPartition drops one partition of table by its id (as Partitions
// names it); in a cluster on every shard (ON CLUSTER; each shard's
// replicas follow their own).
func (db *DB) DropPartition(ctx context.Context, table, id string) error {
	if !partitionID.MatchString(id) {
		return fmt.Errorf("cannot drop partition %q of %s: not a partition id", id, table)
	}
	if err := db.conn.Exec(ctx, "ALTER TABLE "+db.Local(table)+db.OnCluster()+" DROP PARTITION ID '"+id+"'"); err != nil {
		return fmt.Errorf("cannot drop partition %s of %s: %w", id, table, err)
	}
	return nil
}

// partitionID is what a partition id looks like (digits for the date and
// month partitions, hex for hashed ones, "all" unpartitioned): it is
// pasted into a statement.
var partitionID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// SetTTL sets the TTL of table to expr where the server has TTL (19.6 and
// later) and reports whether it had to: nothing is changed where the
// table's TTL is already expr, since MODIFY TTL rewrites every part.
// expr must be written as the server prints it in engine_full, or every
// call changes it again.
func (db *DB) SetTTL(ctx context.Context, table, expr string) (bool, error) {
	if !db.features.TTL {
		return false, nil
	}
	var engine string
	if err := db.conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?",
		db.config.Database, db.LocalName(table)).Scan(&engine); err != nil {
		return false, fmt.Errorf("cannot read the engine of %s: %w", table, err)
	}
	if strings.Contains(engine, "TTL "+expr+" ") || strings.HasSuffix(engine, "TTL "+expr) {
		return false, nil
	}
	if err := db.conn.Exec(ctx, "ALTER TABLE "+db.Local(table)+db.OnCluster()+" MODIFY TTL "+expr); err != nil {
		return false, fmt.Errorf("cannot set the TTL of %s: %w", table, err)
	}
	return true, nil
}
