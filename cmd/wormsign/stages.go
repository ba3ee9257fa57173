package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/containment"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/sink"
)

type stages struct{ collector, detector, sink bool }

// lockedWriter lets several goroutines print whole lines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// runStages wires the chosen stages in order, runs them until ctx ends and
// stops them in reverse: the collector first, so that what it holds reaches
// the bus, then the consumers, which write what they hold.
func runStages(ctx context.Context, cfg Configuration, logger *slog.Logger, stdout io.Writer, want stages) error {
	reg := newRegistry()
	http := httpserver.New(logger, cfg.HTTP, reg)
	if err := http.Start(); err != nil {
		return err
	}
	defer http.Stop()

	var b bus.Bus
	if len(cfg.Kafka.Brokers) == 0 {
		if want != (stages{true, true, true}) {
			return errors.New("kafka.brokers is empty: only `wormsign run` works without Kafka")
		}
		b = bus.NewMemory(1024)
		logger.Info("no kafka.brokers: stages connected in process")
	} else {
		k, err := bus.NewKafka(ctx, cfg.Kafka)
		if err != nil {
			return err
		}
		b = k
		http.AddReadyCheck("kafka", func() error { return k.Ping(context.Background()) })
	}
	defer b.Close()

	var stops []func() error
	stopAll := func() error {
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			errs = append(errs, stops[i]())
		}
		return errors.Join(errs...)
	}

	var ch *clickhousedb.DB
	if want.sink {
		if cfg.ClickHouse.Addr != "" {
			var err error
			if ch, err = clickhousedb.Open(ctx, cfg.ClickHouse); err != nil {
				return err
			}
			defer ch.Close()
			if err := ch.Migrate(ctx, logger); err != nil {
				return err
			}
			http.AddReadyCheck("clickhouse", func() error { return ch.Ping(context.Background()) })
		}
		sinkCfg := cfg.Sink
		if ch == nil {
			logger.Info("no clickhouse.addr: alerts go to stdout as JSON lines")
			sinkCfg.Stdout = true
		}
		s, err := sink.New(sinkCfg, sink.Dependencies{
			Logger: logger.With("component", "sink"), Registry: reg, Bus: b,
			FlowsTopic: cfg.Kafka.FlowsTopic, AlertsTopic: cfg.Kafka.AlertsTopic,
			ClickHouse: ch, Stdout: &lockedWriter{w: stdout},
		})
		if err != nil {
			return err
		}
		if err := s.Start(); err != nil {
			return err
		}
		stops = append(stops, func() error {
			s.Drain()
			return s.Stop()
		})
	}
	if want.sink && cfg.Containment.Enabled {
		c, err := startContainment(cfg, logger, reg, b, ch, http)
		if err != nil {
			stopAll()
			return err
		}
		stops = append(stops, c.Stop)
	}
	if want.detector {
		d, err := detector.New(cfg.Detector, detector.Dependencies{
			Logger: logger.With("component", "detector"), Registry: reg, Bus: b,
			FlowsTopic: cfg.Kafka.FlowsTopic, AlertsTopic: cfg.Kafka.AlertsTopic,
			Subscribers: network.NewSubscribers(cfg.SubscriberNetworks),
		})
		if err != nil {
			stopAll()
			return err
		}
		if err := d.Start(); err != nil {
			stopAll()
			return err
		}
		stops = append(stops, func() error {
			// Let the detector finish what the collector handed over.
			d.Drain()
			return d.Stop()
		})
	}
	if want.collector {
		c, err := collector.New(cfg.Collector, collector.Dependencies{
			Logger: logger.With("component", "collector"), Registry: reg, Bus: b,
			Topic: cfg.Kafka.FlowsTopic, Subscribers: network.NewSubscribers(cfg.SubscriberNetworks),
		})
		if err != nil {
			stopAll()
			return err
		}
		if err := c.Start(); err != nil {
			stopAll()
			return err
		}
		stops = append(stops, c.Stop)
	}
	logger.Info("wormsign started", "version", version)
	<-ctx.Done()
	logger.Info("stopping")
	return stopAll()
}

func migrate(ctx context.Context, cfg Configuration, logger *slog.Logger) error {
	if cfg.ClickHouse.Addr == "" {
		return errors.New("clickhouse.addr is empty: nothing to migrate")
	}
	db, err := clickhousedb.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Migrate(ctx, logger)
}

// startContainment runs the block list policy next to the sink and mounts
// its API, guarded by http.token.
func startContainment(cfg Configuration, logger *slog.Logger, reg *prometheus.Registry, b bus.Bus,
	ch *clickhousedb.DB, http *httpserver.Component) (*containment.Component, error) {
	groups := map[string][]network.Prefix{}
	for _, g := range cfg.Detector.Groups {
		groups[g.Name] = g.Networks
	}
	token := cfg.HTTP.Token
	if token == "" {
		token = generateToken()
		logger.Warn("no http.token: generated one for the block list API", "token", token)
	}
	c, err := containment.New(cfg.Containment, containment.Dependencies{
		Logger: logger.With("component", "containment"), Registry: reg, Bus: b,
		AlertsTopic: cfg.Kafka.AlertsTopic, ClickHouse: ch, Webhooks: cfg.Sink.Webhooks,
		DetectorAllowList: cfg.Detector.AllowList, DetectorGroups: groups,
		Authorize: bearer(token),
	})
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	http.Handle("/api/v1/blocklist", c.Handler())
	http.Handle("/api/v1/blocklist/", c.Handler())
	return c, nil
}
