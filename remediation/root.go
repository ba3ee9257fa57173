// Package remediation tells the customer behind an incident, and pulls the
// plug if nothing changes: one case per customer groups its incidents of
// every kind (states open, notified, walled, blocked, released, closed,
// false_positive), an escalation ladder takes its steps in event time
// (notify by e-mail through the ISP's relay, the walled garden, the
// block), the notice server shows a walled customer its case and lets it
// release itself a limited number of times, and the abuse desk holds,
// skips, releases or marks a case a false positive over the API.
//
// The casebook (case.go) is pure, like containment's policy: the same
// alerts in the same order make the same cases. The component around it
// consumes the alerts topic (consumer group remediation.group), persists
// every change to ClickHouse (cases, case_events) before it commits the
// alert, sends the notices, asks containment for the walled and block
// steps, and delivers every case event to the webhooks (case.<type>).
// Without ClickHouse the cases live in memory (wormsign run).
//
// One instance decides: the cases of a customer are in its memory. Run
// remediation in one process (the one with the console, typically).
package remediation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/containment"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/httpserver"
	"github.com/wormsign/wormsign/network"
	"github.com/wormsign/wormsign/retry"
	"github.com/wormsign/wormsign/webhook"
)

// Container is what remediation needs of containment: the walled and
// block steps, and their release.
type Container interface {
	Contain(ctx context.Context, a containment.CaseAction) ([]containment.Change, error)
	ReleaseIncidents(ctx context.Context, ids []string, by, note string) ([]containment.Change, error)
}

// Dependencies of the component.
type Dependencies struct {
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Bus         bus.Bus
	AlertsTopic string
	// ClickHouse, when set, keeps the cases (cases, case_events).
	ClickHouse *clickhousedb.DB
	// Containment takes the walled and block steps; without it they are
	// recorded as contain_failed.
	Containment Container
	// Identity, when set, says which customer holds a connection's address
	// (the notice page) and where a customer is now (the steps).
	Identity *identity.Table
	// Subscribers labels an address as the detector does (the notice page
	// without identity).
	Subscribers network.Subscribers
	// Groups are the detector's subscriber groups (name -> networks), for
	// remediation.ladders.
	Groups map[string][]network.Prefix
	// Webhooks receive every case event.
	Webhooks []webhook.Configuration
	// Authorize guards the API (the console's guard).
	Authorize httpserver.AuthorizeFunc
	// Now is the wall clock; time.Now when nil.
	Now func() time.Time
}

