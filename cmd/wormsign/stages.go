package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/collector"
	"github.com/wormsign/wormsign/console"
	"github.com/wormsign/wormsign/containment"
	"github.com/wormsign/wormsign/detector"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/remediation"
	"github.com/wormsign/wormsign/sink"
)

type stages struct{ collector, detector, sink, console, identity bool }

var allStages = stages{collector: true, detector: true, sink: true, console: true, identity: true}

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
		if want != allStages {
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
	if want.console && !want.sink && cfg.ClickHouse.Addr == "" {
		return errors.New("clickhouse.addr is empty: `wormsign console` reads history from ClickHouse")
	}
	if (want.sink || want.console || want.identity) && cfg.ClickHouse.Addr != "" {
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
	// One guard checks the credentials (http.token, http.tokens) of the
	// console and the block list API, so that a logout ends the session
	// for both; an admin token is made up for this run when none is
	// configured.
	var (
		guard     *console.Guard
		token     string
		generated bool
		cont      *containment.Component
	)
	// Containment runs in every process that serves the console or runs
	// the sink: the console's holds and block list pages need it in the
	// process, and every instance is an identical decider (the same
	// topic, the same consumer group; see package containment).
	withContainment := (want.sink || want.console) && cfg.Containment.Enabled
	if want.console || withContainment {
		creds := cfg.HTTP.Credentials()
		if len(creds) == 0 {
			token, generated = console.GenerateToken(), true
			creds = []httpserver.Credential{{Name: httpserver.AdminName, Role: httpserver.RoleAdmin, Token: token}}
		} else {
			names := make([]string, len(creds))
			for i, c := range creds {
				names[i] = c.Name + " (" + c.Role.String() + ")"
			}
			logger.Info("http credentials", "names", strings.Join(names, ", "))
		}
		var err error
		if guard, err = console.NewGuard(creds, http.Limiter()); err != nil {
			return err
		}
	}
	if withContainment {
		var err error
		if cont, err = newContainment(cfg, logger, reg, b, ch, http, guard); err != nil {
			return err
		}
	}
	// Bindings first: the stages resolve with them from their first flow,
	// and they are stopped last.
	ids, err := startIdentity(cfg, logger, reg, b, ch, http, want.identity)
	if err != nil {
		return err
	}
	if ids.stop != nil {
		stops = append(stops, ids.stop)
	}
	if cont != nil && ids.store != nil {
		cont.FollowIdentity(ids.store)
	}
	// Remediation runs beside the console: one instance decides on the
	// cases (see package remediation).
	var rem *remediation.Component
	if want.console && cfg.Remediation.Enabled {
		if rem, err = newRemediation(cfg, logger, reg, b, ch, http, guard, cont, ids.table()); err != nil {
			return err
		}
	}
	if want.console {
		// First: on the in-process bus the console's queues must exist
		// before the stages publish; stopped last.
		var holder console.Holder
		if cont != nil {
			holder = cont
		}
		stop, err := startConsole(cfg, logger, reg, http, b, ch, guard, token, generated, holder, ids.table())
		if err != nil {
			return err
		}
		stops = append(stops, stop)
	} else if generated {
		fmt.Fprintf(os.Stderr, "\nwormsign block list API (no http.token configured, this one is made up for this run): %s\n\n", token)
	}
	if want.sink {
		sinkCfg := cfg.Sink
		if ch == nil {
			logger.Info("no clickhouse.addr: alerts go to stdout as JSON lines")
			sinkCfg.Stdout = true
		}
		s, err := sink.New(sinkCfg, sink.Dependencies{
			Logger: logger.With("component", "sink"), Registry: reg, Bus: b,
			FlowsTopic: cfg.Kafka.FlowsTopic, AlertsTopic: cfg.Kafka.AlertsTopic,
			ClickHouse: ch, Stdout: &lockedWriter{w: stdout}, Subscribers: cfg.subscribers(),
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
	if cont != nil {
		if err := cont.Start(); err != nil {
			stopAll()
			return err
		}
		stops = append(stops, cont.Stop)
	}
	if rem != nil {
		// Before the detector: on the in-process bus its queue must exist
		// before the first alert.
		if err := rem.Start(); err != nil {
			stopAll()
			return err
		}
		stops = append(stops, rem.Stop)
		if addr := rem.NoticeAddr(); addr != "" {
			logger.Info("notice server listening", "addr", addr)
		}
	}
	if want.detector {
		d, err := detector.New(cfg.Detector, detector.Dependencies{
			Logger: logger.With("component", "detector"), Registry: reg, Bus: b,
			FlowsTopic: cfg.Kafka.FlowsTopic, AlertsTopic: cfg.Kafka.AlertsTopic,
			Subscribers: cfg.subscribers(), Identity: ids.table(),
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
		var nat *identity.CGNAT
		if ids.store != nil && cfg.Identity.CGNAT.Enabled {
			nat = identity.NewCGNAT(cfg.Identity.CGNAT, ids.store, logger.With("component", "identity"), reg)
			nat.Start()
			stops = append(stops, func() error { nat.Stop(); return nil })
		}
		c, err := collector.New(cfg.Collector, collector.Dependencies{
			Logger: logger.With("component", "collector"), Registry: reg, Bus: b,
			Topic: cfg.Kafka.FlowsTopic, Subscribers: cfg.subscribers(), Identity: ids.table(), NAT: nat,
			RecordBytes: cfg.Kafka.BatchBytes,
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

// identities is the bindings a process follows.
type identities struct {
	store *identity.Store
	stop  func() error
}

// table is the bindings table, nil without identity.
func (i identities) table() *identity.Table {
	if i.store == nil {
		return nil
	}
	return i.store.Table()
}

// startIdentity loads the bindings when identity is on: the identity
// stage runs the sources (RADIUS accounting, the DHCP lease endpoint) and
// records into them; every other stage follows them.
func startIdentity(cfg Configuration, logger *slog.Logger, reg *prometheus.Registry, b bus.Bus, ch *clickhousedb.DB,
	http *httpserver.Component, sources bool) (identities, error) {
	if !cfg.Identity.Active() {
		return identities{}, nil
	}
	logger = logger.With("component", "identity")
	store := identity.NewStore(cfg.Identity, b, logger)
	if !sources {
		if err := store.Start(); err != nil {
			return identities{}, err
		}
		return identities{store: store, stop: func() error { store.Stop(); return nil }}, nil
	}
	// The static map may name DHCP clients (MAC or client id) too; it
	// is read once here, where the detector follows its changes.
	var staticID func(string) string
	if path := cfg.Detector.SubscriberMap; path != "" {
		m, err := detector.LoadMapping(path)
		if err != nil {
			return identities{}, err
		}
		staticID = m.LookupClient
	}
	c, err := identity.New(cfg.Identity, identity.Dependencies{Logger: logger, Registry: reg, Store: store, StaticID: staticID})
	if err != nil {
		return identities{}, err
	}
	// The writer of subscriber_bindings joins the topic before anything
	// is recorded: the in-process bus keeps nothing for later readers.
	var writer *identity.BindingsWriter
	if ch != nil {
		writer = identity.NewBindingsWriter(cfg.Identity, b, ch, logger, reg)
		if err := writer.Start(); err != nil {
			return identities{}, err
		}
	}
	stop := func() error {
		c.Stop()
		if writer != nil {
			writer.Stop()
		}
		return nil
	}
	if err := c.Start(); err != nil {
		if writer != nil {
			writer.Stop()
		}
		return identities{}, err
	}
	if h := c.LeaseHandler(); h != nil {
		http.Handle(identity.LeasePath, h)
	}
	return identities{store: store, stop: stop}, nil
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

// startConsole mounts the console on the HTTP server and starts it; a
// made-up token is printed once, with the console's URL, on stderr (stdout
// carries alerts); a configured token is never printed.
func startConsole(cfg Configuration, logger *slog.Logger, reg *prometheus.Registry, http *httpserver.Component, b bus.Bus,
	ch *clickhousedb.DB, guard *console.Guard, token string, generated bool, holder console.Holder, bindings *identity.Table) (func() error, error) {
	c, err := console.New(cfg.Console, console.Dependencies{
		Logger: logger.With("component", "console"), Registry: reg, Bus: b,
		AlertsTopic: cfg.Kafka.AlertsTopic, FlowsTopic: cfg.Kafka.FlowsTopic, ClickHouse: ch,
		Subscribers: cfg.subscribers(), Guard: guard, Holder: holder,
		Limiter: http.Limiter(), Identity: bindings,
	})
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	http.Handle("/", c.Handler())
	if cfg.HTTP.Listen != "" {
		url := consoleURL(http.Addr())
		if generated {
			fmt.Fprintf(os.Stderr, "\nwormsign console (no http.token configured, this one is made up for this run):\n    %slogin?token=%s\n\n", url, token)
		} else {
			logger.Info("console listening", "url", url)
		}
	}
	return c.Stop, nil
}

// consoleURL is the console's address as a browser on this machine reaches
// it.
func consoleURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr + "/"
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// newContainment prepares the block list policy that runs next to the sink
// and the console and mounts its API on the HTTP server, guarded by the console's guard (a
// token, or the console's login cookie; each route's role).
func newContainment(cfg Configuration, logger *slog.Logger, reg *prometheus.Registry, b bus.Bus,
	ch *clickhousedb.DB, http *httpserver.Component, guard *console.Guard) (*containment.Component, error) {
	groups := map[string][]network.Prefix{}
	for _, g := range cfg.Detector.Groups {
		groups[g.Name] = g.Networks
	}
	c, err := containment.New(cfg.Containment, containment.Dependencies{
		Logger: logger.With("component", "containment"), Registry: reg, Bus: b,
		AlertsTopic: cfg.Kafka.AlertsTopic, ClickHouse: ch, Webhooks: cfg.Sink.Webhooks,
		DetectorAllowList: cfg.Detector.AllowList, DetectorGroups: groups,
		Authorize: guard.Authorize,
	})
	if err != nil {
		return nil, err
	}
	http.Handle("/api/v1/blocklist", c.Handler())
	http.Handle("/api/v1/blocklist/", c.Handler())
	return c, nil
}

// newRemediation prepares the cases, notices and walled garden beside the
// console, its API mounted on the HTTP server behind the console's guard.
func newRemediation(cfg Configuration, logger *slog.Logger, reg *prometheus.Registry, b bus.Bus, ch *clickhousedb.DB,
	http *httpserver.Component, guard *console.Guard, cont *containment.Component, bindings *identity.Table) (*remediation.Component, error) {
	groups := map[string][]network.Prefix{}
	for _, g := range cfg.Detector.Groups {
		groups[g.Name] = g.Networks
	}
	deps := remediation.Dependencies{
		Logger: logger.With("component", "remediation"), Registry: reg, Bus: b, AlertsTopic: cfg.Kafka.AlertsTopic,
		ClickHouse: ch, Identity: bindings, Subscribers: cfg.subscribers(), Groups: groups,
		Webhooks: cfg.Sink.Webhooks, Authorize: guard.Authorize,
	}
	if cont != nil {
		deps.Containment = cont
	}
	r, err := remediation.New(cfg.Remediation, deps)
	if err != nil {
		return nil, err
	}
	h := r.Handler()
	http.Handle(remediation.APIPath, h)
	http.Handle(remediation.APIPath+"/", h)
	return r, nil
}
