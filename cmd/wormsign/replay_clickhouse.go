package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/wormsign/wormsign/clickhousedb"
)

// replayTarget is where a replay writes in ClickHouse. Its rows carry bus
// coordinates like any sink's, on topics named after the captures'
// content, so that they are told apart from live data and from other
// replays. The in-process bus numbers messages afresh on every run, and
// how flows fall into messages depends on timing, so the sink's per-message
// ledger cannot make a second replay add nothing; a row in the replays
// table, written once everything landed, does.
type replayTarget struct {
	db          *clickhousedb.DB
	id          string // hash of the captures' content
	flowsTopic  string
	alertsTopic string
}

// sinkPartition is the sink_partition the sink gives rows of topic
// (partition 0 of the in-process bus); see sink's ledger coordinates.
func sinkPartition(topic string) uint32 { return crc32.ChecksumIEEE([]byte(topic)) << 16 }

func newReplayTarget(db *clickhousedb.DB, files []string) (*replayTarget, error) {
	h := sha256.New()
	for _, f := range files {
		file, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("cannot open capture: %w", err)
		}
		_, err = io.Copy(h, file)
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("cannot read capture %s: %w", f, err)
		}
	}
	id := hex.EncodeToString(h.Sum(nil)[:8])
	topic := "wormsign-replay-" + id
	return &replayTarget{db: db, id: id, flowsTopic: topic, alertsTopic: topic + "-alerts"}, nil
}

// done tells whether an earlier replay of the same captures landed whole.
func (r *replayTarget) done(ctx context.Context) (bool, error) {
	var n uint64
	if err := r.db.QueryRow(ctx, "SELECT count() FROM "+r.db.Database()+".replays WHERE id = ?", r.id).Scan(&n); err != nil {
		return false, fmt.Errorf("cannot read the replays table: %w", err)
	}
	return n > 0, nil
}

// clearPartial deletes what an interrupted replay of the same captures
// wrote to flows and alerts, so that this one does not double it. The
// per-minute rollup cannot be cleared by replay; the caller warns.
func (r *replayTarget) clearPartial(ctx context.Context, logger *slog.Logger) error {
	db := r.db.Database()
	parts := []uint32{sinkPartition(r.flowsTopic), sinkPartition(r.alertsTopic)}
	var n uint64
	if err := r.db.QueryRow(ctx, "SELECT count() FROM "+db+".sink_ledger WHERE sink_partition IN (?, ?)", parts[0], parts[1]).Scan(&n); err != nil {
		return fmt.Errorf("cannot read the sink ledger: %w", err)
	}
	if n == 0 {
		return nil
	}
	logger.Warn("an earlier replay of these captures did not finish: deleting its rows from flows and alerts; flows_1m keeps its part (see docs/clickhouse.md to rebuild it)",
		"replay", r.id)
	for i, table := range []string{"flows", "alerts", "sink_ledger"} {
		cond := fmt.Sprintf("sink_partition IN (%d, %d)", parts[0], parts[1])
		if i == 0 {
			cond = fmt.Sprintf("sink_partition = %d", parts[0])
		}
		// In a cluster: the local tables, on every shard.
		if err := r.db.Exec(ctx, "ALTER TABLE "+r.db.Local(table)+r.db.OnCluster()+" DELETE WHERE "+cond); err != nil {
			return fmt.Errorf("cannot delete the rows of an interrupted replay from %s: %w", table, err)
		}
	}
	// Deletes are mutations that run in the background: wait for them.
	for {
		var pending uint64
		mutations := "system.mutations"
		if c := r.db.Cluster(); c != "" {
			mutations = "cluster(" + c + ", system, mutations)"
		}
		err := r.db.QueryRow(ctx, "SELECT count() FROM "+mutations+" WHERE database = ? AND is_done = 0", db).Scan(&pending)
		if err != nil {
			return fmt.Errorf("cannot follow the deletes: %w", err)
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// markDone records that the replay's rows all landed.
func (r *replayTarget) markDone(ctx context.Context, flows, alerts uint64) error {
	batch, err := r.db.PrepareBatch(ctx, "INSERT INTO "+r.db.Database()+".replays (id, flows, alerts, replayed_at)")
	if err != nil {
		return fmt.Errorf("cannot record the replay: %w", err)
	}
	defer batch.Abort()
	if err := batch.Append(r.id, flows, alerts, time.Now().UTC()); err != nil {
		return fmt.Errorf("cannot record the replay: %w", err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot record the replay: %w", err)
	}
	return nil
}