// Component runs the casebook on the alerts.
type Component struct {
	config  Configuration
	deps    Dependencies
	metrics *metrics

	templates *Templates
	contacts  Contacts
	relay     *relay
	webhooks  []*webhook.Deliverer
	groups    *network.Table[string]
	// portalKey signs the notice page's release form.
	portalKey []byte

	mu   sync.Mutex
	book *Casebook

	notices    chan string // case ids to notify
	notice     *http.Server
	noticeAddr string
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// New checks the configuration and loads templates and contacts; it
// starts nothing.
func New(config Configuration, deps Dependencies) (*Component, error) {
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if err := webhook.ValidateTargets("sink.webhooks", deps.Webhooks); err != nil {
		return nil, err
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
	c := &Component{config: config, deps: deps, book: NewCasebook(config), notices: make(chan string, 10000),
		groups: network.NewTable[string](), portalKey: randomKey()}
	for name, nets := range deps.Groups {
		for _, n := range nets {
			c.groups.Insert(n.Prefix, name)
		}
	}
	c.book.groupOf = c.groupOf
	var err error
	if c.templates, err = LoadTemplates(config.Templates, config.DefaultLanguage); err != nil {
		return nil, err
	}
	switch {
	case config.Contacts.CSV != "":
		if c.contacts, err = LoadContactsCSV(config.Contacts.CSV); err != nil {
			return nil, err
		}
	case config.Contacts.URL != "":
		c.contacts = NewHTTPContacts(config.Contacts.URL, config.Contacts.Token)
	}
	if config.SMTP.Addr != "" {
		if c.relay, err = newRelay(config.SMTP); err != nil {
			return nil, err
		}
	}
	c.metrics = newMetrics(deps.Registry, c)
	return c, nil
}

func (c *Component) groupOf(a alert.Alert) string {
	if a.Evidence.Group != "" {
		return a.Evidence.Group
	}
	if p, err := network.ParsePrefix(a.SubscriberIP); err == nil {
		if g, ok := c.groups.Lookup(p.Addr()); ok {
			return g
		}
	}
	return ""
}

// Start loads the cases, then consumes alerts, runs the ladder's clock,
// sends notices and serves the notice page.
func (c *Component) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if c.deps.ClickHouse != nil {
		if err := c.load(ctx); err != nil {
			cancel()
			return err
		}
	}
	cons, err := c.deps.Bus.Consumer(c.deps.AlertsTopic, c.config.Group)
	if err != nil {
		cancel()
		return fmt.Errorf("remediation cannot consume alerts: %w", err)
	}
	if c.config.NoticeListen != "" {
		ln, err := net.Listen("tcp", c.config.NoticeListen)
		if err != nil {
			cons.Close()
			cancel()
			return fmt.Errorf("remediation.notice_listen %s: %w", c.config.NoticeListen, err)
		}
		c.noticeAddr = ln.Addr().String()
		c.notice = &http.Server{Handler: c.PortalHandler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.notice.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				c.deps.Logger.Error("notice server stopped", "error", err)
			}
		}()
	}
	c.webhooks, err = webhook.StartAll(c.deps.Webhooks, webhookPolicy, webhook.Dependencies{
		Logger: c.deps.Logger, Registry: c.deps.Registry, Component: "remediation"})
	if err != nil { // New validated the targets: does not happen
		c.deps.Logger.Error("case events not sent to a webhook", "error", err)
	}
	// The open cases are notified again after a restart only if their
	// notice had not gone out: a case still open (not notified) whose
	// notify step was taken is queued once more.
	c.mu.Lock()
	for _, cs := range c.book.Cases() {
		if cs.State == StateOpen && cs.Step > 0 && cs.Notices == 0 {
			c.queueNotice(cs.ID)
		}
	}
	c.mu.Unlock()
	c.wg.Add(3)
	go func() { defer c.wg.Done(); defer cons.Close(); c.consume(ctx, cons) }()
	go func() { defer c.wg.Done(); c.tick(ctx) }()
	go func() { defer c.wg.Done(); c.notify(ctx) }()
	return nil
}

// Stop ends everything Start began.
func (c *Component) Stop() error {
	if c.cancel != nil {
		c.cancel()
	}
	if c.notice != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.notice.Shutdown(ctx)
		cancel()
	}
	c.wg.Wait()
	for _, d := range c.webhooks {
		d.Stop()
	}
	return nil
}

// NoticeAddr is the notice server's address (after Start).
func (c *Component) NoticeAddr() string { return c.noticeAddr }

var webhookPolicy = webhook.Policy{MinBackoff: time.Second, MaxBackoff: time.Minute, Attempts: 10, Queue: 10000, DropOldest: true}

func (c *Component) consume(ctx context.Context, cons bus.Consumer) {
	bus.Each(ctx, cons, retry.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}, func(msg bus.Message) error {
		a, err := alert.Unmarshal(msg.Value)
		if err != nil {
			c.metrics.errors.WithLabelValues("decode").Inc()
			return nil
		}
		c.metrics.alerts.Inc()
		c.mu.Lock()
		res, err := c.book.Apply(a)
		c.mu.Unlock()
		if err != nil {
			c.metrics.errors.WithLabelValues("full").Inc()
			c.deps.Logger.Warn("no case for the alert", "alert", a.ID, "error", err)
		}
		// Fails only when ctx ended: the alert is read again after a restart.
		return c.handle(ctx, res)
	})
}

func (c *Component) tick(ctx context.Context) {
	t := time.NewTicker(c.config.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		res := c.book.Advance(c.deps.Now())
		c.mu.Unlock()
		if c.handle(ctx, res) != nil {
			return
		}
	}
}

