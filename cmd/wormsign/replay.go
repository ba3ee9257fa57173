package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/sink"
)

// replay feeds captures through the whole pipeline at full speed: the
// collector's decoder and publishers, the bus, the detector and the sink.
// With ClickHouse configured it writes flows and alerts there as the sink
// of `wormsign run` does (not to webhooks: old alerts are not news), once
// per content of the captures. With printFlows it only decodes and prints
// each flow.
func replay(ctx context.Context, cfg Configuration, logger *slog.Logger, stdout io.Writer, files []string, printFlows bool) error {
	if printFlows {
		return printCaptureFlows(ctx, cfg, logger, stdout, files)
	}
	reg := newRegistry()
	memory := bus.NewMemory(1024)
	subscribers := cfg.subscribers()
	alerts := &alertLines{}
	flowsTopic, alertsTopic := cfg.Kafka.FlowsTopic, cfg.Kafka.AlertsTopic
	sinkCfg := sink.Configuration{Group: "replay", BatchMessages: 1, FlushInterval: cfg.Sink.FlushInterval, Stdout: true}
	var target *replayTarget
	if cfg.ClickHouse.Addr != "" {
		db, err := clickhousedb.Open(ctx, cfg.ClickHouse)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := db.Migrate(ctx, logger); err != nil {
			return err
		}
		if target, err = newReplayTarget(db, files); err != nil {
			return err
		}
		switch done, err := target.done(ctx); {
		case err != nil:
			return err
		case done:
			logger.Info("these captures are in ClickHouse already: alerts on stdout only", "replay", target.id)
			target = nil
		default:
			if err := target.clearPartial(ctx, logger); err != nil {
				return err
			}
			flowsTopic, alertsTopic = target.flowsTopic, target.alertsTopic
			sinkCfg = cfg.Sink
			// Retention is the live sink's business: a replay of old
			// captures must not start by dropping their days.
			sinkCfg.Group, sinkCfg.Stdout, sinkCfg.Webhooks = "replay", true, nil
			sinkCfg.Retention = sink.RetentionConfiguration{}
		}
	}
	sinkDeps := sink.Dependencies{Logger: logger, Registry: reg, Bus: memory, FlowsTopic: flowsTopic,
		AlertsTopic: alertsTopic, Stdout: alerts, Subscribers: subscribers}
	if target != nil {
		sinkDeps.ClickHouse = target.db
	}
	s, err := sink.New(sinkCfg, sinkDeps)
	if err != nil {
		return err
	}
	d, err := detector.New(cfg.Detector, detector.Dependencies{
		Logger: logger, Registry: reg, Bus: memory, FlowsTopic: flowsTopic,
		AlertsTopic: alertsTopic, Subscribers: subscribers, ResolveAtEnd: true,
	})
	if err != nil {
		return err
	}
	colCfg := cfg.Collector
	colCfg.NetFlowListen, colCfg.SFlowListen = nil, nil
	c, err := collector.New(colCfg, collector.Dependencies{
		Logger: logger, Registry: reg, Bus: memory, Topic: flowsTopic, Subscribers: subscribers,
	})
	if err != nil {
		return err
	}
	// In a ClickHouse cluster the sink connects to every shard at start.
	if err := s.Start(); err != nil {
		return err
	}
	d.Start()
	if err := c.Start(); err != nil {
		return err
	}
	progress := newReplayProgress(files)
	var readErr error
	for _, file := range files {
		readErr = decode.ReadCapture(file, func(dg decode.Datagram) error {
			n := c.Ingest(decode.Family(dg.Payload), dg.From, dg.Payload, dg.TimeMs, true)
			progress.datagram(len(dg.Payload), n, dg.TimeMs)
			return ctx.Err()
		})
		if readErr != nil {
			break
		}
	}
	// Drain stage by stage so that every flow read is evaluated and every
	// alert written before we print.
	c.Stop()
	d.Drain()
	dErr := d.Stop()
	s.Drain()
	sErr := s.Stop()
	progress.done()
	n, printErr := alerts.printSorted(stdout)
	var markErr error
	if target != nil && readErr == nil && dErr == nil && sErr == nil && printErr == nil {
		// Only a replay whose every flow and alert landed is marked: an
		// interrupted one is cleared and written again next time.
		rows := counterValue(reg, "wormsign_sink_rows_total", "table", "flows")
		alertRows := counterValue(reg, "wormsign_sink_rows_total", "table", "alerts")
		if rows == float64(progress.flows) && alertRows == float64(n) {
			markErr = target.markDone(ctx, uint64(progress.flows), uint64(n))
		} else {
			markErr = fmt.Errorf("replay wrote %.0f of %d flows and %.0f of %d alerts to ClickHouse; run it again to complete it",
				rows, progress.flows, alertRows, n)
		}
	}
	logger.Info("replay done", "files", len(files), "datagrams", progress.datagrams, "flows", progress.flows,
		"late_flows", int64(counterSum(reg, "wormsign_detector_late_flows_total")), "alerts", n,
		"duration", time.Since(progress.start).Round(time.Millisecond))
	return errors.Join(readErr, dErr, sErr, printErr, markErr)
}

