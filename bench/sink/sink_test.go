// Package sinkbench measures the sink: flow rows per second from the bus
// into ClickHouse (MergeTree, the per-minute rollup view and the ledger
// view included), against a peer in the same run: clickhouse-client
// loading the very same rows in its Native format into the same schema,
// which is the server's own bulk-load ceiling on this machine. `make
// bench` runs it with -benchtime 1x; each iteration writes benchFlows rows.
package sinkbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/sink"
)

const (
	benchFlows       = 1_000_000
	flowsPerMessage  = 16 // a subscriber's flows over the collector's linger
	benchSubscribers = 50_000
)

// workload is the collector's output for benchFlows flows: messages keyed
// by subscriber, most browsing, one in a thousand a spam zombie.
func workload() []bus.Message {
	exporter := netip.MustParseAddr("192.0.2.1")
	t0 := time.Now().UTC().Add(-30 * time.Minute).UnixMilli()
	x := uint32(7)
	rnd := func() uint32 { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x }
	var msgs []bus.Message
	flows := make([]flow.Flow, flowsPerMessage)
	for n := 0; n < benchFlows; n += flowsPerMessage {
		s := n / flowsPerMessage % benchSubscribers
		src := netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})
		for i := range flows {
			end := t0 + int64(n)*60_000*20/benchFlows // 20 minutes of event time
			f := flow.Flow{
				TimeReceivedMs: end + 300, StartMs: end - 1000, EndMs: end, Exporter: exporter, Type: flow.TypeIPFIX,
				SrcAddr: src, SrcPort: uint16(40000 + i), Proto: flow.ProtoTCP, DstPort: 443, SamplingRate: 1,
				TCPFlags: flow.TCPSyn | flow.TCPAck | flow.TCPFin, Packets: 12, Bytes: 4000 + uint64(rnd()%1000),
				DstAddr: netip.AddrFrom4([4]byte{198, 18, 0, byte(rnd() % 8)}), InIf: 3, OutIf: 7,
			}
			if s%1000 == 0 {
				f.DstPort, f.TCPFlags, f.Packets = 25, flow.TCPSyn, 2
				f.DstAddr = netip.AddrFrom4([4]byte{198, 19, byte(rnd()), byte(rnd())})
			}
			flows[i] = f
		}
		msgs = append(msgs, bus.Message{Key: src.AsSlice(), Value: flow.AppendBatch(nil, flows)})
	}
	return msgs
}

func open(b *testing.B, addr, db string) *clickhousedb.DB {
	cfg := clickhousedb.DefaultConfiguration()
	cfg.Addr, cfg.Database = addr, db
	ch, err := clickhousedb.Open(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Migrate(context.Background(), slog.New(slog.DiscardHandler)); err != nil {
		b.Fatal(err)
	}
	return ch
}

func BenchmarkSinkFlowsToClickHouse(b *testing.B) {
	addr := testenv.ClickHouseAddr(b)
	client := testenv.Tool(b, "clickhouse-client")
	_, port, _ := net.SplitHostPort(addr)
	admin, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { admin.Close() }) // registered first, so it runs after the drops below
	ctx := context.Background()
	msgs := workload()
	var sinkSeconds, peerSeconds float64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		db, peerDB := testenv.Name(b, "wsb"), testenv.Name(b, "wsp")
		b.Cleanup(func() {
			admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
			admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+peerDB)
		})
		ch, peer := open(b, addr, db), open(b, addr, peerDB)

		// The sink as `wormsign run` wires it, on the in-process bus:
		// decode, batch, ledger check, columnar INSERT, ordered commits.
		mem := bus.NewMemory(4096)
		// The defaults: batches bounded by 20000 messages, 16 MiB or 1 s,
		// two workers.
		cfg := sink.DefaultConfiguration()
		cfg.Retention = sink.RetentionConfiguration{}
		s, err := sink.New(cfg, sink.Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
			Bus: mem, FlowsTopic: "flows", AlertsTopic: "alerts", ClickHouse: ch})
		if err != nil {
			b.Fatal(err)
		}
		p, _ := mem.Producer("flows")
		b.StartTimer() // ns/op is the sink's time; the peer is timed apart
		start := time.Now()
		s.Start()
		for i := 0; i < len(msgs); i += 1024 {
			if err := p.Publish(ctx, msgs[i:min(i+1024, len(msgs))]...); err != nil {
				b.Fatal(err)
			}
		}
		s.Drain()
		sinkSeconds += time.Since(start).Seconds()
		b.StopTimer()
		s.Stop()
		var n uint64
		if err := admin.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&n); err != nil || n != benchFlows {
			b.Fatalf("flows has %d rows (%v), want %d", n, err, benchFlows)
		}

		// The peer: the same rows, exported in Native format, loaded by
		// clickhouse-client into a fresh copy of the schema (views too).
		dump := filepath.Join(b.TempDir(), "flows.native")
		out, err := os.Create(dump)
		if err != nil {
			b.Fatal(err)
		}
		exp := exec.Command(client, "--port", port, "--query", "SELECT * FROM "+db+".flows FORMAT Native")
		exp.Stdout = out
		if err := exp.Run(); err != nil {
			b.Fatalf("export: %v", err)
		}
		out.Close()
		in, _ := os.Open(dump)
		load := exec.Command(client, "--port", port, "--query", "INSERT INTO "+peerDB+".flows FORMAT Native")
		load.Stdin = in
		var stderr bytes.Buffer
		load.Stderr = io.MultiWriter(&stderr)
		start = time.Now()
		if err := load.Run(); err != nil {
			b.Fatalf("clickhouse-client load: %v\n%s", err, stderr.String())
		}
		peerSeconds += time.Since(start).Seconds()
		in.Close()
		if err := admin.QueryRow(ctx, "SELECT count() FROM "+peerDB+".flows").Scan(&n); err != nil || n != benchFlows {
			b.Fatalf("peer flows has %d rows (%v), want %d", n, err, benchFlows)
		}
		ch.Close()
		peer.Close()
	}
	rows := float64(benchFlows * b.N)
	sinkRate, peerRate := rows/sinkSeconds, rows/peerSeconds
	b.ReportMetric(sinkRate, "rows/s")
	b.ReportMetric(peerRate, "clickhouse-client_rows/s")
	b.ReportMetric(sinkRate/peerRate, "x_clickhouse-client")
	fmt.Printf("sink: %.0f flow rows/s into ClickHouse (target 500000); clickhouse-client Native load of the same rows: %.0f rows/s; ratio %.2f\n",
		sinkRate, peerRate, sinkRate/peerRate)
}