// handle carries out a decision: the steps on the block list first (their
// failures become events too), then every event is persisted and sent to
// the webhooks, then the notices are queued.
func (c *Component) handle(ctx context.Context, res Result) error {
	for _, e := range res.Effects {
		switch e.Type {
		case EffectContain:
			if err := c.contain(ctx, e); err != nil {
				c.metrics.errors.WithLabelValues("contain").Inc()
				c.deps.Logger.Warn("case step not on the block list", "case", e.Case.ID, "step", e.Action, "error", err)
				c.mu.Lock()
				res.add(c.book.ContainFailed(e.Case.ID, e.Action+": "+err.Error(), c.deps.Now()))
				c.mu.Unlock()
			}
		case EffectRelease:
			if c.deps.Containment == nil {
				continue
			}
			if _, err := c.deps.Containment.ReleaseIncidents(ctx, e.IDs, e.Actor, "case "+e.Case.ID+": "+e.Note); err != nil &&
				!errors.Is(err, containment.ErrNotFound) && !errors.Is(err, containment.ErrNotBlocked) {
				c.metrics.errors.WithLabelValues("release").Inc()
				c.deps.Logger.Warn("case release not on the block list", "case", e.Case.ID, "error", err)
			}
		}
	}
	// The cases as the decision left them, taken once for the row in
	// ClickHouse, the metrics and the webhooks' bodies.
	c.mu.Lock()
	byID := map[string]Case{}
	var cases []Case
	for _, ev := range res.Events {
		if _, seen := byID[ev.CaseID]; seen {
			continue
		}
		if cs, ok := c.book.peek(ev.CaseID); ok {
			byID[ev.CaseID] = cs
			cases = append(cases, cs)
		}
	}
	c.mu.Unlock()
	if err := c.persist(ctx, res.Events, cases); err != nil {
		return err
	}
	for _, ev := range res.Events {
		cs := byID[ev.CaseID] // zero for a case evicted since: nothing to observe
		c.metrics.events.WithLabelValues(ev.Type).Inc()
		c.observe(ev, cs)
		c.deps.Logger.Info("case "+ev.Type, "case", ev.CaseID, "customer", ev.Customer, "actor", ev.Actor, "state", ev.State, "note", ev.Note)
		c.sendWebhooks(ctx, ev, cs)
	}
	c.mu.Lock()
	for _, e := range res.Effects {
		if e.Type == EffectNotify {
			c.queueNotice(e.Case.ID)
		}
	}
	c.mu.Unlock()
	return nil
}

// contain puts a step on the block list: at the customer's addresses now
// (identity), or the subscriber's.
func (c *Component) contain(ctx context.Context, e Effect) error {
	if c.deps.Containment == nil {
		return errors.New("containment is not enabled (containment.enabled)")
	}
	action := containment.ActionWalled
	if e.Action == StepBlock {
		action = containment.ActionQuarantine
	}
	a := containment.CaseAction{ID: e.ID, SubscriberID: e.Case.SubscriberID, Prefixes: c.prefixesOf(e.Case),
		Action: action, Actor: ActorPolicy, Note: "case " + e.Case.ID + ": " + e.Note, Duration: c.config.ContainFor}
	if e.Case.Alert.Evidence.Identity != nil {
		a.Customer = e.Case.Customer
	}
	if len(a.Prefixes) == 0 {
		return fmt.Errorf("no address known for customer %s", e.Case.Customer)
	}
	_, err := c.deps.Containment.Contain(ctx, a)
	return err
}

