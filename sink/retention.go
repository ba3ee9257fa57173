package sink

import (
	"context"
	"fmt"
	"strconv"
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
		ids, err := db.Partitions(ctx, t.table)
		if err != nil {
			return dropped, err
		}
		for _, id := range ids {
			// Daily partitions are named YYYYMMDD; anything else is
			// not ours to drop.
			if n, err := strconv.Atoi(id); err != nil || len(id) != 8 || n >= cutoff {
				continue
			}
			if err := db.DropPartition(ctx, t.table, id); err != nil {
				return dropped, err
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
		if _, err := db.SetTTL(ctx, t.table, fmt.Sprintf("%s + toIntervalDay(%d)", t.date, t.days)); err != nil {
			return err
		}
	}
	return nil
}
