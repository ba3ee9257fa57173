package sink

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wormsign/wormsign/clickhousedb"
)

// runRetention drops expired partitions now and every interval.
func (c *Component) runRetention(ctx context.Context) {
	r := c.config.Retention
	if r.FlowsDays == 0 && r.RollupDays == 0 && r.AlertsDays == 0 && r.LedgerDays == 0 {
		return
	}
	db := c.deps.ClickHouse
	if err := applyTTL(ctx, db, r); err != nil && ctx.Err() == nil {
		c.deps.Logger.Warn("cannot set table TTLs; retention still drops partitions", "error", err)
	}
	ticker := time.NewTicker(r.Interval)
	defer ticker.Stop()
	for {
		n, err := dropExpired(ctx, db, time.Now(), r)
		c.metrics.dropped.Add(float64(n))
		if err != nil && ctx.Err() == nil {
			c.metrics.retentionErr.Inc()
			c.deps.Logger.Warn("cannot apply retention", "error", err)
		} else if n > 0 {
			c.deps.Logger.Info("dropped expired partitions", "partitions", n)
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// retentionTables names each table's partition date and how long it keeps.
func retentionTables(r RetentionConfiguration) []struct {
	table, date string
	days        int
} {
	return []struct {
		table, date string
		days        int
	}{
		{"flows", "date", r.FlowsDays},
		{"flows_1m", "toDate(minute)", r.RollupDays},
		{"alerts", "date", r.AlertsDays},
		{"sink_ledger", "toDate(written_at)", r.LedgerDays},
	}
}

// dropExpired drops the daily partitions whose whole day is older than the
// retention of their table, and returns how many it dropped. It works on
// every version: DROP PARTITION ID needs nothing newer than 18.16.
func dropExpired(ctx context.Context, db *clickhousedb.DB, now time.Time, r RetentionConfiguration) (int, error) {
	dropped := 0
	for _, t := range retentionTables(r) {
		if t.days <= 0 {
			continue
		}
		cutoff, _ := strconv.Atoi(day(now).AddDate(0, 0, -t.days).Format("20060102"))
		rows, err := db.Query(ctx, "SELECT DISTINCT partition_id FROM system.parts WHERE database = ? AND table = ? AND active",
			db.Database(), t.table)
		if err != nil {
			return dropped, fmt.Errorf("cannot list partitions of %s: %w", t.table, err)
		}
		var expired []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return dropped, fmt.Errorf("cannot list partitions of %s: %w", t.table, err)
			}
			// Daily partitions are named YYYYMMDD; anything else is
			// not ours to drop.
			if n, err := strconv.Atoi(id); err == nil && len(id) == 8 && n < cutoff {
				expired = append(expired, id)
			}
		}
		rows.Close()
		sort.Strings(expired)
		for _, id := range expired {
			if err := db.Exec(ctx, "ALTER TABLE "+db.Database()+"."+t.table+" DROP PARTITION ID '"+id+"'"); err != nil {
				return dropped, fmt.Errorf("cannot drop partition %s of %s: %w", id, t.table, err)
			}
			dropped++
		}
	}
	return dropped, nil
}

// applyTTL sets each table's TTL to its retention where the server has TTL
// (19.6 and later), so that the server drops old rows between sink runs.
// It changes nothing where the TTL is already the configured one.
func applyTTL(ctx context.Context, db *clickhousedb.DB, r RetentionConfiguration) error {
	if !db.Features().TTL {
		return nil
	}
	for _, t := range retentionTables(r) {
		if t.days <= 0 {
			continue
		}
		expr := fmt.Sprintf("%s + toIntervalDay(%d)", t.date, t.days)
		var engine string
		if err := db.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?",
			db.Database(), t.table).Scan(&engine); err != nil {
			return fmt.Errorf("cannot read the engine of %s: %w", t.table, err)
		}
		if strings.Contains(engine, "TTL "+expr) {
			continue
		}
		if err := db.Exec(ctx, "ALTER TABLE "+db.Database()+"."+t.table+" MODIFY TTL "+expr); err != nil {
			return fmt.Errorf("cannot set the TTL of %s: %w", t.table, err)
		}
	}
	return nil
}
