// Package sinkbench measures the sink: flow rows per second from Kafka
// into ClickHouse (MergeTree, the per-minute rollup view and the ledger
// view included), on both supported servers (18.16 and the current
// release), against a reference in the same run: the very same rows
// exported in Native format and POSTed to the server's HTTP interface into
// the same schema, which is the server's own bulk-load ceiling on this
// machine (Debian's clickhouse-client cannot INSERT into 26.9, so HTTP is
// the reference on both). `make bench` runs it with -benchtime 1x; each
// iteration writes benchFlows rows per server.
package sinkbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
	"github.com/wormsign/wormsign/internal/testenv/chtest"
	"github.com/wormsign/wormsign/sink"
)

const (
	benchFlows = 1_000_000
	// flowsPerMessage is what BenchmarkCollectors measured the
	// collector writing for 50,000 subscribers: 1.1 to 1.6 flows per
	// Kafka message; here 1 and 2 alternate with 3 in 5 messages of one
	// flow (1.4).
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
	for k, n := 0, 0; n < benchFlows; k++ {
		s := k % benchSubscribers
		src := netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)})
		flows := make([]flow.Flow, min(1+k%5/3, benchFlows-n)) // 1,1,1,2,2: 1.4 on average
		n += len(flows)
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
	return chtest.Database(b, cfg)
}

// httpAddr is the HTTP interface of a server of testenv.ClickHouseServers:
// deploy/services.sh puts 18.16's on 8123 and the current one's on 8124,
// on the host of the native address.
func httpAddr(server testenv.ClickHouseServer, native string) string {
	host, _, _ := net.SplitHostPort(native)
	if server.Name == "18.16" {
		return net.JoinHostPort(host, "8123")
	}
	return net.JoinHostPort(host, "8124")
}

func httpQuery(addr, query string, body io.Reader, out io.Writer) error {
	resp, err := http.Post("http://"+addr+"/?query="+url.QueryEscape(query), "application/octet-stream", body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, msg)
	}
	if out != nil {
		_, err = io.Copy(out, resp.Body)
	}
	return err
}

