// Package httpserver serves /metrics, /healthz and /readyz for whichever
// stages run in the process, and whatever else a component mounts (the
// console at "/"). Those three stay open; http.token and http.tokens
// guard the console and the APIs, each route asking for a role.
package httpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Configuration of the HTTP server.
type Configuration struct {
	Listen string `yaml:"listen"`
	// Token guards the console and /api/ (not /metrics, /healthz,
	// /readyz): the credential "admin", with the role admin. Empty, and no
	// Tokens either: `wormsign run` and `wormsign console` generate one at
	// start and print the console's URL with it once.
	Token string `yaml:"token"`
	// TokenFile holds the token instead (read at start by the
	// configuration loader, internal/config.ReadSecretFiles).
	TokenFile string `yaml:"token_file"`
	// Tokens are named credentials with roles (export, viewer, operator,
	// admin), each its token or token_file; http.token is one more, named
	// "admin" with the role admin. Names and tokens are unique.
	Tokens []Credential `yaml:"tokens"`

	// ReadHeaderTimeout bounds reading a request's headers, ReadTimeout
	// the whole request with its body, WriteTimeout the response (the
	// alert stream extends its own deadline at every write), IdleTimeout
	// a kept-alive connection waiting for its next request.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	// MaxBodyBytes bounds every request body (each endpoint has a
	// smaller limit of its own); a larger body is answered 413.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// DefaultConfiguration listens on every address, port 8080.
func DefaultConfiguration() Configuration {
	return Configuration{
		Listen:            ":8080",
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxBodyBytes:      1 << 20,
	}
}

// Validate refuses negative limits; zero ones take the defaults.
func (c Configuration) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"read_header_timeout", c.ReadHeaderTimeout}, {"read_timeout", c.ReadTimeout},
		{"write_timeout", c.WriteTimeout}, {"idle_timeout", c.IdleTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("http.%s: %s, want > 0", d.key, d.v)
		}
	}
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("http.max_body_bytes: %d, want > 0", c.MaxBodyBytes)
	}
	return ValidateCredentials(c.Credentials(), c.Token != "")
}

// withDefaults replaces zero limits with the defaults.
func (c Configuration) withDefaults() Configuration {
	d := DefaultConfiguration()
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = d.ReadHeaderTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = d.ReadTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = d.MaxBodyBytes
	}
	return c
}

// ReadyFunc reports nil when a component can do its work.
type ReadyFunc func() error

// Component is the HTTP server.
type Component struct {
	config   Configuration
	logger   *slog.Logger
	registry *prometheus.Registry
	server   *http.Server
	mux      *http.ServeMux
	listener net.Listener
	limiter  *AuthLimiter

	mu     sync.Mutex
	checks map[string]ReadyFunc
}

// New prepares the server; Start listens.
func New(logger *slog.Logger, config Configuration, registry *prometheus.Registry) *Component {
	config = config.withDefaults()
	c := &Component{config: config, logger: logger, registry: registry, checks: map[string]ReadyFunc{},
		limiter: NewAuthLimiter(registry)}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", c.ready)
	c.mux = mux
	c.server = &http.Server{
		Handler: LimitBodies(mux, config.MaxBodyBytes),
		// The timeouts bound what a slow or idle client holds: a
		// goroutine and a socket each.
		ReadHeaderTimeout: config.ReadHeaderTimeout,
		ReadTimeout:       config.ReadTimeout,
		WriteTimeout:      config.WriteTimeout,
		IdleTimeout:       config.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	return c
}

// Limiter throttles failed token checks for every API on this server.
func (c *Component) Limiter() *AuthLimiter { return c.limiter }

// Handle serves pattern with h, next to /metrics, /healthz and /readyz
// (which stay as they are: the most specific pattern wins).
func (c *Component) Handle(pattern string, h http.Handler) { c.mux.Handle(pattern, h) }

// AddReadyCheck makes /readyz depend on check.
func (c *Component) AddReadyCheck(name string, check ReadyFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks[name] = check
}

func (c *Component) ready(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var failures []string
	for name, check := range c.checks {
		if err := check(); err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(failures) > 0 {
		sort.Strings(failures)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(failures, "\n"))
		return
	}
	fmt.Fprintln(w, "ready")
}

// Addr is the address the server listens on, once started.
func (c *Component) Addr() string { return c.listener.Addr().String() }

// Start listens; an empty listen address disables the server.
func (c *Component) Start() error {
	if c.config.Listen == "" {
		return nil
	}
	l, err := net.Listen("tcp", c.config.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen on http.listen %s: %w", c.config.Listen, err)
	}
	c.listener = l
	go func() {
		if err := c.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.logger.Error("http server stopped", "error", err)
		}
	}()
	c.logger.Info("http server listening", "addr", l.Addr().String())
	return nil
}

// Stop shuts the server down, waiting briefly for requests in flight.
func (c *Component) Stop() error {
	if c.listener == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.server.Shutdown(ctx)
}
