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

// Open connects and checks that the server answers.
func Open(ctx context.Context, config Configuration) (*DB, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	tlsConfig, err := config.TLS.Build("clickhouse.tls")
	if err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: []string{config.Addr},
		TLS:  tlsConfig,
		// Statements name their database: it may not exist before
		// Migrate.
		Auth:         clickhouse.Auth{Database: "default", Username: config.Username, Password: config.Password},
		DialTimeout:  config.DialTimeout,
		ReadTimeout:  config.ReadTimeout,
		MaxOpenConns: 16,
		Compression:  &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open ClickHouse at %s (clickhouse.addr): %w", config.Addr, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, config.DialTimeout)
	defer cancel()
	if err := conn.Ping(pingCtx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot reach ClickHouse at %s (clickhouse.addr): %w%s", config.Addr, err, config.explain(err))
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
