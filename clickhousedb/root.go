// Package clickhousedb is wormsign's connection to ClickHouse and its
// schema: it opens the native-protocol connection, learns what the server
// can do from its version, and applies the migrations of
// schemas/clickhouse. The components that read or write tables (the sink,
// the console, containment) share one DB and query it through the small
// surface below; what they write stays theirs.
package clickhousedb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/wormsign/wormsign/internal/tlsconfig"
	"github.com/wormsign/wormsign/schemas"
)

// DB is an open connection pool to one ClickHouse server and database.
type DB struct {
	config   Configuration
	conn     driver.Conn
	version  string
	features schemas.Features
	// insertDeduplication: the server can drop an INSERT block identical
	// to a recent one in a non-replicated table (setting
	// non_replicated_deduplication_window), asked of the server itself.
	insertDeduplication bool
}

// Open connects and checks that the server answers, and, with
// clickhouse.cluster, that it knows the cluster.
func Open(ctx context.Context, config Configuration) (*DB, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	db, err := open(ctx, config, []string{config.Addr})
	if err != nil {
		return nil, err
	}
	if config.Cluster != "" {
		var n uint64
		if err := db.conn.QueryRow(ctx, "SELECT count() FROM system.clusters WHERE cluster = ?", config.Cluster).Scan(&n); err != nil {
			db.Close()
			return nil, fmt.Errorf("cannot read the server's clusters: %w", err)
		}
		if n == 0 {
			db.Close()
			return nil, fmt.Errorf("clickhouse.cluster: the server at %s has no cluster %q in its remote_servers (system.clusters)",
				config.Addr, config.Cluster)
		}
	}
	return db, nil
}

// open connects to the first of addrs that answers (clickhouse-go dials
// them in order, and again on each new connection of the pool: the
// replicas of one shard).
func open(ctx context.Context, config Configuration, addrs []string) (*DB, error) {
	tlsConfig, err := config.TLS.Build("clickhouse.tls")
	if err != nil {
		return nil, err
	}
	var settings clickhouse.Settings
	if config.Cluster != "" {
		// An INSERT into a Distributed table (the console's acks,
		// identity's bindings, containment's audit trail) returns once
		// every shard has its rows, not when the server has queued them
		// to forward later: "written" then means written, as on one
		// server.
		settings = clickhouse.Settings{"insert_distributed_sync": 1}
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:     addrs,
		Settings: settings,
		TLS:      tlsConfig,
		// Statements name their database: it may not exist before
		// Migrate.
		Auth:         clickhouse.Auth{Database: "default", Username: config.Username, Password: config.Password},
		DialTimeout:  config.DialTimeout,
		ReadTimeout:  config.ReadTimeout,
		MaxOpenConns: 16,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open ClickHouse at %s (clickhouse.addr): %w", strings.Join(addrs, ", "), err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, config.DialTimeout)
	defer cancel()
	if err := conn.Ping(pingCtx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot reach ClickHouse at %s (clickhouse.addr): %w%s", strings.Join(addrs, ", "), err, config.explain(err))
	}
	db := &DB{config: config, conn: conn}
	if err := conn.QueryRow(pingCtx, "SELECT version()").Scan(&db.version); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot read ClickHouse version: %w", err)
	}
	if db.features, err = schemas.FeaturesOf(db.version); err != nil {
		conn.Close()
		return nil, err
	}
	var n uint64
	if err := conn.QueryRow(pingCtx, "SELECT (SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window')"+
		" + (SELECT count() FROM system.settings WHERE name = 'deduplicate_blocks_in_dependent_materialized_views')").Scan(&n); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot read ClickHouse's settings: %w", err)
	}
	db.insertDeduplication = n == 2
	return db, nil
}

// explain adds to err the key it is about: clickhouse.username and
// password when the server refused them, clickhouse.tls.* when the
// handshake failed.
func (c Configuration) explain(err error) string {
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		switch ex.Code {
		case 192, 193, 516: // UNKNOWN_USER, WRONG_PASSWORD, AUTHENTICATION_FAILED
			return "; check clickhouse.username and clickhouse.password (the server refused them)"
		}
	}
	if c.TLS.Enabled {
		if why := tlsconfig.Explain("clickhouse.tls", err); why != "" {
			return "; " + why
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) {
			return "; is clickhouse.addr the server's secure native port (tcp_port_secure)? clickhouse.tls.enabled is on"
		}
	} else if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "; the server closed the connection: does it want clickhouse.tls?"
	}
	return ""
}

// Close releases the connections.
func (db *DB) Close() error { return db.conn.Close() }

// Ping checks that the server answers.
func (db *DB) Ping(ctx context.Context) error { return db.conn.Ping(ctx) }

// Version is the server's version() text.
func (db *DB) Version() string { return db.version }

// Features are what the server can do beyond 18.16.
func (db *DB) Features() schemas.Features { return db.features }

// InsertDeduplication tells whether Migrate gives flows and alerts a
// window of DeduplicationWindow blocks in which the server drops an INSERT
// block identical to an earlier one (not on 18.16).
func (db *DB) InsertDeduplication() bool { return db.insertDeduplication }