// printCaptureFlows prints every flow of the captures as a JSON line,
// decoded with the collector's own decoder and configuration.
func printCaptureFlows(ctx context.Context, cfg Configuration, logger *slog.Logger, stdout io.Writer, files []string) error {
	enc := json.NewEncoder(stdout)
	dec := decode.New(cfg.Collector.Decode)
	for _, file := range files {
		err := decode.ReadCapture(file, func(d decode.Datagram) error {
			flows, _, err := dec.Decode(decode.Family(d.Payload), d.From, d.Payload, d.TimeMs, nil)
			if err != nil {
				logger.Warn("datagram dropped", "file", file, "from", d.From.String(), "error", err)
			}
			for _, f := range flows {
				if err := enc.Encode(f); err != nil {
					return fmt.Errorf("cannot print flow: %w", err)
				}
			}
			return ctx.Err()
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// alertLines gathers the sink's alert lines. The stages run concurrently
// and partitions interleave at their own pace, so lines arrive in an order
// that differs from run to run, while each incident's own events always
// come in order. Printing them sorted by event time makes a replay's
// output the same bytes on every run.
type alertLines struct {
	mu    sync.Mutex
	lines [][]byte
}

func (a *alertLines) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for line := range bytes.Lines(p) {
		a.lines = append(a.lines, bytes.Clone(line))
	}
	return len(p), nil
}

// printSorted writes the lines ordered by window end, subscriber and kind;
// a stable sort keeps each incident's events in the order they happened.
func (a *alertLines) printSorted(w io.Writer) (int, error) {
	type keyed struct {
		windowEnd time.Time
		sub, kind string
		line      []byte
	}
	out := make([]keyed, 0, len(a.lines))
	for _, line := range a.lines {
		var k struct {
			WindowEnd    time.Time `json:"window_end"`
			SubscriberIP string    `json:"subscriber_ip"`
			Kind         string    `json:"kind"`
		}
		if err := json.Unmarshal(line, &k); err != nil {
			return 0, fmt.Errorf("cannot read back an alert line: %w", err)
		}
		out = append(out, keyed{k.WindowEnd, k.SubscriberIP, k.Kind, line})
	}
	slices.SortStableFunc(out, func(x, y keyed) int {
		return cmp.Or(x.windowEnd.Compare(y.windowEnd), cmp.Compare(x.sub, y.sub), cmp.Compare(x.kind, y.kind))
	})
	for _, k := range out {
		if _, err := w.Write(k.line); err != nil {
			return 0, fmt.Errorf("cannot print alerts: %w", err)
		}
	}
	return len(out), nil
}

// replayProgress counts what replay has read and, when stderr is a
// terminal, shows it once a second.
type replayProgress struct {
	start             time.Time
	last              time.Time
	total, read       int64
	datagrams, flows  int
	eventMs           int64
	terminal, printed bool
}

func newReplayProgress(files []string) *replayProgress {
	p := &replayProgress{start: time.Now(), last: time.Now()}
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			p.total += st.Size()
		}
	}
	if st, err := os.Stderr.Stat(); err == nil {
		p.terminal = st.Mode()&os.ModeCharDevice != 0
	}
	return p
}

func (p *replayProgress) datagram(size, flows int, timeMs int64) {
	p.datagrams++
	p.flows += flows
	// Capture records carry headers too; the payload is close enough for
	// a share of the file.
	p.read += int64(size) + 58
	p.eventMs = max(p.eventMs, timeMs)
	if !p.terminal || p.datagrams%256 != 0 {
		return
	}
	if now := time.Now(); now.Sub(p.last) >= time.Second {
		p.last = now
		p.printed = true
		rate := float64(p.datagrams) / now.Sub(p.start).Seconds()
		fmt.Fprintf(os.Stderr, "\rreplay: %d%% of %d MB, %d datagrams, %d flows, event time %s, %.0f datagrams/s ",
			min(100, 100*p.read/max(p.total, 1)), p.total>>20, p.datagrams, p.flows,
			time.UnixMilli(p.eventMs).UTC().Format(time.RFC3339), rate)
	}
}

func (p *replayProgress) done() {
	if p.printed {
		fmt.Fprintln(os.Stderr)
	}
}

// counterValue is the series of a counter in reg with the given label.
func counterValue(reg *prometheus.Registry, name, label, value string) float64 {
	families, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// counterSum adds up every series of a counter in reg.
func counterSum(reg *prometheus.Registry, name string) float64 {
	families, err := reg.Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
