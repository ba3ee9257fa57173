// Package console is the NOC console and its HTTP API: the incident board,
// incident and subscriber pages, top talkers, acknowledgements and
// a Server-Sent Events stream of alerts. `wormsign run` serves it on
// http.listen next to /metrics; `wormsign console` serves it alone in a
// Kafka + ClickHouse deployment.
//
// History comes from a Store: ClickHouse (alerts, flows_1m,
// incident_actions) where it is configured, else a bounded in-memory store
// fed by the alerts and flows topics. Live alerts come from the alerts
// topic, read in the console's own consumer group: on Kafka from the end
// of the topic, in a group of its own per instance that never commits, so
// that every instance sees every alert and restarts cost nothing. Who a
// subscriber is (the customers who held its address, and when) comes from
// ClickHouse subscriber_bindings, else from this process's identity table.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
)

//go:embed web
var webFS embed.FS

// Dependencies of the console.
type Dependencies struct {
	Logger   *slog.Logger
	Registry prometheus.Registerer
	Bus      bus.Bus
	// AlertsTopic is read for live alerts (and the in-memory store);
	// FlowsTopic for the in-memory minute counters when ClickHouse is nil.
	AlertsTopic, FlowsTopic string
	// ClickHouse, when set, is the store; nil keeps history in memory.
	// It is also where the console reads who held an address
	// (subscriber_bindings), over identity.retention.
	ClickHouse *clickhousedb.DB
	// Identity is the bindings table of this process, read for who held
	// an address when there is no ClickHouse (then the console knows what
	// identity.keep keeps); nil: no identity here.
	Identity *identity.Table
	// Subscribers says which address of a flow is its subscriber, for the
	// in-memory counters (as the sink does for flows_1m).
	Subscribers network.Subscribers
	// Token is http.token: the credential "admin", role admin. Credentials
	// are the others (http.tokens). Together they guard the console and
	// /api/, and must not be empty: cmd generates a token when none is
	// configured.
	Token       string
	Credentials []httpserver.Credential
	// Guard, when set, checks the credentials instead of one made from
	// Token and Credentials: cmd shares one with the block list API, so
	// that a logout ends the session for both.
	Guard *Guard
	// Holder, when containment runs in this process, takes the acks that
	// ask to hold an incident's block; nil answers such acks with 400.
	Holder Holder
	// Limiter throttles failed token checks; the HTTP server's, shared
	// with the other APIs it serves. Nil: one of the console's own.
	Limiter *httpserver.AuthLimiter
	// Now is the clock (nil: time.Now); tests set it.
	Now func() time.Time
}

// Holder postpones or lifts the block of an incident (containment).
type Holder interface {
	Hold(ctx context.Context, incidentID, by, note string) error
}

// tailer is a bus that can read a topic from its end in a consumer group
// that never commits (bus.Kafka).
type tailer interface {
	Tail(topic, group string) (bus.Consumer, error)
}

// Component is the console.
type Component struct {
	config  Configuration
	deps    Dependencies
	metrics *metrics
	store   Store
	memory  *memoryStore // nil with ClickHouse
	// bindings answers who held what; nil when no identity is known.
	bindings bindingSource
	hub      *hub
	handler  http.Handler
	guard    *Guard

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	consumers []bus.Consumer
	stopping  chan struct{}
	stopOnce  sync.Once
}

// New prepares the console; Start reads the topics.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if deps.Token == "" && len(deps.Credentials) == 0 && deps.Guard == nil {
		return nil, errors.New("console: no credentials (http.token or http.tokens)")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Component{config: config, deps: deps, stopping: make(chan struct{})}
	if deps.ClickHouse != nil {
		host, _ := os.Hostname()
		c.store = &clickhouseStore{db: deps.ClickHouse, instance: host + ":" + strconv.Itoa(os.Getpid()), subscribers: deps.Subscribers}
	} else {
		c.memory = newMemoryStore(config, deps.Subscribers)
		c.store = c.memory
	}
	c.bindings = newBindingSource(deps.ClickHouse, deps.Identity)
	c.metrics = newMetrics(deps.Registry, c)
	if deps.Limiter == nil {
		deps.Limiter = httpserver.NewAuthLimiter(deps.Registry)
		c.deps.Limiter = deps.Limiter
	}
	if c.guard = deps.Guard; c.guard == nil {
		creds := deps.Credentials
		if deps.Token != "" {
			creds = append([]httpserver.Credential{{Name: httpserver.AdminName, Role: httpserver.RoleAdmin, Token: deps.Token}}, creds...)
		}
		if err := httpserver.ValidateCredentials(creds, deps.Token != ""); err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		g, err := NewGuard(creds, deps.Limiter)
		if err != nil {
			return nil, err
		}
		g.now = deps.Now
		c.guard = g
	}
	c.hub = newHub(config.StreamBacklog, c.metrics.streamDropped.Inc)
	c.handler = c.routes()
	return c, nil
}

func (c *Component) now() time.Time { return c.deps.Now() }

// Handler serves the console and the API; mount it at "/".
func (c *Component) Handler() http.Handler { return c.handler }

func (c *Component) consumer(topic string) (bus.Consumer, error) {
	if c.deps.Bus.Durable() {
		t, ok := c.deps.Bus.(tailer)
		if !ok {
			return nil, fmt.Errorf("console: the bus cannot read %s from its end", topic)
		}
		host, _ := os.Hostname()
		return t.Tail(topic, fmt.Sprintf("%s-%s-%s", c.config.Group, host, GenerateToken()[:8]))
	}
	return c.deps.Bus.Consumer(topic, c.config.Group)
}

