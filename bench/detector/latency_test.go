package detectorbench

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/internal/testenv"
)

// BenchmarkAlertLatency measures, on the real Kafka, the time from writing
// the flow batch that crosses the smtp_fanout threshold to the flows topic
// to reading its alert from the alerts topic: the detector's share of the
// design's five-second budget.
func BenchmarkAlertLatency(b *testing.B) {
	bcfg := bus.DefaultConfiguration()
	bcfg.Brokers = testenv.KafkaBrokers(b)
	bcfg.Partitions = 4
	bcfg.FlowsTopic = testenv.Name(b, "flows")
	bcfg.AlertsTopic = bcfg.FlowsTopic + "_alerts"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := bus.NewKafka(ctx, bcfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { k.DeleteTopics(context.Background(), bcfg.FlowsTopic, bcfg.AlertsTopic) })
	cfg := detector.DefaultConfiguration()
	cfg.Group = testenv.Name(b, "g")
	d, err := detector.New(cfg, detector.Dependencies{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(), Bus: k,
		FlowsTopic: bcfg.FlowsTopic, AlertsTopic: bcfg.AlertsTopic,
	})
	if err != nil {
		b.Fatal(err)
	}
	d.Start()
	defer d.Stop()
	for len(d.Partitions()) < bcfg.Partitions {
		time.Sleep(10 * time.Millisecond)
	}
	alertsIn, _ := k.Consumer(bcfg.AlertsTopic, testenv.Name(b, "reader"))
	defer alertsIn.Close()
	out, _ := k.Producer(bcfg.FlowsTopic)
	defer out.Close()
	const zombies = 20
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		lat = lat[:0]
		for z := 0; z < zombies; z++ {
			src := netip.AddrFrom4([4]byte{203, 0, 113, byte(i*zombies + z)})
			now := time.Now().UnixMilli()
			var fs []flow.Flow
			for j := 0; j < 25; j++ { // completed sessions: the threshold, not the sequential test
				fs = append(fs, flow.Flow{TimeReceivedMs: now, StartMs: now - 500, EndMs: now, SrcAddr: src,
					DstAddr: netip.AddrFrom4([4]byte{198, 18, byte(z), byte(j)}), DstPort: 25, Proto: flow.ProtoTCP,
					TCPFlags: flow.TCPSyn | flow.TCPAck | flow.TCPFin, Packets: 12})
			}
			began := time.Now()
			if err := out.Publish(ctx, bus.Message{Key: src.AsSlice(), Value: flow.AppendBatch(nil, fs)}); err != nil {
				b.Fatal(err)
			}
			for {
				m, err := alertsIn.Fetch(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if a, _ := alert.Unmarshal(m.Value); a.SubscriberIP == src.String() && a.State == alert.StateOpen {
					break
				}
			}
			lat = append(lat, time.Since(began))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms_p50_flow_to_alert")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "ms_max_flow_to_alert")
}