// InsertContext returns ctx with the settings of an INSERT into flows or
// alerts: where the server deduplicates, identical blocks are dropped in
// the table and in the targets of its views alike (the views' blocks are
// identified by the source block, not by their own content, which two
// different batches could share in the rollup). It replaces any settings
// ctx carries.
func (db *DB) InsertContext(ctx context.Context) context.Context {
	if !db.insertDeduplication {
		return ctx
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"insert_deduplicate": 1,
		"deduplicate_blocks_in_dependent_materialized_views": 1,
	}))
}

// Cluster is clickhouse.cluster: empty on a single server.
func (db *DB) Cluster() string { return db.config.Cluster }

// Local returns the qualified name of the part of table that this
// server holds: <db>.<table>_local in a cluster (the Distributed
// <table> reads every shard's), <db>.<table> on a single server. What
// looks at parts, partitions or columns, and what writes one shard
// itself, names the local table.
func (db *DB) Local(table string) string {
	return db.config.Database + "." + db.LocalName(table)
}

// LocalName is Local without the database: the name system.parts,
// system.columns and system.tables give the local table.
func (db *DB) LocalName(table string) string {
	if db.config.Cluster != "" {
		return table + schemas.LocalSuffix
	}
	return table
}

// OnCluster is " ON CLUSTER <name>" in a cluster, for statements every
// shard must run (DDL, ALTER ... DROP PARTITION, OPTIMIZE), else empty.
func (db *DB) OnCluster() string {
	if db.config.Cluster != "" {
		return " ON CLUSTER " + db.config.Cluster
	}
	return ""
}

// Shards opens one DB per shard of the cluster, in the order of the
// servers' remote_servers (the order in which Distributed tables number
// their shards, which the sink's routing follows), each connected to the
// replicas of its shard: when one is down, new connections go to the
// next. On a single server it returns db itself. The caller closes the
// shards' DBs (Close on db itself is harmless: it is closed once).
func (db *DB) Shards(ctx context.Context) ([]*DB, error) {
	if db.config.Cluster == "" {
		return []*DB{db}, nil
	}
	rows, err := db.conn.Query(ctx, "SELECT shard_num, shard_weight, host_address, port FROM system.clusters WHERE cluster = ?"+
		" ORDER BY shard_num, replica_num", db.config.Cluster)
	if err != nil {
		return nil, fmt.Errorf("cannot read the shards of cluster %s: %w", db.config.Cluster, err)
	}
	var nums []uint32
	addrs := map[uint32][]string{}
	for rows.Next() {
		var num, weight uint32
		var host string
		var port uint16
		if err := rows.Scan(&num, &weight, &host, &port); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cannot read the shards of cluster %s: %w", db.config.Cluster, err)
		}
		if weight != 1 {
			// The sink spreads rows as a Distributed table with equal
			// weights would; other weights would put them elsewhere.
			rows.Close()
			return nil, fmt.Errorf("clickhouse.cluster: shard %d of %s has weight %d; wormsign needs every shard's weight 1", num, db.config.Cluster, weight)
		}
		if len(addrs[num]) == 0 {
			nums = append(nums, num)
		}
		addrs[num] = append(addrs[num], net.JoinHostPort(host, strconv.Itoa(int(port))))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the shards of cluster %s: %w", db.config.Cluster, err)
	}
	if len(nums) == 0 {
		return nil, fmt.Errorf("clickhouse.cluster: the server has no cluster %q", db.config.Cluster)
	}
	out := make([]*DB, 0, len(nums))
	for _, num := range nums {
		shard, err := open(ctx, db.config, addrs[num])
		if err != nil {
			for _, s := range out {
				s.Close()
			}
			return nil, fmt.Errorf("cannot connect to shard %d of %s: %w", num, db.config.Cluster, err)
		}
		out = append(out, shard)
	}
	return out, nil
}

// Database is the name of wormsign's database (clickhouse.database); a
// statement names its tables as Database() + ".table".
func (db *DB) Database() string { return db.config.Database }

// Conn is the driver's connection pool, for what the helpers below do not
// cover (e.g. columnar batches with their own options).
func (db *DB) Conn() driver.Conn { return db.conn }

// Exec runs a statement that returns no rows.
func (db *DB) Exec(ctx context.Context, query string, args ...any) error {
	return db.conn.Exec(ctx, query, args...)
}

// Query runs a SELECT; the caller closes the rows.
func (db *DB) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	return db.conn.Query(ctx, query, args...)
}

// QueryRow runs a SELECT of one row.
func (db *DB) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	return db.conn.QueryRow(ctx, query, args...)
}

// PrepareBatch starts an INSERT sent as one block. Name the columns in the
// query: ClickHouse 18.16 needs them over the native protocol, and it does
// not answer an INSERT with bound VALUES there, so batches are the way to
// insert on every version.
func (db *DB) PrepareBatch(ctx context.Context, query string) (driver.Batch, error) {
	return db.conn.PrepareBatch(ctx, query)
}