// BenchmarkSinkFlowsToClickHouse produces benchFlows flows (1.4 per
// message, as the collector writes them) to a Kafka topic, then times the
// sink consuming them from Kafka into ClickHouse until every row is
// there; the reference is the same rows in Native format POSTed to the
// server's HTTP interface.
func BenchmarkSinkFlowsToClickHouse(b *testing.B) {
	brokers := testenv.KafkaBrokers(b)
	msgs := workload()
	bcfg := bus.DefaultConfiguration()
	bcfg.Brokers = brokers
	bcfg.Compression = "none"
	bcfg.FlowsTopic = testenv.Name(b, "sinkflows")
	bcfg.AlertsTopic = bcfg.FlowsTopic + "-alerts"
	ctx := context.Background()
	k, err := bus.NewKafka(ctx, bcfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { k.DeleteTopics(context.Background(), bcfg.FlowsTopic, bcfg.AlertsTopic) })
	p, err := k.Producer(bcfg.FlowsTopic)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < len(msgs); i += 4096 {
		if err := p.Publish(ctx, msgs[i:min(i+4096, len(msgs))]...); err != nil {
			b.Fatal(err)
		}
	}
	p.Close()
	var lines []string
	// The defaults bound a batch by 20000 messages: at 1.4 flows per
	// message that is 28,000 rows per INSERT. The second variant raises
	// the bound to 200,000 messages (the 16 MiB and 1 s bounds unchanged)
	// to show what the bound costs.
	variants := []struct {
		name     string
		messages int
	}{{"defaults", 0}, {"batch_messages=200000", 200_000}}
	for _, server := range testenv.ClickHouseServers() {
		for _, v := range variants {
			b.Run(server.Name+"/"+v.name, func(b *testing.B) {
				addr := server.Addr(b)
				web := httpAddr(server, addr)
				admin, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { admin.Close() }) // registered first, so it runs after the drops below
				var sinkSeconds, peerSeconds float64
				for range b.N {
					db, peerDB := testenv.Name(b, "wsb"), testenv.Name(b, "wsp")
					b.Cleanup(func() {
						admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
						admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+peerDB)
					})
					ch, peer := open(b, addr, db), open(b, addr, peerDB)

					// The sink as `wormsign sink` wires it, on Kafka with a
					// fresh group (from the topic's start): decode, batch,
					// ledger check, columnar INSERT, ordered commits. The
					// defaults: batches bounded by 20000 messages, 16 MiB or
					// 1 s, two workers.
					cfg := sink.DefaultConfiguration()
					cfg.Retention = sink.RetentionConfiguration{}
					cfg.Group = testenv.Name(b, "sinkbench")
					if v.messages > 0 {
						cfg.BatchMessages = v.messages
					}
					s, err := sink.New(cfg, sink.Dependencies{Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
						Bus: k, FlowsTopic: bcfg.FlowsTopic, AlertsTopic: bcfg.AlertsTopic, ClickHouse: ch})
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					if err := s.Start(); err != nil {
						b.Fatal(err)
					}
					var n uint64
					for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
						if err := admin.QueryRow(ctx, "SELECT count() FROM "+db+".flows").Scan(&n); err == nil && n >= benchFlows {
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("flows has %d rows after 5 minutes, want %d", n, benchFlows)
						}
					}
					sinkSeconds += time.Since(start).Seconds()
					s.Stop()
					if n != benchFlows {
						b.Fatalf("flows has %d rows, want %d", n, benchFlows)
					}

					// The reference: the same rows, exported in Native format,
					// POSTed over HTTP into a fresh copy of the schema (views too).
					dump := filepath.Join(b.TempDir(), "flows.native")
					out, err := os.Create(dump)
					if err != nil {
						b.Fatal(err)
					}
					if err := httpQuery(web, "SELECT * FROM "+db+".flows FORMAT Native", nil, out); err != nil {
						b.Fatalf("export: %v", err)
					}
					out.Close()
					in, _ := os.Open(dump)
					start = time.Now()
					if err := httpQuery(web, "INSERT INTO "+peerDB+".flows FORMAT Native", in, nil); err != nil {
						b.Fatalf("HTTP load: %v", err)
					}
					peerSeconds += time.Since(start).Seconds()
					in.Close()
					if err := admin.QueryRow(ctx, "SELECT count() FROM "+peerDB+".flows").Scan(&n); err != nil || n != benchFlows {
						b.Fatalf("reference flows has %d rows (%v), want %d", n, err, benchFlows)
					}
					ch.Close()
					peer.Close()
				}
				rows := float64(benchFlows * b.N)
				sinkRate, peerRate := rows/sinkSeconds, rows/peerSeconds
				b.ReportMetric(sinkRate, "rows/s")
				b.ReportMetric(peerRate, "http_native_rows/s")
				b.ReportMetric(sinkRate/peerRate, "x_reference")
				lines = append(lines, fmt.Sprintf("| %s (%s) | %s | %.0f | %.0f | %.2f |", server.Name, addr, v.name, sinkRate, peerRate, sinkRate/peerRate))
			})
		}
	}
	fmt.Printf("\nSink: Kafka (no compression, %d flows in %d messages, 1.4 flows/message, 8 partitions, sink: 2 workers, batches ≤ batch_messages (default 20000)/16 MiB/1 s) → ClickHouse flows table with its views; reference: the same rows as Native POSTed to the HTTP interface\n", benchFlows, len(msgs))
	fmt.Println("| server | sink configuration | sink rows/s | reference rows/s | ratio (target ≥ 0.9) |")
	fmt.Println("|---|---|---|---|---|")
	for _, l := range lines {
		fmt.Println(l)
	}
}