// Start joins the topics. On the in-process bus it must run before the
// stages that publish, whose queues exist only for the groups already
// joined.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	alerts, err := c.consumer(c.deps.AlertsTopic)
	if err != nil {
		cancel()
		return fmt.Errorf("cannot read alerts topic %s: %w", c.deps.AlertsTopic, err)
	}
	c.consumers = append(c.consumers, alerts)
	c.run(ctx, alerts, c.handleAlert)
	if c.memory != nil {
		flows, err := c.consumer(c.deps.FlowsTopic)
		if err != nil {
			c.Stop()
			return fmt.Errorf("cannot read flows topic %s: %w", c.deps.FlowsTopic, err)
		}
		c.consumers = append(c.consumers, flows)
		var batch []flow.Flow
		c.run(ctx, flows, func(m bus.Message) {
			var err error
			if batch, err = flow.DecodeBatch(batch[:0], m.Value); err != nil {
				c.metrics.badMessages.WithLabelValues("flows").Inc()
				return
			}
			c.memory.addFlows(batch)
			c.metrics.flows.Add(float64(len(batch)))
		})
	}
	return nil
}

func (c *Component) run(ctx context.Context, f bus.Fetcher, handle func(bus.Message)) {
	msgs := make(chan bus.Message, 64)
	backoff := retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		bus.Feed(ctx, f, backoff, func(err error, wait time.Duration) {
			c.deps.Logger.Warn("cannot read topic", "error", err, "retry_in", wait)
		}, msgs)
	}()
	go func() {
		defer c.wg.Done()
		for m := range msgs {
			handle(m)
		}
	}()
}

func (c *Component) handleAlert(m bus.Message) {
	a, err := alert.Unmarshal(m.Value)
	if err != nil {
		c.metrics.badMessages.WithLabelValues("alerts").Inc()
		c.deps.Logger.Warn("skipping undecodable alert", "partition", m.Partition, "offset", m.Offset, "error", err)
		return
	}
	c.metrics.alerts.Inc()
	if c.memory != nil {
		c.memory.addAlert(a)
	}
	data, err := a.Marshal()
	if err != nil {
		return
	}
	c.hub.publish(data)
}

// Stop ends the stream's clients and stops reading the topics.
func (c *Component) Stop() error {
	c.stopOnce.Do(func() { close(c.stopping) })
	c.hub.closeAll()
	if c.cancel != nil {
		c.cancel()
	}
	var errs []error
	for _, cons := range c.consumers {
		errs = append(errs, cons.Close())
	}
	c.wg.Wait()
	return errors.Join(errs...)
}

func (c *Component) counted(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := httpserver.NewStatusRecorder(w)
		h(sw, r)
		c.metrics.requests.WithLabelValues(route, httpserver.CodeLabel(sw.Status())).Inc()
	}
}

func (c *Component) routes() http.Handler {
	mux := http.NewServeMux()
	// Every route names the role it needs (see httpserver.Role).
	api := func(pattern, route string, need httpserver.Role, h http.HandlerFunc) {
		mux.HandleFunc(pattern, c.counted(route, c.requireAPI(route, need, h)))
	}
	viewer, operator := httpserver.RoleViewer, httpserver.RoleOperator
	api("GET /api/v1/incidents", "incidents", viewer, c.serveIncidents)
	api("GET /api/v1/incidents/{id}", "incident", viewer, c.serveIncident)
	api("GET /api/v1/incidents/{id}/xarf", "xarf", viewer, c.serveXARF)
	api("POST /api/v1/incidents/{id}/ack", "ack", operator, c.serveAck)
	api("GET /api/v1/subscribers/{ip}", "subscriber", viewer, c.serveSubscriber)
	api("GET /api/v1/subscribers/{ip}/chart.svg", "chart", viewer, c.serveChart)
	api("GET /api/v1/customers/{id}", "customer", viewer, c.serveCustomer)
	api("GET /api/v1/top", "top", viewer, c.serveTop)
	api("GET /api/v1/top/smtp", "top_smtp", viewer, c.serveTopSMTP)
	api("GET /api/v1/alerts/stream", "stream", viewer, c.serveStream)
	api("GET /api/v1/session", "session", httpserver.RoleExport, c.serveSession)
	api("/api/", "unknown", httpserver.RoleExport, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API endpoint: "+r.Method+" "+r.URL.Path)
	})

	static, _ := fs.Sub(webFS, "web/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServer(http.FS(static))))
	mux.HandleFunc("/login", c.counted("login", c.serveLogin))
	mux.HandleFunc("POST /logout", c.counted("logout", c.serveLogout))
	page := func(w http.ResponseWriter, r *http.Request) { c.servePage(w, "index.html", http.StatusOK) }
	for _, p := range []string{"GET /{$}", "GET /incidents/{id}", "GET /subscribers/{ip}", "GET /customers/{id}", "GET /search", "GET /top", "GET /blocklist", "GET /blocklist/actions",
		"GET /cases", "GET /cases/{id}", "GET /desk"} {
		mux.HandleFunc(p, c.counted("page", c.requirePage("page", viewer, page)))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	})
	// Every console response, login and error pages included, carries
	// the policy (no inline code, no framing) and the other headers.
	return httpserver.SecurityHeaders(mux, false)
}

// servePage writes one of the HTML shells; the script fills it in.
func (c *Component) servePage(w http.ResponseWriter, name string, status int) {
	b, err := webFS.ReadFile("web/" + name)
	if err != nil {
		http.Error(w, "page missing", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
}
