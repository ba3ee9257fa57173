package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/schemas"
)

// ClickHouse writes flows and alerts over the native protocol.
type ClickHouse struct {
	config ClickHouseConfiguration
	conn   driver.Conn
}

// OpenClickHouse connects and checks that the server answers.
func OpenClickHouse(ctx context.Context, config ClickHouseConfiguration) (*ClickHouse, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{config.Addr},
		Auth:        clickhouse.Auth{Database: "default", Username: config.Username, Password: config.Password},
		DialTimeout: config.DialTimeout,
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open ClickHouse at %s (clickhouse.addr): %w", config.Addr, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, config.DialTimeout)
	defer cancel()
	if err := conn.Ping(pingCtx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot reach ClickHouse at %s (clickhouse.addr): %w", config.Addr, err)
	}
	return &ClickHouse{config: config, conn: conn}, nil
}

// Close releases the connections.
func (c *ClickHouse) Close() error { return c.conn.Close() }

// Ping checks that the server answers.
func (c *ClickHouse) Ping(ctx context.Context) error { return c.conn.Ping(ctx) }

// Migrate creates the database and applies the migrations not yet recorded
// in its schema_migrations table. Running it again changes nothing.
func (c *ClickHouse) Migrate(ctx context.Context, logger *slog.Logger) error {
	db := c.config.Database
	if err := c.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return fmt.Errorf("cannot create database %s: %w", db, err)
	}
	if err := c.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+db+`.schema_migrations (
		version UInt32, name String, applied_at DateTime
	) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return fmt.Errorf("cannot create migrations table: %w", err)
	}
	applied := map[uint32]bool{}
	rows, err := c.conn.Query(ctx, "SELECT version FROM "+db+".schema_migrations")
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
	migrations, err := schemas.ClickHouseMigrations(db)
	if err != nil {
		return fmt.Errorf("cannot load migrations: %w", err)
	}
	for _, m := range migrations {
		if applied[uint32(m.Version)] {
			continue
		}
		for _, stmt := range m.Statements {
			if err := c.conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s failed: %w", m.Name, err)
			}
		}
		if err := c.recordMigration(ctx, m); err != nil {
			return fmt.Errorf("cannot record migration %s: %w", m.Name, err)
		}
		logger.Info("applied clickhouse migration", "name", m.Name, "database", db)
	}
	return nil
}

// recordMigration inserts through a batch: ClickHouse 18.16 does not answer
// an INSERT with bound VALUES over the native protocol.
func (c *ClickHouse) recordMigration(ctx context.Context, m schemas.Migration) error {
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	defer batch.Abort()
	if err := batch.Append(uint32(m.Version), m.Name, time.Now().UTC()); err != nil {
		return err
	}
	return batch.Send()
}

// Column lists are spelled out: ClickHouse 18.16 needs named INSERT columns
// over the native protocol.
const flowColumns = "date, time_received, time_start, time_end, subscriber_ip, exporter, observation_domain, " +
	"sampling_rate, src_addr, dst_addr, src_port, dst_port, proto, tcp_flags, bytes, packets, in_if, out_if, flow_type"

const alertColumns = "date, id, kind, state, subscriber_ip, subscriber_id, window_start, window_end, " +
	"first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence"

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func day(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }

// FlowRow is a flow with the subscriber it is keyed by.
type FlowRow struct {
	Subscriber string
	Flow       flow.Flow
}

// InsertFlows writes rows in one INSERT.
func (c *ClickHouse) InsertFlows(ctx context.Context, rows []FlowRow) error {
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".flows ("+flowColumns+")")
	if err != nil {
		return fmt.Errorf("cannot prepare flows insert: %w", err)
	}
	defer batch.Abort()
	for i := range rows {
		f := &rows[i].Flow
		end := time.UnixMilli(f.EndMs).UTC()
		if err := batch.Append(
			day(end), time.UnixMilli(f.TimeReceivedMs).UTC(), time.UnixMilli(f.StartMs).UTC(), end,
			rows[i].Subscriber, addrText(f.Exporter), f.ObservationDomain,
			f.SamplingRate, addrText(f.SrcAddr), addrText(f.DstAddr),
			f.SrcPort, f.DstPort, f.Proto, f.TCPFlags, f.Bytes, f.Packets, f.InIf, f.OutIf, uint8(f.Type),
		); err != nil {
			return fmt.Errorf("cannot append flow row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert %d flows: %w", len(rows), err)
	}
	return nil
}

// InsertAlerts writes alerts in one INSERT.
func (c *ClickHouse) InsertAlerts(ctx context.Context, alerts []alert.Alert) error {
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.config.Database+".alerts ("+alertColumns+")")
	if err != nil {
		return fmt.Errorf("cannot prepare alerts insert: %w", err)
	}
	defer batch.Abort()
	for i := range alerts {
		a := &alerts[i]
		evidence, err := json.Marshal(a.Evidence)
		if err != nil {
			return fmt.Errorf("cannot encode evidence of alert %s: %w", a.ID, err)
		}
		if err := batch.Append(
			day(a.WindowEnd.UTC()), a.ID, a.Kind, a.State, a.SubscriberIP, a.SubscriberID,
			a.WindowStart.UTC(), a.WindowEnd.UTC(), a.FirstSeen.UTC(), a.LastSeen.UTC(),
			a.DistinctDsts, a.Flows, a.Score, a.Exporter, string(evidence),
		); err != nil {
			return fmt.Errorf("cannot append alert row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert %d alerts: %w", len(alerts), err)
	}
	return nil
}