func (c *Component) prefixesOf(cs Case) []netip.Prefix {
	if c.deps.Identity != nil && cs.Alert.Evidence.Identity != nil {
		var out []netip.Prefix
		for _, b := range c.deps.Identity.Holdings(cs.Customer, c.deps.Now().UnixMilli()) {
			if b.Source != identity.SourceCGNAT {
				out = append(out, b.Prefix)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	if p, err := network.ParsePrefix(cs.SubscriberIP); err == nil {
		return []netip.Prefix{p.Prefix}
	}
	return nil
}

// queueNotice asks the notifier to send a case's notice; c.mu is held.
func (c *Component) queueNotice(id string) {
	select {
	case c.notices <- id:
	default:
		c.metrics.errors.WithLabelValues("notice_queue").Inc()
	}
}

// notify sends the queued notices, each with its retries, one at a time:
// a relay that is down holds back the rest rather than see them all
// given up together.
func (c *Component) notify(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-c.notices:
			sent, detail := c.sendNotice(ctx, id)
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			res, err := c.book.Notified(id, sent, detail, c.deps.Now())
			c.mu.Unlock()
			if err == nil && c.handle(ctx, res) != nil {
				return
			}
		}
	}
}

// sendNotice builds and sends a case's notice, retrying the relay; it says
// whether it went out, and what happened, for the case's history.
func (c *Component) sendNotice(ctx context.Context, id string) (bool, string) {
	c.mu.Lock()
	cs, _, ok := c.book.Get(id)
	c.mu.Unlock()
	if !ok {
		return false, "case gone"
	}
	if c.relay == nil {
		c.metrics.notices.WithLabelValues("no_relay").Inc()
		return false, "no relay configured (remediation.smtp.addr)"
	}
	if c.contacts == nil {
		c.metrics.notices.WithLabelValues("no_contact").Inc()
		return false, "no contacts source (remediation.contacts)"
	}
	contact, err := c.contacts.Lookup(ctx, cs.Customer)
	if err != nil {
		c.metrics.notices.WithLabelValues("no_contact").Inc()
		return false, "contact lookup: " + err.Error()
	}
	msg, err := c.buildNotice(cs, contact)
	if err != nil {
		c.metrics.notices.WithLabelValues("template").Inc()
		return false, "notice: " + err.Error()
	}
	for attempt := 1; ; attempt++ {
		err := c.relay.send(ctx, msg)
		if err == nil {
			c.metrics.notices.WithLabelValues("sent").Inc()
			return true, fmt.Sprintf("notice %s sent to %s through %s", msg.MessageID, msg.To, c.config.SMTP.Addr)
		}
		c.deps.Logger.Warn("notice not sent", "case", id, "attempt", attempt, "error", err)
		if errors.Is(err, errPermanent) || attempt >= c.config.SMTP.Attempts {
			c.metrics.notices.WithLabelValues("failed").Inc()
			return false, fmt.Sprintf("notice to %s given up after %d attempts: %v", msg.To, attempt, err)
		}
		c.metrics.notices.WithLabelValues("retry").Inc()
		if !retry.Sleep(ctx, c.retryWait(attempt)) {
			return false, "stopped"
		}
	}
}

// retryWait is the wait before the next attempt; tests shorten it.
var retryWaitScale = 1.0

func (c *Component) retryWait(attempt int) time.Duration {
	return time.Duration(float64(backoff(attempt)) * retryWaitScale)
}

// buildNotice renders a case's notice for contact.
func (c *Component) buildNotice(cs Case, contact Contact) (Message, error) {
	d := NoticeData{Case: cs, Contact: contact, Evidence: evidenceOf(cs.Alert), Desk: c.config.Desk, Reference: cs.ID,
		Ladder: ladderWords(c.config.ladderFor(cs.Alert.Kind, cs.Group), cs.Step)}
	subject, body, err := c.templates.Render(d)
	if err != nil {
		return Message{}, err
	}
	from := mail.Address{Name: c.config.SMTP.FromName, Address: c.config.SMTP.From}
	return buildMessage(from, mail.Address{Name: contact.Name, Address: contact.Email}, subject, body, cs.ID, c.deps.Now())
}

// Cases returns every case, newest update first.
func (c *Component) Cases() []Case {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.book.Cases()
}

// Case returns a case and its history.
func (c *Component) Case(id string) (Case, []Event, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.book.Get(id)
}

// act runs an operator's or the customer's action on the casebook and
// carries out what it decided.
func (c *Component) act(ctx context.Context, fn func(b *Casebook, now time.Time) (Result, error)) error {
	c.mu.Lock()
	res, err := fn(c.book, c.deps.Now())
	c.mu.Unlock()
	if herr := c.handle(ctx, res); herr != nil {
		return herr
	}
	return err
}
