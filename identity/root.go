package identity

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LeasePath is where the DHCP lease endpoint is mounted.
const LeasePath = "/api/v1/identity/leases"

// Recorder is what the sources write bindings to: the Store.
type Recorder interface {
	Record(ctx context.Context, bs ...Binding) ([]Applied, error)
}

// Dependencies of the identity component.
type Dependencies struct {
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Store is where bindings go; the component starts and stops it.
	Store *Store
	// StaticID names the customer of a DHCP client (its MAC or client
	// id, lowercase hex octets joined by colons) from the static map
	// (detector.subscriber_map); "" when it names none. May be nil.
	StaticID func(key string) string
	// Now is the wall clock; time.Now when nil.
	Now func() time.Time
}

// Component runs the identity sources: the RADIUS accounting listener and
// the DHCP lease endpoint. The collector's CGNAT bindings are recorded by
// the collector itself, into the same store.
type Component struct {
	config  Configuration
	deps    Dependencies
	metrics *metrics
	radius  *radiusServer
	leases  http.Handler
}

// New checks the configuration; it starts nothing.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil {
		return nil, fmt.Errorf("identity: no store")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Component{config: config, deps: deps}
	c.metrics = newMetrics(deps.Registry, deps.Store)
	if config.DHCP.Token != "" {
		c.leases = newLeaseHandler(config.DHCP, deps.Store, deps.Store.Table(), deps.StaticID, c.metrics, deps.Logger, deps.Now)
	}
	return c, nil
}

// Start loads the bindings and opens the listeners.
func (c *Component) Start() error {
	if err := c.deps.Store.Start(); err != nil {
		return err
	}
	if c.config.RADIUS.Listen != "" {
		c.radius = newRADIUSServer(c.config.RADIUS, c.deps.Store, c.deps.Store.Table(), c.metrics, c.deps.Logger, c.deps.Now)
		if err := c.radius.Start(); err != nil {
			c.deps.Store.Stop()
			return err
		}
	}
	c.deps.Logger.Info("identity started", "bindings", c.deps.Store.Table().Len(),
		"radius", c.config.RADIUS.Listen, "dhcp_endpoint", c.config.DHCP.Token != "")
	return nil
}

// Stop closes the listeners and the store.
func (c *Component) Stop() {
	if c.radius != nil {
		c.radius.Stop()
	}
	c.deps.Store.Stop()
}

// LeaseHandler is the DHCP lease endpoint, nil without identity.dhcp.token.
func (c *Component) LeaseHandler() http.Handler { return c.leases }
